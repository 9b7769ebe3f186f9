//! The `pushlite` command line. Exit status: 0 success, 1 runtime failure, 2 bad usage or
//! bad configuration (reported before any I/O).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::bus::{self, Control, RedisBusConfig};
use crate::config::{Config, ConfigError};
use crate::domain::app::{AppParams, NewApp};
use crate::registry::{self, AppRegistry, RegistryError};
use crate::startup::{Server, StartupError};
use crate::{telemetry, token};

#[derive(Parser, Debug)]
#[command(
    name = "pushlite",
    version,
    about = "A real-time message broker speaking Phoenix Channels"
)]
struct Cli {
    /// TOML configuration file (default: ./pushlite.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: HTTP API, WebSocket endpoint and health checks.
    Serve,
    /// Apply the embedded database migrations and exit.
    Migrate,
    /// Create the article's test app (slug `test-app`) unless it exists.
    Seed,
    /// Manage apps straight on the registry; prints JSON.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Print the effective configuration with every secret redacted.
    Config,
    /// Exit 0 when the local node answers `GET /healthz` with 200 (for container HEALTHCHECKs,
    /// where images carry no curl).
    Healthcheck,
    /// Mint a join token for private topics, signed with the app's secret.
    Token {
        /// The app's slug.
        #[arg(long)]
        app: String,
        /// Topic pattern the holder may join (`*` matches any suffix); repeatable.
        #[arg(long)]
        subscribe: Vec<String>,
        /// Topic pattern the holder may push client events to; repeatable.
        #[arg(long)]
        publish: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
        /// Subject (the user id): a presence channel's member id.
        #[arg(long)]
        sub: Option<String>,
        /// A presence member's info, as JSON (for example '{"name":"Ann"}').
        #[arg(long)]
        presence: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AppsCommand {
    /// List every app.
    List,
    /// Create an app with a generated slug, key and secret.
    Create {
        /// The app's name (5 to 255 characters).
        name: String,
        /// Its webhooks, as JSON: '[{"url": "https://…", "events": ["channel_occupied"]}]'.
        #[arg(long)]
        webhooks: Option<String>,
    },
    /// Show one app.
    Show { slug: String },
    /// Replace an app's webhooks (JSON list of {"url", "events"}; '[]' removes them all).
    Webhooks { slug: String, webhooks: String },
    /// Set how many events each channel of an app keeps for recovery and late joiners (0: none).
    History {
        slug: String,
        size: u32,
        /// How long a channel's history outlives its latest event.
        #[arg(long)]
        ttl_secs: Option<u32>,
    },
    /// Delete one app.
    Delete { slug: String },
}

/// The seeded test app of the article (`priv/repo/seeds.exs`).
pub const TEST_APP_SLUG: &str = "test-app";

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("app registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Invalid(String),
    #[error("no app with slug `{0}`")]
    NotFound(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) | CliError::Startup(StartupError::Config(_)) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Parses the arguments, runs the command, reports errors on stderr.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pushlite: {err}");
            err.exit_code()
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let config = Config::load(cli.config.as_deref())?;
    if let Command::Config = cli.command {
        print!("{}", config.redacted_toml());
        return Ok(());
    }
    if let Command::Healthcheck = cli.command {
        return healthcheck(config.server.port);
    }
    if let Command::Serve = cli.command {
        config.check_exposure()?;
    }
    telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Migrate => {
                registry::connect(&config.database).await?.migrate().await?;
                eprintln!("migrations applied");
                Ok(())
            }
            Command::Seed => seed(&*open(&config).await?).await,
            Command::Apps { command } => apps(&config, &*open(&config).await?, command).await,
            Command::Token {
                app,
                subscribe,
                publish,
                ttl,
                sub,
                presence,
            } => {
                let presence = presence
                    .map(|json| serde_json::from_str(&json))
                    .transpose()
                    .map_err(|e| CliError::Invalid(format!("--presence is not JSON: {e}")))?;
                let registry = open(&config).await?;
                let app = registry
                    .by_slug(&app)
                    .await?
                    .ok_or(CliError::NotFound(app))?;
                let claims = token::Claims {
                    exp: chrono::Utc::now().timestamp() + i64::from(ttl),
                    nbf: None,
                    sub,
                    presence,
                    subscribe,
                    publish,
                };
                println!("{}", token::mint(&app.secret, &claims));
                Ok(())
            }
            Command::Config | Command::Healthcheck => Ok(()),
        }
    })
}

/// A minimal HTTP/1.0 GET on loopback: no client library, no DNS, two-second timeouts.
fn healthcheck(port: u16) -> Result<(), CliError> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let unhealthy = |why: String| CliError::Invalid(format!("unhealthy: {why}"));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| unhealthy(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n"))
        .map_err(|e| unhealthy(e.to_string()))?;
    let mut head = [0u8; 16];
    let read = stream
        .read(&mut head)
        .map_err(|e| unhealthy(e.to_string()))?;
    let status_line = String::from_utf8_lossy(&head[..read]);
    if status_line.starts_with("HTTP/1.0 200") || status_line.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(unhealthy(status_line.trim().to_owned()))
    }
}

