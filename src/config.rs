//! Node configuration (`masternode.toml`) and the network file (`network.toml`).
//!
//! Both are parsed strictly: an unknown key, a missing file, a bad address, a
//! duplicate member, a key that does not match its certificate, or a joiner (a key
//! not in the genesis set) on an address no member can dial is a [`ConfigError`]
//! naming the file and the problem, and the daemon refuses to start (exit code 78,
//! EX_CONFIG).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::admin::{AdminToken, TokenError};
use crate::chain::block::{MAX_BLOCK_BYTES, MAX_BLOCK_TXS};
use crate::chain::checkpoint::CheckpointSource;
pub use crate::chain::genesis::{Member, Network};
pub use crate::chain::limits::NodeLimits;
use crate::chain::limits::MAX_SYNC_BATCH_BLOCKS;
use crate::chain::members::MAX_MEMBERS;
use crate::chain::message::{max_block_bytes_ceiling, MAX_BLOCK_TXS_CEILING};
use crate::identity::{Identity, IdentityError, NodeId};
pub use crate::net::TransportConfig as Transport;

/// `required = max(min_active, floor(2n/3) + 1)` uses this when the file is silent.
pub(crate) const DEFAULT_MIN_ACTIVE: usize = 3;
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:24101";
/// Transport timings above an hour are mistakes, not tuning.
pub(crate) const MAX_TRANSPORT_MS: u64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A value given on the command line or in the environment, not in a file.
    #[error("{source_name}: {message}")]
    Override { source_name: &'static str, message: String },
    /// A block limit of the network file above what a proposal's frame
    /// carries ([`crate::chain::message::max_block_bytes_ceiling`]).
    #[error(
        "{path}: {key} = {value} is over its ceiling of {ceiling} (a proposal of a full block must fit its frame)"
    )]
    BlockLimitOverCeiling { path: PathBuf, key: &'static str, value: usize, ceiling: usize },
    /// `retain_blocks` below the floor that keeps peers able to catch up.
    #[error(
        "{path}: retain_blocks = {value} is below the minimum of {min}: a node keeps at least its last {min} blocks \
         so that a peer back from a restart or a short outage can catch up from it (leave retain_blocks out to keep \
         every block)"
    )]
    RetainTooFew { path: PathBuf, value: u64, min: u64 },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    AdminToken(#[from] TokenError),
}

impl Network {
    /// The network file text for these members (devnet, provisioning, tests).
    pub fn render(
        name: &str,
        genesis_time_ms: u64,
        block_interval_ms: u64,
        min_active: usize,
        members: &[Member],
    ) -> String {
        let mut s = format!(
            "name = {name:?}\ngenesis_time_ms = {genesis_time_ms}\nblock_interval_ms = {block_interval_ms}\nmin_active = {min_active}\n"
        );
        for m in members {
            s.push_str(&format!("\n[[masternode]]\nid = \"{}\"\naddr = \"{}\"\n", m.id, m.addr));
        }
        s
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: NetworkFile = toml::from_str(text).map_err(|e| parse_error(path, e))?;
        let invalid = |message: String| ConfigError::Invalid { path: path.into(), message };
        if file.name.trim().is_empty() {
            return Err(invalid("name is empty".into()));
        }
        if file.block_interval_ms == 0 {
            return Err(invalid("block_interval_ms must be positive".into()));
        }
        if file.masternode.is_empty() {
            return Err(invalid("no [[masternode]] entries".into()));
        }
        // The chain admits no set larger than this, and a commit certificate
        // holding more precommits does not decode.
        if file.masternode.len() > MAX_MEMBERS {
            return Err(invalid(format!(
                "{} [[masternode]] entries: a member set holds at most {MAX_MEMBERS}",
                file.masternode.len()
            )));
        }
        let mut members = Vec::with_capacity(file.masternode.len());
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, m) in file.masternode.iter().enumerate() {
            let id = NodeId::from_hex(&m.id)
                .map_err(|_| invalid(format!("masternode #{}: id {:?} is not 64 hex characters", i + 1, m.id)))?;
            if id.verifying_key().is_none() {
                return Err(invalid(format!("masternode #{}: id {} is not an ed25519 public key", i + 1, m.id)));
            }
            let addr: SocketAddr = m
                .addr
                .parse()
                .map_err(|_| invalid(format!("masternode #{}: addr {:?} is not ip:port", i + 1, m.addr)))?;
            let addr = crate::net::canonical(addr);
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(invalid(format!("masternode #{}: addr {addr} is not dialable", i + 1)));
            }
            if !ids.insert(id) {
                return Err(invalid(format!("duplicate masternode id {id}")));
            }
            if !addrs.insert(addr) {
                return Err(invalid(format!("duplicate masternode addr {addr}")));
            }
            members.push(Member { id, addr });
        }
        members.sort_by_key(|m| m.id);
        let min_active = file.min_active.unwrap_or(DEFAULT_MIN_ACTIVE);
        // A quorum needs `min_active` masternodes up; with fewer in the set it never
        // forms and the chain waits forever. Refused here, not discovered later.
        if min_active > members.len() {
            let source = if file.min_active.is_some() { "" } else { " (the default)" };
            return Err(invalid(format!(
                "min_active = {min_active}{source} exceeds the {} masternodes listed: no quorum could ever form; \
                 set min_active to at most {}",
                members.len(),
                members.len()
            )));
        }
        let (max_block_bytes, max_block_txs) = (file.max_block_bytes, file.max_block_txs);
        for (key, value) in [("max_block_bytes", max_block_bytes), ("max_block_txs", max_block_txs)] {
            if value == Some(0) {
                return Err(invalid(format!("{key} must be positive")));
            }
        }
        let txs = max_block_txs.unwrap_or(MAX_BLOCK_TXS);
        let over = |key, value, ceiling| ConfigError::BlockLimitOverCeiling { path: path.into(), key, value, ceiling };
        if txs > MAX_BLOCK_TXS_CEILING {
            return Err(over("max_block_txs", txs, MAX_BLOCK_TXS_CEILING));
        }
        let bytes = max_block_bytes.unwrap_or(MAX_BLOCK_BYTES);
        if bytes > max_block_bytes_ceiling(txs) {
            return Err(over("max_block_bytes", bytes, max_block_bytes_ceiling(txs)));
        }
        let id = Network::compute_id(
            &file.name,
            file.genesis_time_ms,
            file.block_interval_ms,
            min_active,
            &members,
            max_block_bytes,
            max_block_txs,
        );
        Ok(Network {
            name: file.name,
            genesis_time_ms: file.genesis_time_ms,
            block_interval_ms: file.block_interval_ms,
            min_active,
            members,
            max_block_bytes,
            max_block_txs,
            id,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    name: String,
    genesis_time_ms: u64,
    block_interval_ms: u64,
    min_active: Option<usize>,
    /// Transaction bytes in a block, at most; 3 MiB when absent.
    max_block_bytes: Option<usize>,
    /// Transactions in a block, at most; 20,000 when absent.
    max_block_txs: Option<usize>,
    #[serde(default)]
    masternode: Vec<MemberEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    id: String,
    addr: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransportFile {
    keepalive_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    passive_wait_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    slow_peer_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_request_streams: Option<u32>,
    max_pending_handshakes: Option<usize>,
    max_pending_handshakes_per_ip: Option<usize>,
    sync_batch_blocks: Option<u32>,
    sync_response_bytes: Option<usize>,
    sync_requests_per_sec: Option<u32>,
    sync_serve_bytes_per_sec: Option<usize>,
    mempool_max_txs: Option<usize>,
    mempool_max_bytes: Option<usize>,
    tx_max_bytes: Option<usize>,
}

/// How the daemon writes its log lines to stderr: `log_format` in
/// `masternode.toml`, `MASTERNODE_LOG_FORMAT`, `--log-format` (in that order
/// of precedence, the flag last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Text when stderr is a terminal, else JSON lines (journald, a file, a
    /// pipe): what a node does when nothing is set.
    #[default]
    Auto,
    /// Text lines: time, level, target, fields, message.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (`message` and the event's fields) and the span's fields.
    Json,
}

impl LogFormat {
    pub(crate) fn parse(text: &str) -> Option<LogFormat> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            "auto" => Some(LogFormat::Auto),
            _ => None,
        }
    }
}

