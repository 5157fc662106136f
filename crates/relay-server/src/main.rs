//! `relay-server`: the standalone binary. Parses flags, environment and config file, then
//! serves; `relay-server gentoken` mints a development token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relay_core::Hub;
use relay_server::{
    Authenticator, Claims, ClusterError, ClusterMode, ClusterNode, Config, JwtAlgorithm, LogFormat,
    NatsNode, Relay,
};
use relay_store::PgStore;

#[derive(Parser)]
#[command(name = "relay-server", version, about = "A real-time WebSocket relay")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations to `--database-url`, then exit.
    Migrate,
    /// Mint a token signed with the configured HS256 secret.
    Gentoken(Gentoken),
}

/// Settings shared by every command. Flags win over `RELAY_*` variables, which win over the
/// config file, which wins over the defaults.
#[derive(Args)]
struct Settings {
    /// TOML config file.
    #[arg(long, env = "RELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "RELAY_LISTEN", global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Postgres URL (`postgres://user@host/db`); without it messages live in memory.
    #[arg(
        long,
        env = "RELAY_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// HS256 secret (at least 32 bytes). Without one, a random development secret is used.
    #[arg(long, env = "RELAY_JWT_SECRET", global = true, hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Token algorithm.
    #[arg(long, env = "RELAY_JWT_ALGORITHM", global = true)]
    jwt_algorithm: Option<JwtAlgorithm>,
    /// PEM public key for RS256/ES256.
    #[arg(long, env = "RELAY_JWT_PUBLIC_KEY", global = true)]
    jwt_public_key: Option<PathBuf>,
    /// WebSocket ping interval in milliseconds [default: 25000].
    #[arg(long, env = "RELAY_HEARTBEAT_MS", global = true)]
    heartbeat_ms: Option<u64>,
    /// Close connections older than this many seconds (4002).
    #[arg(long, env = "RELAY_MAX_CONNECTION_AGE_SECS", global = true)]
    max_connection_age_secs: Option<u64>,
    /// Largest WebSocket message / REST body in bytes [default: 131072].
    #[arg(long, env = "RELAY_MAX_FRAME_BYTES", global = true)]
    max_frame_bytes: Option<usize>,
    /// Runtime worker threads; 1 runs everything on one thread [default: one per core].
    #[arg(long, env = "RELAY_WORKER_THREADS", global = true)]
    worker_threads: Option<usize>,
    /// Log format [default: text]. Log level: RUST_LOG (default `info`).
    #[arg(long, env = "RELAY_LOG_FORMAT", global = true)]
    log_format: Option<LogFormat>,
    /// `postgres`: one node of several sharing --database-url; `nats`: nodes fan out over
    /// NATS (--nats-url) [default: single].
    #[arg(long, env = "RELAY_CLUSTER", global = true)]
    cluster: Option<ClusterMode>,
    /// NATS servers of `--cluster nats`, comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, env = "RELAY_NATS_URL", global = true)]
    nats_url: Option<String>,
    /// A NATS `.creds` file (user JWT and nkey seed).
    #[arg(long, env = "RELAY_NATS_CREDS", global = true)]
    nats_creds: Option<PathBuf>,
    /// A NATS token (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "RELAY_NATS_TOKEN", global = true, hide_env_values = true)]
    nats_token: Option<String>,
    /// A NATS user, with RELAY_NATS_PASSWORD.
    #[arg(long, env = "RELAY_NATS_USER", global = true)]
    nats_user: Option<String>,
    /// The NATS user's password (environment only: flags show in `ps`).
    #[arg(skip = std::env::var("RELAY_NATS_PASSWORD").ok())]
    nats_password: Option<String>,
    /// This node's id in a cluster (unique per live node) [default: generated].
    #[arg(long, env = "RELAY_NODE_ID", global = true)]
    node_id: Option<String>,
    /// Serve the demo app at `/` (development tokens for clients on this machine).
    #[arg(long, env = "RELAY_DEMO", global = true)]
    demo: bool,
}

#[derive(Args)]
struct Gentoken {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// `service` for backend tokens that may use /api/publish.
    #[arg(long)]
    role: Option<String>,
    /// Lifetime, e.g. `1h`, `30m`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Allowed channels or `prefix*` patterns, comma-separated (the `channels` claim).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<String>>,
}

