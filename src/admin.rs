//! The admin API: plain HTTP on a local address.
//!
//! `GET /status` returns the JSON object of the contract in DESIGN.md. The same
//! module holds the small client that `masternode status` uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::chain::block::Hash;
use crate::chain::mempool::{lock, AddError, Mempool};
use crate::chain::store::Store;
use crate::config::Network;
use crate::identity::{hex, NodeId};
use crate::net::handshake::{RejectReason, Tip};
use crate::net::Message;
use crate::net::Peers;
use crate::node::StatusSource;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node_id: String,
    pub listen: String,
    pub network: String,
    /// Size of the masternode set.
    pub members: usize,
    pub height: u64,
    pub tip_hash: Option<String>,
    pub quorum: Quorum,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    /// Handshake rejections this node sent, by reason.
    pub rejects_sent: BTreeMap<String, u64>,
    /// Handshake rejections peers sent this node, by reason.
    pub rejects_received: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quorum {
    pub active: usize,
    pub required: usize,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub node_id: String,
    pub addr: String,
    pub direction: String,
    pub rtt_ms: f64,
    pub connected_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Counters {
    pub dials: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub duplicates_closed: u64,
    pub dial_failures: u64,
    pub handshake_timeouts: u64,
    pub tls_refused: u64,
    pub tls_failed: u64,
    pub bad_frames: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
}

impl Status {
    /// Members of the set that are not connected (this node aside).
    pub fn missing_peers(&self) -> usize {
        self.members.saturating_sub(1).saturating_sub(self.peers.len())
    }

    /// Healthy: quorum met and every member connected.
    pub fn healthy(&self) -> bool {
        self.quorum.met && self.missing_peers() == 0
    }
}

pub fn build_status(id: NodeId, advertised: SocketAddr, network: &Network, peers: &Peers, tip: Tip) -> Status {
    let infos = peers.peers();
    let active = infos.len() + 1;
    let required = network.required();
    let c = peers.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let by_reason = |arr: &[std::sync::atomic::AtomicU64; 5]| {
        RejectReason::ALL
            .iter()
            .zip(arr.iter())
            .map(|(r, n)| (r.as_str().to_string(), load(n)))
            .collect::<BTreeMap<_, _>>()
    };
    Status {
        node_id: id.to_hex(),
        listen: advertised.to_string(),
        network: network.name.clone(),
        members: network.members.len(),
        height: tip.height,
        tip_hash: (tip.height > 0).then(|| hex(&tip.hash)),
        quorum: Quorum { active, required, met: active >= required },
        peers: infos
            .iter()
            .map(|p| PeerStatus {
                node_id: p.id.to_hex(),
                addr: p.addr.to_string(),
                direction: p.direction.as_str().to_string(),
                rtt_ms: (p.rtt.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                connected_secs: p.connected_for.as_secs(),
            })
            .collect(),
        counters: Counters {
            dials: load(&c.dials),
            handshakes_ok: load(&c.handshakes_ok),
            handshakes_failed: load(&c.handshakes_failed),
            duplicates_closed: load(&c.duplicates_closed),
            dial_failures: load(&c.dial_failures),
            handshake_timeouts: load(&c.handshake_timeouts),
            tls_refused: peers.tls_refused(),
            tls_failed: load(&c.tls_failed),
            bad_frames: load(&c.bad_frames),
            frames_sent: load(&c.frames_sent),
            frames_received: load(&c.frames_received),
        },
        rejects_sent: by_reason(&c.rejects_sent),
        rejects_received: by_reason(&c.rejects_received),
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<StatusSource>,
    pub store: Store,
    pub mempool: Arc<Mutex<Mempool>>,
    pub peers: Peers,
}

pub async fn serve(listener: tokio::net::TcpListener, state: AdminState, shutdown: CancellationToken) {
    let max_tx = lock(&state.mempool).limits().max_tx_bytes;
    let app = Router::new()
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .route("/blocks/{height}", get(block_handler))
        .route("/tx", post(tx_handler))
        .layer(DefaultBodyLimit::max(max_tx))
        .with_state(state);
    let result = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(e) = result {
        tracing::error!("admin API stopped: {e}");
    }
}

async fn status_handler(State(state): State<AdminState>) -> Json<Status> {
    Json(state.status.status())
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    let body = state.status.metrics();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Adds a transaction to the mempool and gossips it to every peer if it is new.
pub async fn submit_tx(mempool: &Mutex<Mempool>, peers: &Peers, tx: Vec<u8>) -> Result<Hash, AddError> {
    let (hash, new) = lock(mempool).add(tx.clone())?;
    if new {
        // Peers that miss it still see it in the block.
        let _ = peers.broadcast(&Message::Tx(tx)).await;
    }
    Ok(hash)
}

/// `GET /blocks/{height}`, as the contract gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockInfo {
    pub height: u64,
    pub hash: String,
    pub prev_hash: String,
    pub proposer: String,
    pub round: u32,
    pub timestamp_ms: u64,
    pub tx_count: usize,
    pub signers: Vec<String>,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

async fn block_handler(State(state): State<AdminState>, Path(height): Path<String>) -> Response {
    let Ok(height) = height.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "height must be a non-negative integer");
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.block(height)).await {
        Ok(Ok(Some(c))) => Json(BlockInfo {
            height: c.block.height(),
            hash: c.block.hash().to_hex(),
            prev_hash: c.block.header.prev_hash.to_hex(),
            proposer: c.block.header.proposer.to_hex(),
            round: c.block.header.round,
            timestamp_ms: c.block.header.timestamp_ms,
            tx_count: c.block.txs.len(),
            signers: c.cert.signers().iter().map(|s| s.to_hex()).collect(),
        })
        .into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no block at height {height}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `POST /tx`: 202 and the hash; 413 over the size limit (also enforced by the
/// body limit layer before the body is read); 429 when the mempool is full.
async fn tx_handler(State(state): State<AdminState>, body: Bytes) -> Response {
    match submit_tx(&state.mempool, &state.peers, body.to_vec()).await {
        Ok(hash) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "hash": hash.to_hex() }))).into_response(),
        Err(e @ AddError::TooLarge { .. }) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(e @ AddError::Full { .. }) => error(StatusCode::TOO_MANY_REQUESTS, e),
        Err(e @ AddError::Empty) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("{addr} answered {status}")]
    Http { addr: SocketAddr, status: String },
    #[error("{addr} sent a status that does not parse: {reason}")]
    Body { addr: SocketAddr, reason: String },
}

/// One HTTP/1.0 request (so the answer is never chunked); returns the status
/// code and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
        let head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).await.map_err(|e| unreachable(e.to_string()))?;
        // A server may answer (413) and close before reading a large body.
        let _ = stream.write_all(body).await;
        let mut response = Vec::new();
        stream.take(16 * 1024 * 1024).read_to_end(&mut response).await.map_err(|e| unreachable(e.to_string()))?;
        Ok::<_, ClientError>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("timed out after {timeout:?}")))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| unreachable("truncated HTTP response".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| unreachable(format!("bad status line {status_line:?}")))?;
    Ok((code, body.to_string()))
}

pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, ClientError> {
    let (code, body) = http_request(addr, "GET", path, b"", timeout).await?;
    if code != 200 {
        return Err(ClientError::Http { addr, status: format!("{code} {body}") });
    }
    Ok(body)
}

pub async fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<Status, ClientError> {
    let body = http_get(addr, "/status", timeout).await?;
    serde_json::from_str(&body).map_err(|e| ClientError::Body { addr, reason: e.to_string() })
}

/// The human form of a status, as `masternode status` prints it.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "node      {}", s.node_id);
    let _ = writeln!(out, "listen    {}", s.listen);
    let _ = writeln!(out, "network   {}", s.network);
    let _ = writeln!(out, "height    {} {}", s.height, s.tip_hash.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "quorum    {}/{} active, {} required: {}",
        s.quorum.active,
        s.members,
        s.quorum.required,
        if s.quorum.met { "met" } else { "NOT met" }
    );
    let _ = writeln!(out, "peers     {}/{}", s.peers.len(), s.members.saturating_sub(1));
    for p in &s.peers {
        let _ = writeln!(
            out,
            "  {}  {:<21} {:<8} rtt {:>7.3} ms  up {}s",
            &p.node_id[..16],
            p.addr,
            p.direction,
            p.rtt_ms,
            p.connected_secs
        );
    }
    let c = &s.counters;
    let _ = writeln!(
        out,
        "counters  dials {} handshakes ok {} failed {} duplicates closed {}",
        c.dials, c.handshakes_ok, c.handshakes_failed, c.duplicates_closed
    );
    out
}