/// `doppelganger_intervals` when the file does not set it.
pub(crate) const DEFAULT_DOPPELGANGER_INTERVALS: u32 = 2;
/// The longest watch a file may ask for: a typo of 2000 must not keep a node
/// from signing for an hour.
pub(crate) const MAX_DOPPELGANGER_INTERVALS: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    network: PathBuf,
    key: PathBuf,
    cert: PathBuf,
    listen: String,
    admin: Option<String>,
    /// Serve the admin API on a non-loopback address.
    admin_public: Option<bool>,
    /// A file holding the bearer token every POST to the admin API must carry.
    admin_token: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    /// Members to reach for catching up beyond what the genesis names, as
    /// `"<node id>@ip:port"`.
    #[serde(default)]
    bootstrap: Vec<String>,
    /// `"text"` or `"json"` (or `"auto"`, the default); see [`LogFormat`].
    log_format: Option<String>,
    /// Block intervals of the doppelganger watch after a start; 0 turns it off.
    doppelganger_intervals: Option<u32>,
    /// Blocks to keep, the tip's included; older ones are pruned. None: all.
    retain_blocks: Option<u64>,
    /// Where an empty data dir starts: `"HEIGHT:HASH"` or `"peers"`.
    checkpoint: Option<String>,
    #[serde(default)]
    transport: TransportFile,
    #[serde(default)]
    limits: LimitsFile,
}

/// The values of a `masternode.toml`, checked, with paths resolved against the
/// file's folder; the files they name are not read yet.
#[derive(Debug, Clone)]
pub struct NodeFileValues {
    pub network: PathBuf,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub admin_token: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub bootstrap: Vec<Member>,
    pub transport: Transport,
    pub limits: NodeLimits,
    pub log_format: LogFormat,
    pub doppelganger_intervals: u32,
    pub retain_blocks: Option<u64>,
    pub checkpoint: Option<CheckpointSource>,
}

