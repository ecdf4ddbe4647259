//! The `masternode` command line: parses, sets up logging, calls into the library
//! and turns its errors into one line and an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use masternode::admin::AdminToken;
use masternode::config::{ConfigError, LogFormat, NodeConfig, Overrides};
use masternode::identity::Identity;
use masternode::node::{Node, NodeError, NodeOptions};

/// EX_CONFIG from sysexits.h: a bad configuration or key. systemd's
/// `RestartPreventExitStatus=78` keeps a misconfigured node from restart-looping.
const EXIT_CONFIG: u8 = 78;
/// The node stopped before the height of an upgrade plan whose protocol version
/// this binary does not run (it wrote `upgrade-info.json`): only another
/// binary helps, so the units keep it from restart-looping too
/// (`RestartPreventExitStatus=78 3`).
const EXIT_UPGRADE: u8 = 3;
/// Another process signs with this node's key (the doppelganger watch saw a
/// vote of its key that it did not make): starting again does not help
/// until the other one is stopped, so the units keep it from restart-looping
/// (`RestartPreventExitStatus=78 3 4`).
const EXIT_DOPPELGANGER: u8 = 4;

#[derive(Parser)]
#[command(name = "masternode", version, about = "Masternode daemon: QUIC mesh and quorum-gated block production")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write DIR/node.key (0600) and DIR/node.crt; print the NodeId.
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Print the NodeId of DIR/node.key (checked against DIR/node.crt).
    Id {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the daemon. Flags and MASTERNODE_* variables override the config file.
    Run {
        #[arg(long, env = "MASTERNODE_CONFIG")]
        config: PathBuf,
        /// UDP address to bind (overrides `listen`).
        #[arg(long, env = "MASTERNODE_LISTEN")]
        listen: Option<String>,
        /// Admin API address (overrides `admin`).
        #[arg(long, env = "MASTERNODE_ADMIN")]
        admin: Option<String>,
        /// Data directory (overrides `data_dir`).
        #[arg(long, env = "MASTERNODE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, env = "MASTERNODE_KEEPALIVE_MS")]
        keepalive_ms: Option<u64>,
        #[arg(long, env = "MASTERNODE_IDLE_TIMEOUT_MS")]
        idle_timeout_ms: Option<u64>,
        #[arg(long, env = "MASTERNODE_PASSIVE_WAIT_MS")]
        passive_wait_ms: Option<u64>,
        #[arg(long, env = "MASTERNODE_HANDSHAKE_TIMEOUT_MS")]
        handshake_timeout_ms: Option<u64>,
        /// Log format: text, json, or auto (text on a terminal, JSON lines
        /// otherwise); overrides `log_format`. Unset everywhere: auto.
        #[arg(long, env = "MASTERNODE_LOG_FORMAT", value_name = "text|json|auto")]
        log_format: Option<String>,
        /// Start an empty data dir from a checkpoint instead of replaying
        /// from genesis: HEIGHT:HASH (a block id you trust), or `peers` (the
        /// tip peers offer, taken with precommits of more than two thirds of
        /// the set this node knows); overrides `checkpoint`.
        #[arg(long, env = "MASTERNODE_CHECKPOINT", value_name = "HEIGHT:HASH|peers")]
        checkpoint: Option<String>,
    },
    /// Show a running node's status. Exit 0 healthy, 1 degraded, 2 down.
    Status {
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        config: Option<PathBuf>,
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Print the /status JSON (with --can-stop: the verdict as JSON).
        #[arg(long)]
        json: bool,
        /// Exit 0 if stopping this node now leaves the members it is connected
        /// to at or above the quorum (or it is not a member), 1 otherwise or
        /// when the node does not answer; one line says why. Counts what this
        /// node sees: whether the others reach each other is not visible here.
        #[arg(long)]
        can_stop: bool,
    },
    /// Approve a membership change with this node's key (or announce its new address).
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Schedule a change of the chain's rules (a protocol version from a height
    /// on), or show the schedule.
    Upgrade {
        #[command(subcommand)]
        action: UpgradeAction,
    },
    /// Show the member set and the changes collecting approvals.
    Members {
        #[command(flatten)]
        target: AdminTarget,
        /// Print the /members JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run N nodes on 127.0.0.1..N (or from --base-ip and --base-port) in this process.
    Devnet {
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Keep keys and data here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// End with one JSON line holding every node's status.
        #[arg(long)]
        json: bool,
        /// Node 1's address; node i is on the (i - 1)-th address after it (in 127.0.0.0/8).
        #[arg(long, default_value_t = masternode::devnet::BASE_IP)]
        base_ip: std::net::Ipv4Addr,
        /// Every node's p2p port; its admin API is on the next one.
        #[arg(long, default_value_t = masternode::devnet::P2P_PORT)]
        base_port: u16,
    },
}

/// Which node's admin API to ask: from its config file, or its address.
#[derive(clap::Args)]
struct AdminTarget {
    #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
    config: Option<PathBuf>,
    #[arg(long)]
    admin: Option<SocketAddr>,
}

/// A node to POST to, and the admin token it wants.
#[derive(clap::Args)]
struct PostTarget {
    #[command(flatten)]
    target: AdminTarget,
    /// File holding the node's admin token (default: the config's `admin_token`).
    /// The variable names the file, never the token itself.
    #[arg(long, env = "MASTERNODE_ADMIN_TOKEN_FILE")]
    admin_token: Option<PathBuf>,
}

#[derive(Subcommand)]
enum MemberAction {
    /// Approve adding a node: its NodeId and the address members will dial.
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        target: PostTarget,
    },
    /// Approve removing a member.
    Remove {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        target: PostTarget,
    },
    /// Announce this node's new address (signed by this node alone).
    SetAddr {
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        target: PostTarget,
    },
}