impl Settings {
    fn resolve(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(url) = &self.database_url {
            config.database_url = Some(url.clone());
        }
        if let Some(secret) = &self.jwt_secret {
            config.auth.secret = Some(secret.clone());
        }
        if let Some(algorithm) = self.jwt_algorithm {
            config.auth.algorithm = algorithm;
        }
        if let Some(key) = &self.jwt_public_key {
            config.auth.public_key_file = Some(key.clone());
        }
        if let Some(ms) = self.heartbeat_ms {
            config.heartbeat_ms = ms;
        }
        if let Some(secs) = self.max_connection_age_secs {
            config.max_connection_age_secs = Some(secs);
        }
        if let Some(bytes) = self.max_frame_bytes {
            config.max_frame_bytes = bytes;
        }
        if let Some(threads) = self.worker_threads {
            config.worker_threads = threads;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        if let Some(cluster) = self.cluster {
            config.cluster = cluster;
        }
        if let Some(url) = &self.nats_url {
            config.nats.url = url.clone();
        }
        if let Some(path) = &self.nats_creds {
            config.nats.creds_file = Some(path.clone());
        }
        if let Some(token) = &self.nats_token {
            config.nats.token = Some(token.clone());
        }
        if let Some(user) = &self.nats_user {
            config.nats.user = Some(user.clone());
        }
        if let Some(password) = &self.nats_password {
            config.nats.password = Some(password.clone());
        }
        if self.demo {
            config.demo = true;
        }
        if let Some(id) = &self.node_id {
            config.node_id = Some(id.clone());
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match cli.settings.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relay-server: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Gentoken(args)) => gentoken(&config, args),
        Some(Command::Migrate) => {
            init_logging(config.log_format);
            match runtime(config.worker_threads) {
                Ok(runtime) => runtime.block_on(migrate(config)),
                Err(code) => code,
            }
        }
        Some(Command::Serve) | None => {
            init_logging(config.log_format);
            let generated = config.auth.needs_development_secret();
            if generated {
                if !config.listen.ip().is_loopback() {
                    eprintln!(
                        "relay-server: no JWT key configured, and a random development secret is \
                         only allowed on a loopback address (listening on {}): set \
                         --jwt-secret (RELAY_JWT_SECRET, at least 32 bytes), \
                         auth.public_key_file or auth.jwks_url",
                        config.listen
                    );
                    return ExitCode::from(2);
                }
                config.auth.secret = Some(development_secret());
            }
            match runtime(config.worker_threads) {
                Ok(runtime) => runtime.block_on(serve(config, generated)),
                Err(code) => code,
            }
        }
    }
}

/// The runtime: one per core by default; `worker_threads = 1` runs everything on the main
/// thread (no work stealing, no cross-thread wake-ups), the fastest setup on one core.
fn runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("relay-server: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

async fn migrate(config: Config) -> ExitCode {
    if config.database_url.is_none() {
        eprintln!("relay-server migrate: set --database-url or RELAY_DATABASE_URL");
        return ExitCode::from(2);
    }
    // Opening the Postgres store applies every pending migration.
    match config.open_store().await {
        Ok((_, store)) => {
            tracing::info!(%store, "migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "migration failed");
            ExitCode::FAILURE
        }
    }
}

fn gentoken(config: &Config, args: Gentoken) -> ExitCode {
    if config.auth.secret.is_none() {
        eprintln!(
            "relay-server gentoken: set --jwt-secret or RELAY_JWT_SECRET (the server's secret)"
        );
        return ExitCode::from(2);
    }
    let auth = match Authenticator::from_config(&config.auth) {
        Ok(auth) => auth,
        Err(e) => {
            eprintln!("relay-server gentoken: {e}");
            return ExitCode::from(2);
        }
    };
    let claims = Claims {
        role: args.role,
        channels: args.channels,
        ..Claims::new(&args.user, args.ttl)
    };
    match auth.mint(&claims) {
        Some(token) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("relay-server gentoken: only HS256 tokens can be minted here");
            ExitCode::from(2)
        }
    }
}

/// 256 random bits, hex-encoded.
fn development_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config, generated_secret: bool) -> ExitCode {
    raise_open_file_limit();
    let auth = match Authenticator::from_config(&config.auth) {
        Ok(auth) => auth,
        Err(e) => {
            tracing::error!(error = %e, "invalid auth configuration");
            return ExitCode::from(2);
        }
    };
    if config.auth.jwks_url.is_some() {
        // Tokens are refused (and /readyz says unready) until the first fetch succeeds;
        // a failed one is retried on the first token with an unknown key.
        match auth.refresh().await {
            Ok(keys) => tracing::info!(keys, "JWKS fetched"),
            Err(e) => tracing::error!(error = %e, "cannot fetch the JWKS at start"),
        }
    }
    if generated_secret && let Some(secret) = &config.auth.secret {
        // Printed once, on purpose: a development server is useless without a token.
        tracing::warn!("no JWT secret configured: using a random development secret for this run");
        eprintln!(
            "\n  development secret: {secret}\n  mint a token:  RELAY_JWT_SECRET={secret} relay-server gentoken --user alice\n"
        );
    }
    let mut config = config;
    let (hub, node, store_name) = match config.cluster {
        ClusterMode::Single => match config.open_store().await {
            Ok((store, name)) => (Hub::new(store, config.hub_config()), None, name),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the store");
                return ExitCode::FAILURE;
            }
        },
        ClusterMode::Postgres => {
            let node_id = node_id(&mut config);
            match join_cluster(&config, &node_id).await {
                Ok((hub, node, name)) => (hub, Some(Node::Postgres(node)), name),
                Err(code) => return code,
            }
        }
        ClusterMode::Nats => {
            let node_id = node_id(&mut config);
            let (store, name) = match config.open_store().await {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the store");
                    return ExitCode::FAILURE;
                }
            };
            match NatsNode::join(
                store,
                config.hub_config(),
                &node_id,
                config.node_ttl(),
                &config.nats,
            )
            .await
            {
                Ok((hub, node)) => {
                    tracing::info!(node_id, nats = ?config.nats, "joined the NATS cluster");
                    (hub, Some(Node::Nats(node)), format!("{name}, NATS cluster"))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot join the cluster");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let relay = match Relay::bind(config, hub, auth).await {
        Ok(relay) => relay,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            if let Some(node) = node {
                // Free the node id at once, so that a corrected restart is not refused.
                node.leave().await;
            }
            return ExitCode::FAILURE;
        }
    };
    match relay.local_addr() {
        Ok(addr) => tracing::info!(%addr, store = %store_name, "listening"),
        Err(e) => tracing::warn!(error = %e, "bound, but the local address is unknown"),
    }
    relay.serve(shutdown_signal()).await;
    if let Some(node) = node {
        node.leave().await;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// This node's cluster membership, left on shutdown.
enum Node {
    Postgres(ClusterNode),
    Nats(NatsNode),
}

impl Node {
    async fn leave(self) {
        match self {
            Self::Postgres(node) => node.leave().await,
            Self::Nats(node) => node.leave().await,
        }
    }
}

/// The configured node id, or a generated one.
fn node_id(config: &mut Config) -> String {
    config
        .node_id
        .get_or_insert_with(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
        .clone()
}

/// Opens the store as cluster node `node_id` and joins the cluster; a duplicate live node id
/// is a configuration error (exit 2).
async fn join_cluster(
    config: &Config,
    node_id: &str,
) -> Result<(Hub, ClusterNode, String), ExitCode> {
    let Some(url) = &config.database_url else {
        tracing::error!("cluster = \"postgres\" needs a database URL");
        return Err(ExitCode::from(2));
    };
    let store = match PgStore::connect_with(url, config.store_options()).await {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the store");
            return Err(ExitCode::FAILURE);
        }
    };
    match ClusterNode::join(store, config.hub_config(), node_id, config.node_ttl()).await {
        Ok((hub, node)) => {
            tracing::info!(node_id, "joined the cluster");
            Ok((
                hub,
                node,
                format!("postgres cluster ({})", config.redacted_database_url()),
            ))
        }
        Err(e @ ClusterError::DuplicateNodeId(_)) => {
            tracing::error!(error = %e, "cannot join the cluster");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot join the cluster");
            Err(ExitCode::FAILURE)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Raises the soft open-file limit to the hard limit: every connection is a file descriptor.
fn raise_open_file_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if before != Some(now) => {
            tracing::info!(from = ?before, to = now, "raised the open-file limit")
        }
        Ok(now) => tracing::info!(limit = now, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