impl NodeFileValues {
    pub fn parse(path: &Path, text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut file: NodeFile = toml::from_str(text).map_err(|e| parse_error(path, e))?;
        overrides.apply(&mut file);
        let invalid = |message: String| ConfigError::Invalid { path: path.into(), message };
        // An error in a value that came from a flag or variable names that,
        // not the file.
        let invalid_in = |overridden: bool, name: &'static str, message: String| match overridden {
            true => ConfigError::Override { source_name: name, message },
            false => invalid(message),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let listen: SocketAddr = file.listen.parse().map_err(|_| {
            let message = format!("listen {:?} is not ip:port", file.listen);
            invalid_in(overrides.listen.is_some(), "--listen (or MASTERNODE_LISTEN)", message)
        })?;
        let admin_text = file.admin.as_deref().unwrap_or(DEFAULT_ADMIN);
        let from_flag = overrides.admin.is_some();
        let admin: SocketAddr = admin_text.parse().map_err(|_| {
            let message = format!("admin {admin_text:?} is not ip:port");
            invalid_in(from_flag, "--admin (or MASTERNODE_ADMIN)", message)
        })?;
        if !admin.ip().is_loopback() && file.admin_public != Some(true) {
            let message = format!(
                "admin {admin} is not a loopback address; the admin API trusts whoever can reach it \
                 (set admin_public = true, and admin_token, in {} to serve it there anyway)",
                path.display()
            );
            return Err(invalid_in(from_flag, "--admin (or MASTERNODE_ADMIN)", message));
        }
        let log_format = match file.log_format.as_deref() {
            None => LogFormat::Auto,
            Some(text) => LogFormat::parse(text).ok_or_else(|| {
                invalid(format!(
                    "log_format {text:?} is not \"text\" or \"json\" (or \"auto\": text on a terminal, JSON otherwise)"
                ))
            })?,
        };
        let doppelganger_intervals = file.doppelganger_intervals.unwrap_or(DEFAULT_DOPPELGANGER_INTERVALS);
        if doppelganger_intervals > MAX_DOPPELGANGER_INTERVALS {
            return Err(invalid(format!(
                "doppelganger_intervals = {doppelganger_intervals} is more than {MAX_DOPPELGANGER_INTERVALS} block \
                 intervals (0 turns the watch off)"
            )));
        }
        if let Some(value) = file.retain_blocks {
            let min = crate::chain::MIN_RETAIN_BLOCKS;
            if value < min {
                return Err(ConfigError::RetainTooFew { path: path.into(), value, min });
            }
        }
        let checkpoint = match file.checkpoint.as_deref() {
            None => None,
            Some(text) => Some(text.parse::<CheckpointSource>().map_err(|e| {
                invalid_in(overrides.checkpoint.is_some(), "--checkpoint (or MASTERNODE_CHECKPOINT)", e.to_string())
            })?),
        };
        let bootstrap = file
            .bootstrap
            .iter()
            .map(|entry| parse_bootstrap(entry).map_err(|why| invalid(format!("bootstrap {entry:?}: {why}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut transport = Transport::default();
        let t = &file.transport;
        for (value, slot, name) in [
            (t.keepalive_ms, &mut transport.keepalive, "keepalive_ms"),
            (t.idle_timeout_ms, &mut transport.idle_timeout, "idle_timeout_ms"),
            (t.passive_wait_ms, &mut transport.passive_wait, "passive_wait_ms"),
            (t.handshake_timeout_ms, &mut transport.handshake_timeout, "handshake_timeout_ms"),
            (t.slow_peer_timeout_ms, &mut transport.slow_peer_timeout, "slow_peer_timeout_ms"),
        ] {
            if let Some(ms) = value {
                if ms == 0 || ms > MAX_TRANSPORT_MS {
                    return Err(invalid(format!(
                        "transport.{name} must be between 1 and {MAX_TRANSPORT_MS}, not {ms}"
                    )));
                }
                *slot = Duration::from_millis(ms);
            }
        }
        if transport.keepalive >= transport.idle_timeout {
            return Err(invalid(format!(
                "transport.keepalive_ms ({}) must be below idle_timeout_ms ({})",
                transport.keepalive.as_millis(),
                transport.idle_timeout.as_millis()
            )));
        }
        let l = &file.limits;
        let mut limits = NodeLimits::default();
        let positive = |v: Option<usize>, name: &str, max: usize| -> Result<Option<usize>, ConfigError> {
            match v {
                Some(n) if n == 0 || n > max => {
                    Err(invalid(format!("limits.{name} must be between 1 and {max}, not {n}")))
                }
                other => Ok(other),
            }
        };
        if let Some(n) = positive(l.max_request_streams.map(|n| n as usize), "max_request_streams", 1024)? {
            transport.max_request_streams = n as u32;
        }
        if let Some(n) = positive(l.max_pending_handshakes, "max_pending_handshakes", 100_000)? {
            transport.max_pending_handshakes = n;
        }
        if let Some(n) = positive(l.max_pending_handshakes_per_ip, "max_pending_handshakes_per_ip", 100_000)? {
            transport.max_pending_handshakes_per_ip = n;
        }
        if let Some(n) = positive(l.sync_batch_blocks.map(|n| n as usize), "sync_batch_blocks", MAX_SYNC_BATCH_BLOCKS)?
        {
            limits.sync_batch_blocks = n as u32;
        }
        let max_frame = crate::codec::MAX_FRAME;
        if let Some(n) = positive(l.sync_response_bytes, "sync_response_bytes", max_frame - 64 * 1024)? {
            limits.sync_response_bytes = n;
        }
        if let Some(n) = positive(l.sync_requests_per_sec.map(|n| n as usize), "sync_requests_per_sec", 100_000)? {
            limits.sync_requests_per_sec = n as u32;
        }
        if let Some(n) = positive(l.sync_serve_bytes_per_sec, "sync_serve_bytes_per_sec", 1 << 34)? {
            limits.sync_serve_bytes_per_sec = n;
        }
        if let Some(n) = positive(l.mempool_max_txs, "mempool_max_txs", 10_000_000)? {
            limits.mempool.max_txs = n;
        }
        if let Some(n) = positive(l.mempool_max_bytes, "mempool_max_bytes", 1 << 34)? {
            limits.mempool.max_bytes = n;
        }
        if let Some(n) = positive(l.tx_max_bytes, "tx_max_bytes", crate::chain::message::TX_LIMIT - 16)? {
            limits.mempool.max_tx_bytes = n;
        }
        Ok(NodeFileValues {
            limits,
            network: base.join(&file.network),
            key: base.join(&file.key),
            cert: base.join(&file.cert),
            listen,
            admin,
            admin_token: file.admin_token.map(|t| base.join(t)),
            data_dir: base.join(file.data_dir.unwrap_or_else(|| PathBuf::from("data"))),
            bootstrap,
            transport,
            log_format,
            doppelganger_intervals,
            retain_blocks: file.retain_blocks,
            checkpoint,
        })
    }
}

/// Values that override the config file, from `MASTERNODE_*` variables or flags.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub keepalive_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub passive_wait_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub log_format: Option<String>,
    pub checkpoint: Option<String>,
}

impl Overrides {
    fn apply(&self, file: &mut NodeFile) {
        if let Some(v) = &self.listen {
            file.listen = v.clone();
        }
        if let Some(v) = &self.admin {
            file.admin = Some(v.clone());
        }
        if let Some(v) = &self.data_dir {
            file.data_dir = Some(v.clone());
        }
        if let Some(v) = &self.log_format {
            file.log_format = Some(v.clone());
        }
        if let Some(v) = &self.checkpoint {
            file.checkpoint = Some(v.clone());
        }
        let t = &mut file.transport;
        t.keepalive_ms = self.keepalive_ms.or(t.keepalive_ms);
        t.idle_timeout_ms = self.idle_timeout_ms.or(t.idle_timeout_ms);
        t.passive_wait_ms = self.passive_wait_ms.or(t.passive_wait_ms);
        t.handshake_timeout_ms = self.handshake_timeout_ms.or(t.handshake_timeout_ms);
    }
}

/// A node's whole configuration, validated: everything `Node::start` needs.
pub struct NodeConfig {
    pub network: Network,
    pub identity: Identity,
    /// UDP address the QUIC endpoint binds (may be 0.0.0.0).
    pub listen: SocketAddr,
    /// This node's address in the network file: what the direction rule uses.
    pub advertised: SocketAddr,
    pub admin: SocketAddr,
    /// The bearer token every POST to the admin API must carry, if any.
    pub admin_token: Option<AdminToken>,
    pub data_dir: PathBuf,
    pub transport: Transport,
    pub limits: NodeLimits,
    /// Members this node reaches besides those its chain names: a node whose
    /// chain is far behind (an empty data dir) knows only the genesis set,
    /// which may have been replaced since. Certificates prove what they
    /// send, so these are trusted only to be members of the set of today.
    pub bootstrap: Vec<Member>,
    /// Read by the command line before it sets logging up.
    pub log_format: LogFormat,
    /// Block intervals a member watches after a start for votes of its key
    /// that it did not make, signing nothing meanwhile; 0 turns the watch off
    /// (`doppelganger_intervals`, see docs/operating.md).
    pub doppelganger_intervals: u32,
    /// Blocks kept, the tip's included (at least
    /// [`crate::chain::MIN_RETAIN_BLOCKS`]); `None` keeps every block.
    pub retain_blocks: Option<u64>,
    /// Where a node on an empty data dir starts (`checkpoint`, `--checkpoint`):
    /// a trusted `(height, id)`, or the one peers offer; `None` replays the
    /// chain from genesis. Ignored once the data dir holds a chain.
    pub checkpoint: Option<CheckpointSource>,
}

impl NodeConfig {
    pub fn id(&self) -> NodeId {
        self.identity.id()
    }

    /// Loads `masternode.toml`; relative paths inside it are taken from its folder.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    /// Loads `masternode.toml` and applies `overrides` (from `MASTERNODE_*`
    /// variables and flags) on top: defaults < file < environment < flags.
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let f = NodeFileValues::parse(path, &text, overrides)?;
        let network = Network::load(&f.network)?;
        let identity = Identity::load(&f.key, &f.cert)?;
        let admin_token = f.admin_token.as_deref().map(AdminToken::load).transpose()?;
        let mut cfg = Self::assemble(network, &f.network, identity, f.listen, f.admin, f.data_dir, f.transport)?;
        cfg.admin_token = admin_token;
        cfg.limits = f.limits;
        cfg.bootstrap = f.bootstrap;
        cfg.log_format = f.log_format;
        cfg.doppelganger_intervals = f.doppelganger_intervals;
        cfg.retain_blocks = f.retain_blocks;
        cfg.checkpoint = f.checkpoint;
        Ok(cfg)
    }

    /// Cross-checks the parts. A key in the genesis set takes its address from
    /// there; any other key is a joiner (members add it on chain), which members
    /// will dial at `listen`, so that must be a specific address.
    pub fn assemble(
        network: Network,
        network_path: &Path,
        identity: Identity,
        listen: SocketAddr,
        admin: SocketAddr,
        data_dir: PathBuf,
        transport: Transport,
    ) -> Result<Self, ConfigError> {
        let advertised = match network.member(&identity.id()) {
            Some(m) => m.addr,
            None if listen.ip().is_unspecified() || listen.port() == 0 => {
                return Err(ConfigError::Invalid {
                    path: network_path.into(),
                    message: format!(
                        "this node's key {} is not in the genesis set, so it joins as a new member, and its \
                         listen address {listen} is not one members can dial: set listen to the address \
                         given in `masternode member add`",
                        identity.id()
                    ),
                })
            }
            None => crate::net::canonical(listen),
        };
        Ok(NodeConfig {
            network,
            identity,
            listen,
            advertised,
            admin,
            admin_token: None,
            data_dir,
            transport,
            limits: NodeLimits::default(),
            bootstrap: Vec::new(),
            log_format: LogFormat::Auto,
            doppelganger_intervals: DEFAULT_DOPPELGANGER_INTERVALS,
            retain_blocks: None,
            checkpoint: None,
        })
    }
}

/// `"<node id in hex>@ip:port"`, the address a specific one (members dial it).
fn parse_bootstrap(entry: &str) -> Result<Member, String> {
    let (id, addr) = entry.split_once('@').ok_or("expected <node id>@ip:port")?;
    let id = NodeId::from_hex(id.trim()).map_err(|e| format!("node id: {e}"))?;
    let addr: SocketAddr = addr.trim().parse().map_err(|_| format!("{addr:?} is not ip:port"))?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!("{addr} is not an address to dial"));
    }
    Ok(Member { id, addr: crate::net::canonical(addr) })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })
}

