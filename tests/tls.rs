//! TLS to the backing services: a `redis-server` serving only TLS (alone and as a three-master
//! cluster) and a Postgres accepting only TLS connections, with a CA and server certificate
//! made for each test by `openssl`. The nodes must deliver through them, and must refuse to
//! start when the server's certificate is not one they trust.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::phx::{self, Vsn};
use common::postgres::PostgresServer;
use common::redis::{cli_with, form_cluster, free_port};
use common::{TestApp, create_app, fresh_postgres_database, spawn_config, test_config};
use pushlite::Server;
use serde_json::{Value, json};

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(path)
                .output()
                .expect("openssl is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=pushlite test CA",
        ]);
        openssl(&ca);
        let mut csr = vec!["req", "-nodes"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&csr);
        std::fs::write(
            path.join("san.ext"),
            // clientAuth too: cluster nodes present it to each other on the cluster bus.
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        // Another CA, which signed nothing the servers present.
        let mut other = vec!["req", "-x509", "-nodes", "-days", "2"];
        other.extend(ec);
        other.extend([
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-subj",
            "/CN=another CA",
        ]);
        openssl(&other);
        Certs { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `redis-cli`'s options to speak TLS to a server whose certificate `ca` signed.
fn tls_options(ca: &Path) -> [&OsStr; 3] {
    [OsStr::new("--tls"), OsStr::new("--cacert"), ca.as_os_str()]
}

/// `redis-cli` over TLS.
async fn tls_cli(certs: &Certs, port: u16, args: &[&str]) -> String {
    cli_with(&tls_options(&certs.file("ca.pem")), port, args).await
}

/// A `redis-server` with its plain port closed: only TLS clients get in.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    async fn start(certs: &Certs, extra: &[&str]) -> TlsRedis {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(certs.file("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.file("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.file("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tls_cli(certs, port, &["ping"]).await != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nodes(count: usize, redis_url: &str, ca: Option<PathBuf>) -> Vec<TestApp> {
    let database = fresh_postgres_database().await;
    let mut nodes = Vec::new();
    for _ in 0..count {
        let mut config = test_config(database.clone());
        config.redis.url = Some(redis_url.to_owned());
        config.redis.tls_ca_file.clone_from(&ca);
        nodes.push(spawn_config(config, None).await);
    }
    nodes
}

/// An event triggered on the first node reaches a Phoenix subscriber of the last one.
async fn delivers_across(nodes: &[TestApp]) {
    let first = &nodes[0];
    let app = create_app(first, json!({"name": format!("tls-{}", free_port())})).await;
    let slug = app["slug"].as_str().expect("slug");
    let last = nodes.last().expect("a node");
    let mut client = phx::connect(last.addr, Vsn::V2, "", None).await;
    let (_, reply) = client.join(&format!("public:{slug}")).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let response = first
        .http
        .post(first.url(&format!("/api/apps/{slug}/events")))
        .basic_auth(app["key"].as_str().expect("key"), app["secret"].as_str())
        .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": {"over": "tls"}}))
        .send()
        .await
        .expect("trigger");
    assert_eq!(response.status(), 200);
    let frame = client.recv().await;
    assert_eq!(
        (frame.event.as_str(), frame.payload),
        ("t:e", json!({"over": "tls"}))
    );
}

/// What `Server::build` says when it cannot start.
async fn startup_error(config: pushlite::Config) -> String {
    match tokio::time::timeout(Duration::from_secs(30), Server::build(config)).await {
        Ok(Ok(_)) => panic!("the node started"),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => panic!("startup did not end within 30 s"),
    }
}

#[tokio::test]
async fn nodes_deliver_through_a_redis_that_speaks_only_tls() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, &[]).await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let nodes = nodes(2, &url, Some(certs.file("ca.pem"))).await;
    delivers_across(&nodes).await;
    // the events really crossed the TLS port
    let published = tls_cli(&certs, redis.port, &["info", "commandstats"]).await;
    assert!(published.contains("cmdstat_publish:calls="), "{published}");

    // a CA that did not sign the server's certificate: no start
    let mut config = test_config(fresh_postgres_database().await);
    config.redis.url = Some(url.clone());
    config.redis.tls_ca_file = Some(certs.file("other.pem"));
    let error = startup_error(config).await;
    assert!(error.to_lowercase().contains("redis"), "{error}");
    // a file holding no certificate: a configuration error naming the key
    let mut config = test_config(fresh_postgres_database().await);
    config.redis.url = Some(url);
    config.redis.tls_ca_file = Some(certs.file("san.ext"));
    let error = startup_error(config).await;
    assert!(error.contains("redis.tls_ca_file"), "{error}");
}

#[tokio::test]
async fn nodes_deliver_through_a_redis_cluster_over_tls() {
    let certs = Certs::make();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let server = TlsRedis::start(
            &certs,
            &[
                "--cluster-enabled",
                "yes",
                "--tls-cluster",
                "yes",
                "--cluster-node-timeout",
                "2000",
            ],
        )
        .await;
        servers.push(server);
    }
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let addrs = form_cluster(&tls_options(&certs.file("ca.pem")), &ports).await;
    let url = format!(
        "rediss-cluster://{}?node={}&node={}",
        addrs[0], addrs[1], addrs[2]
    );
    let nodes = nodes(2, &url, Some(certs.file("ca.pem"))).await;
    delivers_across(&nodes).await;
}

/// A Postgres with `ssl=on` whose `pg_hba.conf` admits TLS connections only.
fn tls_postgres(certs: &Certs) -> PostgresServer {
    let postgres =
        PostgresServer::init("-c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key");
    // The server's key must belong to the server's user and be private to it.
    for name in ["server.pem", "server.key"] {
        std::fs::copy(certs.file(name), postgres.data.join(name)).expect("copy certificate");
    }
    std::fs::set_permissions(
        postgres.data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    postgres.own(&["server.pem", "server.key"]);
    std::fs::write(
        postgres.data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
    )
    .expect("write pg_hba.conf");
    postgres.start();
    postgres
}

async fn admin_list(node: &TestApp) -> Value {
    node.admin(reqwest::Method::GET, "/api/admin/apps")
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn the_registry_runs_on_a_postgres_that_admits_only_tls() {
    let certs = Certs::make();
    let postgres = tls_postgres(&certs);
    let ca = certs.file("ca.pem");

    // verify-full: the CA signed the certificate, and it names the host dialled
    let verified = postgres.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let node = spawn_config(test_config(verified), None).await;
    let app = create_app(&node, json!({"name": "Over TLS"})).await;
    assert_eq!(app["slug"], "over-tls");
    assert_eq!(admin_list(&node).await["data"][0]["slug"], "over-tls");

    // require: encrypted, certificate not checked (what most managed Postgres docs start with)
    let required = spawn_config(test_config(postgres.url("sslmode=require")), None).await;
    assert_eq!(admin_list(&required).await["data"][0]["slug"], "over-tls");

    // without TLS the server turns the node away: the two above really used it
    let error = startup_error(test_config(postgres.url("sslmode=disable"))).await;
    assert!(error.to_lowercase().contains("database"), "{error}");
    // a CA that did not sign the server's certificate: no start
    let other = postgres.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        certs.file("other.pem").display()
    ));
    let error = startup_error(test_config(other)).await;
    assert!(error.to_lowercase().contains("database"), "{error}");
}
