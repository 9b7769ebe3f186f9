//! Throwaway `redis-server` processes for tests that must kill, freeze or cluster Redis.
//! Everything here awaits: nothing blocks the test's runtime, which also runs the nodes.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `redis-cli -p PORT args…`, stdout as text.
pub async fn cli(port: u16, args: &[&str]) -> String {
    cli_with(&[], port, args).await
}

/// `redis-cli OPTIONS… -p PORT args…` (options such as `--tls --cacert ca.pem`), stdout as
/// text.
pub async fn cli_with(options: &[&OsStr], port: u16, args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(options)
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .kill_on_drop(true)
        .output();
    // `--cluster create` waits for the cluster to form without end.
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("redis-cli answers within 30 s")
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Joins the `redis-server`s on `ports` (started with `--cluster-enabled yes`) into a cluster
/// of masters without replicas, waits until each reports it healthy, and returns their
/// addresses. `options` go to every `redis-cli` (see [`cli_with`]).
pub async fn form_cluster(options: &[&OsStr], ports: &[u16]) -> Vec<String> {
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    cli_with(options, ports[0], &create).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut formed = true;
        for &port in ports {
            formed &= cli_with(options, port, &["cluster", "info"])
                .await
                .contains("cluster_state:ok");
        }
        if formed {
            return addrs;
        }
        assert!(Instant::now() < deadline, "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let dir: PathBuf = self.dir.path().to_owned();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(self.port, &["ping"]).await != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id while it runs, for reading its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no goodbye to clients, every subscription forgotten.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port; returns when it accepts commands.
    pub async fn restart(&mut self) -> Instant {
        self.spawn().await;
        Instant::now()
    }

    /// Sends a signal to the server: `STOP` freezes it with every connection left open, as a
    /// hung host or a partition without RST would; `CONT` thaws it.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