fn parse_error(path: &Path, e: toml::de::Error) -> ConfigError {
    // toml's message spans several lines with a source excerpt; keep the one line
    // an operator needs, plus the line number.
    let first = e.message().lines().next().unwrap_or("invalid TOML").to_string();
    let message = match e.span() {
        Some(span) => {
            let text_line = e.to_string();
            let line = text_line
                .split_whitespace()
                .skip_while(|w| *w != "line")
                .nth(1)
                .map(|n| n.trim_end_matches(',').to_string());
            match line {
                Some(l) => format!("line {l}: {first}"),
                None => format!("at byte {}: {first}", span.start),
            }
        }
        None => first,
    };
    ConfigError::Parse { path: path.into(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> String {
        // A valid ed25519 public key for each i.
        let key = ed25519_dalek::SigningKey::from_bytes(&[i; 32]);
        crate::identity::hex(key.verifying_key().as_bytes())
    }

    fn net(body: &str) -> Result<Network, ConfigError> {
        Network::parse(Path::new("network.toml"), body)
    }

    const HEAD: &str = "name = \"t\"\ngenesis_time_ms = 1\nblock_interval_ms = 1000\n";

    #[test]
    fn limits_section_sets_values_and_refuses_nonsense() {
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("masternode.toml");
        let ok = format!(
            "{base}[limits]\nmempool_max_txs = 7\nmax_pending_handshakes_per_ip = 2\nsync_requests_per_sec = 3\n"
        );
        let v = NodeFileValues::parse(path, &ok, &Overrides::default()).unwrap();
        assert_eq!(v.limits.mempool.max_txs, 7);
        assert_eq!(v.transport.max_pending_handshakes_per_ip, 2);
        assert_eq!(v.limits.sync_requests_per_sec, 3);
        for bad in ["mempool_max_txs = 0", "tx_max_bytes = 999999999", "sync_response_bytes = 99999999", "colour = 1"] {
            let text = format!("{base}[limits]\n{bad}\n");
            let err = NodeFileValues::parse(path, &text, &Overrides::default()).err().unwrap().to_string();
            assert!(err.starts_with("masternode.toml") && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn doppelganger_intervals_default_to_two_zero_turns_the_watch_off_and_a_hundred_is_the_most() {
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("masternode.toml");
        let parse =
            |text: &str| NodeFileValues::parse(path, text, &Overrides::default()).map(|v| v.doppelganger_intervals);
        assert_eq!(parse(base).unwrap(), 2, "unset");
        for n in [0, 1, 5, MAX_DOPPELGANGER_INTERVALS] {
            assert_eq!(parse(&format!("doppelganger_intervals = {n}\n{base}")).unwrap(), n);
        }
        for bad in ["101", "-1", "\"2\""] {
            let err = parse(&format!("doppelganger_intervals = {bad}\n{base}")).err().unwrap().to_string();
            assert!(err.starts_with("masternode.toml") && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn log_format_is_text_json_or_auto_and_a_flag_beats_the_file() {
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("masternode.toml");
        let parse = |text: &str, flag: Option<&str>| {
            let overrides = Overrides { log_format: flag.map(str::to_string), ..Overrides::default() };
            NodeFileValues::parse(path, text, &overrides).map(|v| v.log_format)
        };
        assert_eq!(parse(base, None).unwrap(), LogFormat::Auto, "unset: text on a terminal, JSON otherwise");
        for (value, want) in [("text", LogFormat::Text), ("json", LogFormat::Json), ("auto", LogFormat::Auto)] {
            assert_eq!(parse(&format!("log_format = \"{value}\"\n{base}"), None).unwrap(), want, "{value}");
            assert_eq!(parse(base, Some(value)).unwrap(), want, "flag {value}");
        }
        let json_file = format!("log_format = \"json\"\n{base}");
        assert_eq!(parse(&json_file, Some("text")).unwrap(), LogFormat::Text, "the flag (or variable) wins");
        for (text, flag) in [(format!("log_format = \"xml\"\n{base}"), None), (base.to_string(), Some("JSON"))] {
            let err = parse(&text, flag).err().unwrap().to_string();
            assert!(err.starts_with("masternode.toml: log_format") && !err.contains('\n'), "{err}");
        }
        let err = parse(&format!("log_format = 1\n{base}"), None).err().unwrap().to_string();
        assert!(err.starts_with("masternode.toml") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn an_error_in_a_flag_names_the_flag_not_the_file() {
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("/etc/masternode/masternode.toml");
        let flagged = Overrides { admin: Some("0.0.0.0:24101".into()), ..Overrides::default() };
        let err = NodeFileValues::parse(path, base, &flagged).err().unwrap().to_string();
        assert!(err.starts_with("--admin (or MASTERNODE_ADMIN): admin 0.0.0.0:24101 is not a loopback"), "{err}");
        assert!(err.contains("admin_public = true, and admin_token, in /etc/masternode/masternode.toml"), "{err}");
        let in_file = format!("admin = \"0.0.0.0:24101\"\n{base}");
        let err = NodeFileValues::parse(path, &in_file, &Overrides::default()).err().unwrap().to_string();
        assert!(err.starts_with("/etc/masternode/masternode.toml: admin 0.0.0.0:24101"), "{err}");
        let listen = Overrides { listen: Some("nowhere".into()), ..Overrides::default() };
        let err = NodeFileValues::parse(path, base, &listen).err().unwrap().to_string();
        assert!(err.starts_with("--listen (or MASTERNODE_LISTEN): listen \"nowhere\""), "{err}");
    }

    #[test]
    fn checkpoint_is_height_colon_hash_or_peers_and_a_malformed_one_names_where_it_came_from() {
        use crate::chain::checkpoint::{Checkpoint, CheckpointSource};
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("masternode.toml");
        let parse = |text: &str, o: &Overrides| NodeFileValues::parse(path, text, o);
        let none = Overrides::default();
        assert_eq!(parse(base, &none).unwrap().checkpoint, None, "unset: replay from genesis");
        let hex = "0f".repeat(32);
        let file = format!("checkpoint = \"42:{hex}\"\n{base}");
        let trusted = CheckpointSource::Trusted(Checkpoint { height: 42, hash: crate::chain::Hash([0x0f; 32]) });
        assert_eq!(parse(&file, &none).unwrap().checkpoint, Some(trusted));
        let peers = Overrides { checkpoint: Some("peers".into()), ..Overrides::default() };
        assert_eq!(parse(&file, &peers).unwrap().checkpoint, Some(CheckpointSource::Peers), "the flag over the file");
        let err = parse(&format!("checkpoint = \"42\"\n{base}"), &none).err().unwrap();
        assert!(err.to_string().starts_with("masternode.toml: a checkpoint is HEIGHT:HASH"), "{err}");
        let bad = Overrides { checkpoint: Some("42:zz".into()), ..Overrides::default() };
        let err = parse(base, &bad).err().unwrap();
        assert!(err.to_string().starts_with("--checkpoint (or MASTERNODE_CHECKPOINT): "), "{err}");
    }

    #[test]
    fn retain_blocks_keeps_everything_unset_and_is_refused_below_its_minimum() {
        use crate::chain::MIN_RETAIN_BLOCKS;
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("masternode.toml");
        let parse = |text: &str| NodeFileValues::parse(path, text, &Overrides::default());
        assert_eq!(parse(base).unwrap().retain_blocks, None, "unset: every block is kept");
        let at_min = format!("retain_blocks = {MIN_RETAIN_BLOCKS}\n{base}");
        assert_eq!(parse(&at_min).unwrap().retain_blocks, Some(MIN_RETAIN_BLOCKS));
        for value in [0, 1, MIN_RETAIN_BLOCKS - 1] {
            let err = parse(&format!("retain_blocks = {value}\n{base}")).err().unwrap();
            assert!(
                matches!(err, ConfigError::RetainTooFew { value: v, min: MIN_RETAIN_BLOCKS, .. } if v == value),
                "{value}: {err}"
            );
            let text = err.to_string();
            assert!(text.starts_with("masternode.toml: retain_blocks") && !text.contains('\n'), "{text}");
        }
        assert!(parse(&format!("retain_blocks = -5\n{base}")).is_err());
    }

    #[test]
    fn admin_token_names_a_file_beside_the_config() {
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("/etc/masternode/masternode.toml");
        let with = format!("admin_token = \"admin.token\"\n{base}");
        let v = NodeFileValues::parse(path, &with, &Overrides::default()).unwrap();
        assert_eq!(v.admin_token.as_deref(), Some(Path::new("/etc/masternode/admin.token")));
        let absolute = format!("admin_token = \"/run/secrets/token\"\n{base}");
        let v = NodeFileValues::parse(path, &absolute, &Overrides::default()).unwrap();
        assert_eq!(v.admin_token.as_deref(), Some(Path::new("/run/secrets/token")));
        assert_eq!(NodeFileValues::parse(path, base, &Overrides::default()).unwrap().admin_token, None);
    }

    #[test]
    fn bootstrap_peers_are_id_at_address_and_nonsense_is_refused() {
        let base = "network = \"n.toml\"\nkey = \"k\"\ncert = \"c\"\nlisten = \"127.0.0.1:1\"\n";
        let path = Path::new("masternode.toml");
        let ok = format!("{base}bootstrap = [\"{}@203.0.113.7:24100\", \" {}@[::ffff:10.0.0.1]:9 \"]\n", id(1), id(2));
        let v = NodeFileValues::parse(path, &ok, &Overrides::default()).unwrap();
        let addrs: Vec<String> = v.bootstrap.iter().map(|m| m.addr.to_string()).collect();
        assert_eq!(addrs, ["203.0.113.7:24100", "10.0.0.1:9"], "a mapped address is the IPv4 one");
        assert_eq!(v.bootstrap[0].id.to_hex(), id(1));
        let none = NodeFileValues::parse(path, base, &Overrides::default()).unwrap();
        assert!(none.bootstrap.is_empty());
        for bad in [
            "203.0.113.7:24100".to_string(),
            format!("{}@203.0.113.7", id(1)),
            format!("{}@0.0.0.0:24100", id(1)),
            format!("{}@203.0.113.7:0", id(1)),
            "abcd@203.0.113.7:24100".to_string(),
        ] {
            let text = format!("{base}bootstrap = [\"{bad}\"]\n");
            let err = NodeFileValues::parse(path, &text, &Overrides::default()).err().unwrap().to_string();
            assert!(err.starts_with("masternode.toml: bootstrap") && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_a_valid_network() {
        let text = format!(
            "{HEAD}min_active = 2\n[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.2:1\"\n[[masternode]]\nid = \"{}\"\naddr = \"[::ffff:127.0.0.1]:1\"\n",
            id(1),
            id(2)
        );
        let n = net(&text).unwrap();
        assert_eq!(n.members.len(), 2);
        assert!(n.members.windows(2).all(|w| w[0].id < w[1].id));
        assert!(n.members.iter().any(|m| m.addr == "127.0.0.1:1".parse().unwrap()), "mapped address normalised");
    }

    /// `min_active` above the member count can never be met: the chain would wait
    /// forever for masternodes that do not exist. Refused at start-up instead.
    #[test]
    fn min_active_above_the_member_count_is_refused() {
        let members = |n: u8| {
            (1..=n)
                .map(|i| format!("[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.{i}:1\"\n", id(i)))
                .collect::<String>()
        };
        let Err(err) = net(&format!("{HEAD}min_active = 4\n{}", members(3))) else { panic!("4 of 3 accepted") };
        let err = err.to_string();
        assert!(err.starts_with("network.toml") && !err.contains('\n'), "{err}");
        assert!(err.contains("min_active = 4") && err.contains("3 masternodes"), "{err}");
        assert!(matches!(net(&format!("{HEAD}min_active = 4\n{}", members(3))), Err(ConfigError::Invalid { .. })));
        // The default (3) with fewer members is the same impossibility.
        let Err(err) = net(&format!("{HEAD}{}", members(2))) else { panic!("the default 3 of 2 accepted") };
        let err = err.to_string();
        assert!(err.contains("min_active = 3"), "{err}");
        // At the member count, and below it, a quorum can form.
        assert_eq!(net(&format!("{HEAD}min_active = 3\n{}", members(3))).unwrap().required(), 3);
        assert_eq!(net(&format!("{HEAD}min_active = 2\n{}", members(2))).unwrap().required(), 2);
        assert_eq!(net(&format!("{HEAD}min_active = 1\n{}", members(1))).unwrap().required(), 1);
    }

    /// A genesis larger than any member set the chain admits is refused: its
    /// commit certificates could hold more precommits than decode.
    #[test]
    fn a_genesis_over_the_largest_member_set_is_refused() {
        let members = |n: usize| {
            (1..=n)
                .map(|i| {
                    format!(
                        "[[masternode]]\nid = \"{}\"\naddr = \"127.0.{}.{}:1\"\n",
                        id(i as u8),
                        i / 200,
                        i % 200 + 1
                    )
                })
                .collect::<String>()
        };
        assert_eq!(net(&format!("{HEAD}{}", members(MAX_MEMBERS))).unwrap().members.len(), MAX_MEMBERS);
        let Err(err) = net(&format!("{HEAD}{}", members(MAX_MEMBERS + 1))) else { panic!("129 members accepted") };
        let err = err.to_string();
        assert!(err.contains("129 [[masternode]] entries") && err.contains("at most 128"), "{err}");
    }

    #[test]
    fn network_id_ignores_addresses_but_not_members() {
        let a = net(&format!("{HEAD}min_active = 1\n[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.2:1\"\n", id(1)))
            .unwrap();
        let b = net(&format!("{HEAD}min_active = 1\n[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.9:7\"\n", id(1)))
            .unwrap();
        let c = net(&format!("{HEAD}min_active = 1\n[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.2:1\"\n", id(2)))
            .unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
    }

    /// The block limits enter the id only when the file sets them: a file
    /// without them keeps the id it had before the keys existed (0.1.0's
    /// chain among them), and one that sets them is another network.
    #[test]
    fn block_limits_change_the_network_id_only_when_set() {
        let body = format!("min_active = 1\n[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.2:1\"\n", id(1));
        let plain = net(&format!("{HEAD}{body}")).unwrap();
        let members = plain.members.clone();
        // The id as 0.1.0 computes it, written out byte by byte.
        let mut old = ring::digest::Context::new(&ring::digest::SHA256);
        old.update(b"masternode-network-v1\0");
        old.update(&1u64.to_be_bytes());
        old.update(b"t");
        for n in [1u64, 1000, 1] {
            old.update(&n.to_be_bytes());
        }
        old.update(&members[0].id.0);
        assert_eq!(&plain.id[..], old.finish().as_ref(), "absent keys: the id is 0.1.0's");
        assert_eq!((plain.max_block_bytes, plain.max_block_txs), (None, None));
        assert_eq!(plain.limits().max_block_bytes, MAX_BLOCK_BYTES);
        assert_eq!(plain.limits().max_block_txs, MAX_BLOCK_TXS);
        let mut ids = vec![plain.id];
        for keys in [
            "max_block_txs = 10\n",
            "max_block_bytes = 10\n",
            "max_block_txs = 20000\n",
            "max_block_bytes = 3145728\n",
            "max_block_txs = 10\nmax_block_bytes = 10\n",
        ] {
            let n = net(&format!("{HEAD}{keys}{body}")).unwrap();
            assert!(!ids.contains(&n.id), "{keys:?}: a set key is another network");
            ids.push(n.id);
        }
        let limited = net(&format!("{HEAD}max_block_txs = 10\nmax_block_bytes = 4096\n{body}")).unwrap();
        assert_eq!((limited.limits().max_block_txs, limited.limits().max_block_bytes), (10, 4096));
    }

    /// A proposal of a full block must fit its frame: `max_block_txs` up to
    /// the decoding bound, `max_block_bytes` up to what the frame leaves
    /// beside that many transactions' prefixes. Over either, the file is
    /// refused with an error naming the key and the ceiling.
    #[test]
    fn block_limits_over_the_frame_ceiling_are_refused() {
        use crate::chain::message::{max_block_bytes_ceiling, MAX_BLOCK_TXS_CEILING};
        let body = format!("min_active = 1\n[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.2:1\"\n", id(1));
        let with = |keys: &str| net(&format!("{HEAD}{keys}{body}"));
        let bytes_ceiling = max_block_bytes_ceiling(MAX_BLOCK_TXS);
        assert_eq!(bytes_ceiling, 3_151_166);
        assert!(with(&format!("max_block_txs = {MAX_BLOCK_TXS_CEILING}\n")).is_ok());
        assert!(with(&format!("max_block_bytes = {bytes_ceiling}\n")).is_ok());
        // Fewer transactions leave more of the frame to their bytes.
        let roomier = max_block_bytes_ceiling(10);
        assert!(roomier > bytes_ceiling);
        assert!(with(&format!("max_block_txs = 10\nmax_block_bytes = {roomier}\n")).is_ok());
        for (keys, key, value, ceiling) in [
            (format!("max_block_txs = {}\n", MAX_BLOCK_TXS_CEILING + 1), "max_block_txs", 20_001, 20_000),
            (format!("max_block_bytes = {}\n", bytes_ceiling + 1), "max_block_bytes", bytes_ceiling + 1, bytes_ceiling),
            (
                format!("max_block_txs = 10\nmax_block_bytes = {}\n", roomier + 1),
                "max_block_bytes",
                roomier + 1,
                roomier,
            ),
        ] {
            let err = with(&keys).err().unwrap();
            let text = err.to_string();
            assert!(
                matches!(err, ConfigError::BlockLimitOverCeiling { key: k, value: v, ceiling: c, .. }
                    if k == key && v == value && c == ceiling),
                "{keys:?}: {text}"
            );
            assert!(text.starts_with("network.toml: ") && text.contains(key), "{text}");
            assert!(text.contains(&ceiling.to_string()) && !text.contains('\n'), "{text}");
        }
        for zero in ["max_block_txs = 0\n", "max_block_bytes = 0\n"] {
            let err = with(zero).err().unwrap().to_string();
            assert!(err.contains("must be positive") && err.starts_with("network.toml"), "{err}");
        }
    }

    #[test]
    fn rejects_bad_network_files_with_a_clear_message() {
        let cases = [
            (format!("{HEAD}colour = 1\n"), "unknown field"),
            (format!("{HEAD}[[masternode]]\nid = \"xyz\"\naddr = \"127.0.0.1:1\"\n"), "not 64 hex"),
            (format!("{HEAD}[[masternode]]\nid = \"{}\"\naddr = \"localhost\"\n", id(1)), "not ip:port"),
            (
                format!("{HEAD}[[masternode]]\nid = \"{0}\"\naddr = \"127.0.0.1:1\"\n[[masternode]]\nid = \"{0}\"\naddr = \"127.0.0.2:1\"\n", id(1)),
                "duplicate masternode id",
            ),
            (
                format!("{HEAD}[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.1:1\"\n[[masternode]]\nid = \"{}\"\naddr = \"127.0.0.1:1\"\n", id(1), id(2)),
                "duplicate masternode addr",
            ),
            (HEAD.to_string(), "no [[masternode]]"),
        ];
        for (text, want) in cases {
            let err = net(&text).err().unwrap().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
            assert!(err.starts_with("network.toml"), "{err:?} names the file");
            assert!(!err.contains('\n'), "{err:?} is one line");
        }
    }
}