async fn serve(config: Config) -> Result<(), CliError> {
    let server = Server::build(config).await?;
    let (first, first_received) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = first.send(());
        shutdown_signal().await;
        eprintln!("pushlite: second signal, exiting now");
        std::process::exit(1);
    });
    server
        .run_until(async move {
            let _ = first_received.await;
        })
        .await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

async fn open(config: &Config) -> Result<std::sync::Arc<dyn AppRegistry>, CliError> {
    let registry = registry::connect(&config.database).await?;
    if config.database.migrate_on_start {
        registry.migrate().await?;
    }
    Ok(registry)
}

async fn seed(registry: &dyn AppRegistry) -> Result<(), CliError> {
    let app = match registry.by_slug(TEST_APP_SLUG).await? {
        Some(app) => app,
        None => registry
            .insert(&NewApp {
                name: "Test App".to_owned(),
                slug: TEST_APP_SLUG.to_owned(),
                key: "test-app-fake-key".to_owned(),
                secret: "test-app-fake-secret".to_owned(),
                active: true,
                client_events: true,
                allowed_origins: Vec::new(),
                max_presence_members: crate::domain::app::DEFAULT_PRESENCE_MEMBERS,
                webhooks: Vec::new(),
                history_size: 0,
                history_ttl_secs: crate::domain::app::DEFAULT_HISTORY_TTL_SECS,
                max_connections: None,
                max_triggers_per_sec: None,
                webhook_max_queue: None,
            })
            .await
            .map(Arc::new)?,
    };
    println!("{}", json!({ "data": app }));
    Ok(())
}

async fn apps(
    config: &Config,
    registry: &dyn AppRegistry,
    command: AppsCommand,
) -> Result<(), CliError> {
    let shown = match command {
        AppsCommand::List => json!({ "data": registry.list().await? }),
        AppsCommand::Create { name, webhooks } => {
            let mut fields = serde_json::Map::new();
            fields.insert("name".to_owned(), name.into());
            if let Some(webhooks) = webhooks {
                fields.insert("webhooks".to_owned(), webhooks.into());
            }
            let new_app = AppParams::from_map(fields)
                .into_new_app(config.app_rules())
                .map_err(|e| CliError::Invalid(json!({ "errors": e }).to_string()))?;
            json!({ "data": registry.insert(&new_app).await? })
        }
        AppsCommand::Webhooks { slug, webhooks } => {
            let mut fields = serde_json::Map::new();
            fields.insert("webhooks".to_owned(), webhooks.into());
            change(config, registry, &slug, fields).await?
        }
        AppsCommand::History {
            slug,
            size,
            ttl_secs,
        } => {
            let mut fields = serde_json::Map::new();
            fields.insert("history_size".to_owned(), size.into());
            if let Some(ttl) = ttl_secs {
                fields.insert("history_ttl_secs".to_owned(), ttl.into());
            }
            change(config, registry, &slug, fields).await?
        }
        AppsCommand::Show { slug } => {
            let app = registry.by_slug(&slug).await?;
            json!({ "data": app.ok_or(CliError::NotFound(slug))? })
        }
        AppsCommand::Delete { slug } => {
            if !registry.delete(&slug).await? {
                return Err(CliError::NotFound(slug));
            }
            announce_change(config, &slug, true).await?;
            json!({ "deleted": slug })
        }
    };
    println!("{shown}");
    Ok(())
}

/// Applies admin-style `fields` to app `slug` and tells the running nodes.
async fn change(
    config: &Config,
    registry: &dyn AppRegistry,
    slug: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, CliError> {
    let changes = AppParams::from_map(fields)
        .into_changes(config.app_rules())
        .map_err(|e| CliError::Invalid(json!({ "errors": e }).to_string()))?;
    let app = registry
        .update(slug, &changes)
        .await?
        .ok_or_else(|| CliError::NotFound(slug.to_owned()))?;
    announce_change(config, slug, false).await?;
    Ok(json!({ "data": app }))
}

/// Running nodes cache apps: tell them of a change, as the admin API does. (A new app needs no
/// announcement: nodes never cache a miss.)
async fn announce_change(config: &Config, slug: &str, close: bool) -> Result<(), CliError> {
    if let Some(bus) = RedisBusConfig::from_config(&config.redis) {
        let control = Control::AppChanged {
            slug: slug.to_owned(),
            close,
        };
        bus::announce(&bus, &control).await.map_err(|e| {
            CliError::Invalid(format!(
                "changed `{slug}`, but running nodes were not told ({e}): they serve the old app until cache.ttl_secs passes"
            ))
        })?;
    }
    Ok(())
}
