//! Throwaway Postgres clusters (`initdb` + `pg_ctl` on a free port) for tests that configure
//! the server (TLS) or stop and start it (the soak).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::redis::free_port;

pub struct PostgresServer {
    pub port: u16,
    pub data: PathBuf,
    /// `-c name=value` settings beyond the port, socket directory and address.
    options: String,
    dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args([
            "-c",
            &format!(
                "command -v {name} || ls /usr/lib/postgresql/*/bin/{name} | sort -V | tail -1"
            ),
        ])
        .output()
    {
        let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !found.is_empty() {
            return PathBuf::from(found.lines().next().unwrap_or_default());
        }
    }
    panic!("{name} is not installed (make test installs postgresql)");
}

/// Postgres refuses to run as root: run its tools as `postgres` when we are root.
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PostgresServer {
    /// A fresh cluster (trust authentication, user `postgres`), not started yet: the caller
    /// may put files into [`PostgresServer::data`] first.
    pub fn init(options: &str) -> PostgresServer {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let data = dir.path().join("data");
        let status = as_postgres(&pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        PostgresServer {
            port: free_port(),
            data,
            options: options.to_owned(),
            dir,
        }
    }

    /// Makes `files` of the data directory belong to the server's user.
    pub fn own(&self, files: &[&str]) {
        for file in files {
            let chown = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "if [ \"$(id -u)\" = 0 ]; then chown postgres {}; fi",
                    self.data.join(file).display()
                ))
                .status()
                .expect("chown runs");
            assert!(chown.success());
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let status = as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "start", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {}",
                self.port,
                self.dir.path().display(),
                self.options
            ))
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "Postgres did not start");
    }

    /// Stops at once, as a crash would: no checkpoint, every connection cut.
    pub fn stop_immediate(&self) {
        let _ = as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }

    pub fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}
