//! The `masternode` command line: parses, sets up logging, calls into the library
//! and turns its errors into one line and an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use masternode::config::{ConfigError, NodeConfig};
use masternode::identity::Identity;
use masternode::node::{Node, NodeOptions};

/// EX_CONFIG from sysexits.h: a bad configuration or key. systemd's
/// `RestartPreventExitStatus=78` keeps a misconfigured node from restart-looping.
const EXIT_CONFIG: u8 = 78;

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
    /// Run the daemon.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show a running node's status. Exit 0 healthy, 1 degraded, 2 down.
    Status {
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        config: Option<PathBuf>,
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Print the /status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run N nodes on 127.0.0.1..N in this process.
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The devnet prints its own progress; its nodes log warnings and errors only
    // unless RUST_LOG asks for more.
    let default_level = if matches!(cli.command, Command::Devnet { .. }) { "warn" } else { "info" };
    init_tracing(default_level);
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
            Command::Run { config } => run(config).await,
            Command::Status { config, admin, json } => status(config, admin, json).await,
            Command::Devnet { nodes, duration, dir, json } => {
                let opts =
                    masternode::devnet::DevnetOptions { nodes, duration: duration.map(Duration::from_secs), dir, json };
                let stop = CancellationToken::new();
                spawn_signal_handler(stop.clone());
                report(masternode::devnet::run(opts, stop).await.context("devnet"))
            }
        }
    })
}

fn init_tracing(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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

async fn run(config: PathBuf) -> ExitCode {
    let cfg = match NodeConfig::load(&config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing::info!(id = %cfg.id(), network = %cfg.network.name, members = cfg.network.members.len(), "starting masternode");
    let shutdown = CancellationToken::new();
    let node = match Node::start(cfg, NodeOptions::default(), shutdown.clone()).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    spawn_signal_handler(shutdown.clone());
    node.stopped().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
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

async fn status(config: Option<PathBuf>, admin: Option<SocketAddr>, json: bool) -> ExitCode {
    let (addr, members) = match (admin, config) {
        (Some(addr), _) => (addr, None),
        (None, Some(path)) => match NodeConfig::load(&path) {
            Ok(cfg) => (cfg.admin, Some(cfg.network.members.len())),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => unreachable!("clap requires --config or --admin"),
    };
    let status = match masternode::admin::fetch_status(addr, Duration::from_secs(5)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("down: {e}");
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
    let missing = members.map(|n| status.missing_peers(n)).unwrap_or(0);
    if status.quorum.met && missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