#[derive(Subcommand)]
enum UpgradeAction {
    /// Propose an upgrade plan, signed with this node's key: its first approval.
    Propose {
        /// The protocol version the chain's rules switch to.
        #[arg(long)]
        version: u16,
        /// The first height under the new rules.
        #[arg(long)]
        height: u64,
        #[command(flatten)]
        target: PostTarget,
    },
    /// Approve a plan another member proposed, signed with this node's key.
    Approve {
        #[arg(long)]
        version: u16,
        #[arg(long)]
        height: u64,
        #[command(flatten)]
        target: PostTarget,
    },
    /// Show the protocol version in force, the plans scheduled and those
    /// collecting approvals. Exit 0, 1 when a scheduled version is one this
    /// binary does not run, 2 when the node does not answer.
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print the /upgrade JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    masternode::tune_allocator();
    // Every TLS configuration names ring explicitly; installing it as the process
    // default as well keeps a dependency that asks for "the default" on ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `--version` names the commit, the wire versions and the store format, which
    // clap's derive cannot put in a constant.
    let version: &'static str = Box::leak(masternode::status::version().into_boxed_str());
    let cli = match Cli::command().version(version).try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The devnet prints its own progress; its nodes log warnings and errors only
    // unless RUST_LOG asks for more.
    let default_level = if matches!(cli.command, Command::Devnet { .. }) { "warn" } else { "info" };
    // `run` sets logging up once its configuration (which may name the format)
    // is loaded; a configuration error is one line on stderr either way.
    if !matches!(cli.command, Command::Run { .. }) {
        init_tracing(default_level, LogFormat::Text);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Keygen { dir, force } => report(keygen(dir, force)),
            Command::Id { dir } => report(
                Identity::load(&dir.join("node.key"), &dir.join("node.crt"))
                    .map(|id| println!("{}", id.id()))
                    .map_err(anyhow::Error::from),
            ),
            Command::Run {
                config,
                listen,
                admin,
                data_dir,
                keepalive_ms,
                idle_timeout_ms,
                passive_wait_ms,
                handshake_timeout_ms,
                log_format,
                checkpoint,
            } => {
                let overrides = Overrides {
                    listen,
                    admin,
                    data_dir,
                    keepalive_ms,
                    idle_timeout_ms,
                    passive_wait_ms,
                    handshake_timeout_ms,
                    log_format,
                    checkpoint,
                };
                run(config, overrides).await
            }
            Command::Status { config, admin, json, can_stop: false } => status(config, admin, json).await,
            Command::Status { config, admin, json, can_stop: true } => can_stop(config, admin, json).await,
            Command::Member { action } => member(action).await,
            Command::Members { target, json } => members(target, json).await,
            Command::Upgrade { action: UpgradeAction::Status { target, json } } => upgrade_status(target, json).await,
            Command::Upgrade { action: UpgradeAction::Propose { version, height, target } } => {
                upgrade_plan(masternode::admin::UpgradeBody { version, height }, true, target).await
            }
            Command::Upgrade { action: UpgradeAction::Approve { version, height, target } } => {
                upgrade_plan(masternode::admin::UpgradeBody { version, height }, false, target).await
            }
            Command::Devnet { nodes, duration, dir, json, base_ip, base_port } => {
                let opts = masternode::devnet::DevnetOptions {
                    nodes,
                    duration: duration.map(Duration::from_secs),
                    dir,
                    json,
                    base_ip,
                    base_port,
                };
                let stop = CancellationToken::new();
                spawn_signal_handler(stop.clone());
                report(masternode::devnet::run(opts, stop).await.context("devnet"))
            }
        }
    })
}

