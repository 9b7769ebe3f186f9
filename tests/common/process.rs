//! `pushlite serve` as a child process, for tests that send it signals or read its logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::ADMIN;
use super::redis::free_port;

pub struct NodeProcess {
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts a node with the test admin credentials plus `env`, and waits for `/healthz`.
    pub async fn spawn(env: &[(&str, &str)]) -> NodeProcess {
        NodeProcess::spawn_via(&[], env).await
    }

    /// As [`NodeProcess::spawn`], started through `wrapper` (such as `prlimit --nofile=64 --`).
    pub async fn spawn_via(wrapper: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("stderr.log");
        let binary = env!("CARGO_BIN_EXE_pushlite");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", port.to_string())
            .env("PUSHER_ADMIN_USERNAME", ADMIN.0)
            .env("PUSHER_ADMIN_PASSWORD", ADMIN.1)
            // Every test client connects from 127.0.0.1: one address, many users.
            .env("PUSHLITE_LIMITS__UPGRADES_PER_SEC_PER_IP", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start pushlite serve");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "node did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        NodeProcess {
            addr,
            log,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Creates an app through this node's admin API; returns its `data` object.
    pub async fn create_app(&self, name: &str) -> serde_json::Value {
        let created: serde_json::Value = reqwest::Client::new()
            .post(self.url("/api/admin/apps"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&serde_json::json!({ "app": { "name": name } }))
            .send()
            .await
            .expect("create app")
            .json()
            .await
            .expect("app JSON");
        created["data"].clone()
    }

    /// The process id, for a client program that kills the node itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