/// Logs to stderr at `RUST_LOG`'s level (else `default_level`): text, with
/// colours on a terminal, or one JSON object per line.
fn init_tracing(default_level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Auto if !terminal => builder.json().init(),
        LogFormat::Auto | LogFormat::Text => builder.with_ansi(terminal).init(),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some()) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn keygen(dir: PathBuf, force: bool) -> anyhow::Result<()> {
    let identity = Identity::generate()?;
    let (key, cert) = identity.write(&dir, force)?;
    eprintln!("wrote {} and {}", key.display(), cert.display());
    println!("{}", identity.id());
    Ok(())
}

async fn run(config: PathBuf, overrides: Overrides) -> ExitCode {
    let cfg = match NodeConfig::load_with(&config, &overrides) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing("info", cfg.log_format);
    tracing::info!(id = %cfg.id(), network = %cfg.network.name, members = cfg.network.members.len(), "starting masternode");
    let shutdown = CancellationToken::new();
    #[allow(unused_mut)]
    let mut options = NodeOptions::default();
    #[cfg(feature = "fault-injection")]
    if let Some(path) = std::env::var_os("MASTERNODE_FAULTS_FILE") {
        options.hooks.wrap_socket = Some(faults_from_file(path.into(), shutdown.clone()));
    }
    // Rehearsals of an upgrade (test builds only): this process runs protocol
    // versions up to this one instead of MAX_VERSION.
    #[cfg(feature = "fault-injection")]
    if let Some(max) = std::env::var("MASTERNODE_TEST_MAX_PROTOCOL").ok().and_then(|v| v.parse().ok()) {
        tracing::warn!("MASTERNODE_TEST_MAX_PROTOCOL: this node runs protocol versions up to {max} (a rehearsal)");
        options.max_protocol = Some(max);
    }
    let node = match Node::start(cfg, options, shutdown.clone()).await {
        Ok(node) => node,
        // A data dir of a format this release cannot run on stays so across
        // restarts: EX_CONFIG keeps systemd from restart-looping.
        Err(e) => {
            eprintln!("error: {e}");
            let format = matches!(&e, NodeError::Store { source, .. } if source.is_format());
            return if format { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE };
        }
    };
    spawn_signal_handler(shutdown.clone());
    masternode::node::notify_ready();
    let supervisor = tokio::spawn(masternode::node::supervise(node.status_source(), shutdown.clone()));
    let finished = node.finished().await;
    if let Err(e) = supervisor.await {
        tracing::warn!("service supervisor ended abnormally: {e}");
    }
    match finished {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        // The producer logged the error line with what to do.
        Err(NodeError::UpgradeNeeded(needed)) => {
            tracing::info!("stopped: {needed}; exit code {EXIT_UPGRADE}");
            ExitCode::from(EXIT_UPGRADE)
        }
        // The producer logged the error line with the evidence.
        Err(NodeError::Doppelganger(_)) => {
            tracing::info!(
                "stopped without signing: another process signs with this node's key; exit code {EXIT_DOPPELGANGER}"
            );
            ExitCode::from(EXIT_DOPPELGANGER)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `stop` on SIGTERM or SIGINT.
fn spawn_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        stop.cancel();
    });
}

/// A config as `run` reads it, with the `MASTERNODE_*` variables that place
/// the admin API and the data directory.
fn load_for_client(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let overrides = Overrides {
        admin: var("MASTERNODE_ADMIN").map(|v| v.to_string_lossy().into_owned()),
        data_dir: var("MASTERNODE_DATA_DIR").map(PathBuf::from),
        ..Overrides::default()
    };
    NodeConfig::load_with(path, &overrides)
}

/// The admin address named by `--admin`, or where the node of the config file
/// serves it (as it last started, else the file's `admin`).
fn admin_addr(config: Option<PathBuf>, admin: Option<SocketAddr>) -> Result<SocketAddr, ExitCode> {
    match (admin, config) {
        (Some(addr), _) => Ok(addr),
        (None, Some(path)) => load_for_client(&path).map(|cfg| masternode::node::admin_addr_of(&cfg)).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }),
        (None, None) => {
            eprintln!("error: --config or --admin is required");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// The admin address and the token to POST with: `--admin-token` (or its
/// variable) if given, else the config's `admin_token`.
fn post_target(target: PostTarget) -> Result<(SocketAddr, Option<AdminToken>), ExitCode> {
    let config_error = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    };
    let flagged = target.admin_token.as_deref().map(AdminToken::load).transpose().map_err(|e| config_error(&e))?;
    match (target.target.admin, target.target.config) {
        (Some(addr), _) => Ok((addr, flagged)),
        (None, Some(path)) => {
            let cfg = load_for_client(&path).map_err(|e| config_error(&e))?;
            Ok((masternode::node::admin_addr_of(&cfg), flagged.or(cfg.admin_token)))
        }
        (None, None) => Err(config_error(&"--config or --admin is required")),
    }
}

/// `masternode member ...`: exit 0 once the node accepted its signed approval.
async fn member(action: MemberAction) -> ExitCode {
    use masternode::admin::ChangeBody;
    let (body, target) = match action {
        MemberAction::Add { id, addr, target } => {
            (ChangeBody { change: "add".into(), id: Some(id), addr: Some(addr) }, target)
        }
        MemberAction::Remove { id, target } => {
            (ChangeBody { change: "remove".into(), id: Some(id), addr: None }, target)
        }
        MemberAction::SetAddr { addr, target } => {
            (ChangeBody { change: "set-addr".into(), id: None, addr: Some(addr) }, target)
        }
    };
    // Refuse what the node would refuse before asking it, with the same words.
    if let Err(e) = body.request() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let (addr, token) = match post_target(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match masternode::admin::post_change(addr, &body, token.as_ref(), Duration::from_secs(10)).await {
        Ok(a) => {
            let what = match &a.addr {
                Some(at) => format!("{} {} at {at}", a.change, a.node_id),
                None => format!("{} {}", a.change, a.node_id),
            };
            if a.change == "set-addr" {
                println!(
                    "announced {what}: in force two blocks after a block carries it; until then peers dial the \
                     address in force (`masternode members` shows it), so keep the node where it is"
                );
            } else if a.approvals >= a.required {
                println!(
                    "approved {what}: {} of {} approvals; in force two blocks after a block carries the last one",
                    a.approvals, a.required
                );
            } else {
                println!(
                    "approved {what}: {} of {} approvals so far; the others must approve it before height {}",
                    a.approvals, a.required, a.expires_at_height
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ masternode::admin::ClientError::Http { code: 401, .. }) => {
            eprintln!("error: {e} (give the node's admin token with --admin-token FILE, or use --config)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `masternode upgrade propose|approve`: refuses what the chain would refuse
/// (too near, not above what is scheduled) and what does not fit the verb
/// before asking the node to sign; exit 0 once the node accepted its approval.
async fn upgrade_plan(plan: masternode::admin::UpgradeBody, proposing: bool, target: PostTarget) -> ExitCode {
    use masternode::admin::{check_plan, fetch_upgrade, post_upgrade, ClientError};
    let (addr, token) = match post_target(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let now = match fetch_upgrade(addr, Duration::from_secs(5)).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(why) = check_plan(&now, plan, proposing) {
        eprintln!("refused: {why}");
        return ExitCode::FAILURE;
    }
    let (version, height) = (plan.version, plan.height);
    match post_upgrade(addr, plan, token.as_ref(), Duration::from_secs(10)).await {
        Ok(a) => {
            let verb = if proposing { "proposed" } else { "approved" };
            if a.approvals >= a.required {
                println!(
                    "{verb} upgrade to protocol {version} at height {height}: {} of {} approvals; scheduled once a \
                     block carries them",
                    a.approvals, a.required
                );
            } else {
                let last = height.saturating_sub(now.notice).min(a.expires_at_height);
                println!(
                    "{verb} upgrade to protocol {version} at height {height}: {} of {} approvals so far; the other \
                     members approve it with `masternode upgrade approve --version {version} --height {height}` \
                     before block {last}, the last that can complete it",
                    a.approvals, a.required
                );
            }
            if version > now.max_version {
                eprintln!(
                    "note: this node's binary runs up to protocol {}: install a release that runs protocol {version} \
                     before height {height}, or this node stops there",
                    now.max_version
                );
            }
            if !now.wire_ready {
                eprintln!(
                    "note: not every member is connected to this node at wire 4 or later (a node of 0.1.0, or one \
                     away): proposers put no plan in a block until they are"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ ClientError::Http { code: 401, .. }) => {
            eprintln!("error: {e} (give the node's admin token with --admin-token FILE, or use --config)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `masternode upgrade status`: exit 1 when the chain has scheduled a version
/// this binary does not run (the node will stop at its height).
async fn upgrade_status(target: AdminTarget, json: bool) -> ExitCode {
    let hint = down_hint(target.config.as_deref().filter(|_| target.admin.is_none()));
    let addr = match admin_addr(target.config, target.admin) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match masternode::admin::fetch_upgrade(addr, Duration::from_secs(5)).await {
        Ok(u) => {
            if json {
                match serde_json::to_string_pretty(&u) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                print!("{}", masternode::admin::render_upgrade(&u));
            }
            if u.schedule.iter().any(|p| !p.can_run) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("down: {e}{hint}");
            ExitCode::from(2)
        }
    }
}

async fn members(target: AdminTarget, json: bool) -> ExitCode {
    let hint = down_hint(target.config.as_deref().filter(|_| target.admin.is_none()));
    let addr = match admin_addr(target.config, target.admin) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match masternode::admin::fetch_members(addr, Duration::from_secs(5)).await {
        Ok(m) => {
            if json {
                match serde_json::to_string_pretty(&m) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                print!("{}", masternode::admin::render_members(&m));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("down: {e}{hint}");
            ExitCode::from(2)
        }
    }
}

/// What `down` adds when the address came from a config: where it was
/// looked for, and how to ask elsewhere.
fn down_hint(config: Option<&std::path::Path>) -> String {
    match config {
        Some(path) => format!(
            " (the admin address the node of {} recorded when it last started, else its config's; for a node \
             started with another --data-dir, give its address: --admin ADDR)",
            path.display()
        ),
        None => String::new(),
    }
}

async fn status(config: Option<PathBuf>, admin: Option<SocketAddr>, json: bool) -> ExitCode {
    let hint = down_hint(config.as_deref().filter(|_| admin.is_none()));
    let addr = match admin_addr(config, admin) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let status = match masternode::admin::fetch_status(addr, Duration::from_secs(5)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("down: {e}{hint}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print!("{}", masternode::admin::render_status(&status));
    }
    if status.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `masternode status --can-stop`: exit 0 when stopping the node now keeps
/// the quorum as it sees it, 1 when it does not or the node does not answer.
async fn can_stop(config: Option<PathBuf>, admin: Option<SocketAddr>, json: bool) -> ExitCode {
    let addr = match admin_addr(config, admin) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let verdict = match masternode::admin::fetch_stop_verdict(addr, Duration::from_secs(5)).await {
        Ok(v) => v,
        Err(e @ masternode::admin::ClientError::Unreachable { .. }) => {
            masternode::probe::unanswered_verdict(masternode::probe::StopReason::Down, e)
        }
        Err(e) => masternode::probe::unanswered_verdict(masternode::probe::StopReason::Unknown, e),
    };
    if json {
        match serde_json::to_string(&verdict) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else if matches!(verdict.reason, masternode::probe::StopReason::Down | masternode::probe::StopReason::Unknown) {
        eprintln!("{}", verdict.message);
    } else {
        let said = if verdict.can_stop { "can stop" } else { "cannot stop" };
        println!("{said}: {}", verdict.message);
    }
    if verdict.can_stop {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Test builds only: faults for this process's UDP socket, read from a file the
/// test rewrites. Lines: `partition A,B|C,D` (IP addresses; empty heals),
/// `loss 0.05` and `delay_ms 40`.
#[cfg(feature = "fault-injection")]
fn faults_from_file(path: PathBuf, stop: CancellationToken) -> masternode::net::SocketWrapper {
    use masternode::net::Faults;
    let faults = Faults::new();
    let watched = faults.clone();
    tokio::spawn(async move {
        let mut last = String::new();
        while !stop.is_cancelled() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text != last {
                let mut groups: Vec<Vec<std::net::IpAddr>> = Vec::new();
                let mut loss = 0.0;
                let mut delay_ms = 0;
                for line in text.lines() {
                    if let Some(spec) = line.strip_prefix("partition ") {
                        groups = spec
                            .split('|')
                            .map(|g| g.split(',').filter_map(|ip| ip.trim().parse().ok()).collect())
                            .collect();
                    } else if let Some(l) = line.strip_prefix("loss ") {
                        loss = l.trim().parse().unwrap_or(0.0);
                    } else if let Some(d) = line.strip_prefix("delay_ms ") {
                        delay_ms = d.trim().parse().unwrap_or(0);
                    }
                }
                let slices: Vec<&[std::net::IpAddr]> = groups.iter().map(|g| g.as_slice()).collect();
                watched.partition(&slices);
                watched.set_loss(loss);
                watched.set_delay(Duration::from_millis(delay_ms));
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    std::sync::Arc::new(move |socket, local| faults.wrap(socket, local))
}
