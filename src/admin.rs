//! The admin API: plain HTTP on a local address.
//!
//! `GET /status` returns the JSON object of the contract in DESIGN.md (the
//! liveness probe: it answers whenever the process runs); `GET /ready` the
//! readiness probe, 200 or 503 with the reason ([`ready`], [`crate::probe`]);
//! `GET /members` the member set and the changes collecting approvals;
//! `POST /members` asks this node to approve a change (signed with its key). The
//! same module holds the small client that `masternode status`, `members` and
//! `member` use.
//!
//! What the API trusts, and how a web page is kept out, is in [`guard`]; the
//! token in [`token`]; the connection budget and deadlines in [`server`].
//! Before a handler runs, every request passes the Host rule (421), every POST
//! the token while one is set (401), and each POST route its content type
//! (415), so nothing is queued or signed for a request refused.

pub mod guard;
pub mod ready;
pub mod server;
pub mod token;

pub use server::{AdminStats, LocalAddr};
pub use token::{AdminToken, TokenError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::chain::block::Hash;
use crate::chain::driver::{ChangeRequest, MembersView, Submitted};
use crate::chain::links::{Mailbox, MemberRequest, TxRequest};
use crate::chain::members::ChangeError;
use crate::chain::mempool::AddError;
use crate::chain::store::Store;
use crate::identity::NodeId;
use crate::status::{Status, StatusSource};

#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<StatusSource>,
    pub store: Store,
    /// The mempool's limit on one transaction: bodies over it are refused
    /// before they are read.
    pub max_tx_bytes: usize,
    /// The producer's channels: transactions and change requests go through it.
    pub producer: Mailbox,
    /// While set, every POST must carry it as a bearer token.
    pub token: Option<Arc<AdminToken>>,
    pub stats: Arc<AdminStats>,
}

pub async fn serve(listener: tokio::net::TcpListener, state: AdminState, shutdown: CancellationToken) {
    let stats = state.stats.clone();
    server::run(listener, router(state), stats, shutdown).await;
}

/// The routes, behind the Host rule and the token, each POST behind its
/// content type.
fn router(state: AdminState) -> Router {
    let max_tx = state.max_tx_bytes;
    let typed = |wanted: &'static str| {
        middleware::from_fn_with_state(state.clone(), move |s: State<AdminState>, r: Request, n: Next| {
            wants(wanted, s, r, n)
        })
    };
    Router::new()
        .route("/status", get(status_handler))
        .route("/ready", get(ready::ready_handler))
        .route("/metrics", get(metrics_handler))
        .route("/blocks/{height}", get(block_handler))
        .route("/tx", post(tx_handler).route_layer(typed(guard::OCTET_STREAM)))
        .route("/members", get(members_handler).merge(post(change_handler).route_layer(typed(guard::JSON))))
        .layer(DefaultBodyLimit::max(max_tx))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .with_state(state)
}

/// The Host rule for every request, then the token for every request that is
/// not a read.
async fn admit(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let local = request.extensions().get::<LocalAddr>().map(|l| l.0.ip());
    let host = request.headers().get(header::HOST).map(|v| v.as_bytes());
    // An absolute request target names the host too; both must be ours.
    let target = request.uri().authority().map(|a| a.as_str().as_bytes());
    let checked = guard::check_host(host, local).and_then(|()| match target {
        Some(t) => guard::check_host(Some(t), local),
        None => Ok(()),
    });
    if let Err(refused) = checked {
        let hint = match refused {
            guard::HostRefused::Name(_) => " (as a web page does after DNS rebinding)",
            _ => "",
        };
        report(&state.stats, refused.refusal(), format_args!("{refused}{hint}"));
        return closing(error(StatusCode::MISDIRECTED_REQUEST, refused));
    }
    let origin = request.headers().get(header::ORIGIN).map(|v| v.as_bytes());
    let site = request.headers().get("sec-fetch-site").map(|v| v.as_bytes());
    if let Err(refused) = guard::check_browser(origin, site) {
        report(&state.stats, guard::Refusal::Browser, &refused);
        return closing(error(StatusCode::FORBIDDEN, refused));
    }
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if let Some(token) = state.token.as_deref().filter(|_| !read) {
        let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if let Err(refused) = guard::check_token(token, authorization) {
            report(
                &state.stats,
                refused.refusal(),
                format_args!("{} {}: {refused}", request.method(), request.uri().path()),
            );
            let mut response = error(StatusCode::UNAUTHORIZED, refused);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return closing(response);
        }
    }
    next.run(request).await
}

/// A browser may send a cross-site form or text/plain body without asking
/// first, never one of the types a POST route here takes: the node queues and
/// signs only what a client that can set the type asked for.
async fn wants(wanted: &'static str, State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let value = request.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    if guard::has_content_type(value, wanted) {
        return next.run(request).await;
    }
    let message = format!("POST {} takes Content-Type: {wanted}", request.uri().path());
    report(&state.stats, guard::Refusal::ContentType, &message);
    closing(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message))
}

/// A refusal ends its connection: a client refused once is one that should
/// not keep a connection slot (a page retrying in a loop, a misconfigured
/// script); the CLI opens a connection per request anyway.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// Counts a refusal and logs it: the first of its reason at warn (the operator
/// should know), later ones at debug (a page can retry in a loop).
fn report(stats: &AdminStats, reason: guard::Refusal, what: impl std::fmt::Display) {
    if stats.refuse(reason) {
        tracing::warn!(
            reason = reason.as_str(),
            "admin API refused a request: {what}; later refusals for this reason are logged at debug"
        );
    } else {
        tracing::debug!(reason = reason.as_str(), "admin API refused a request: {what}");
    }
}

async fn status_handler(State(state): State<AdminState>) -> Json<Status> {
    Json(state.status.status())
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    let body = crate::metrics::render(&state.status);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Why a submitted transaction was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] AddError),
    #[error("the node is shutting down")]
    Stopped,
}

/// Hands a transaction to the producer, which adds it to the mempool and
/// gossips it to every peer if it is new, and waits for its verdict.
pub async fn submit_tx(txs: &tokio::sync::mpsc::Sender<TxRequest>, tx: Vec<u8>) -> Result<Hash, SubmitError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    txs.send(TxRequest { tx, reply }).await.map_err(|_| SubmitError::Stopped)?;
    Ok(answer.await.map_err(|_| SubmitError::Stopped)??)
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
/// body limit layer before the body is read); 429 when the mempool is full;
/// 503 while the node stops.
async fn tx_handler(State(state): State<AdminState>, body: Bytes) -> Response {
    match submit_tx(&state.producer.txs, body.to_vec()).await {
        Ok(hash) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "hash": hash.to_hex() }))).into_response(),
        Err(SubmitError::Refused(e @ AddError::TooLarge { .. })) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(SubmitError::Refused(e @ AddError::Full { .. })) => error(StatusCode::TOO_MANY_REQUESTS, e),
        Err(SubmitError::Refused(e @ AddError::Empty)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ SubmitError::Stopped) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /members`, as the contract gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MembersInfo {
    /// The tip's height; `members` is the set in force at the next height.
    pub height: u64,
    pub members: Vec<MemberEntry>,
    pub pending: Vec<PendingEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberEntry {
    pub node_id: String,
    pub addr: String,
    /// The first height it was a member at (0: the genesis set).
    pub since_height: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingEntry {
    /// `add`, `remove`, `set-addr` or `upgrade`.
    pub change: String,
    /// The member it is about; empty for an upgrade plan.
    pub node_id: String,
    #[serde(default)]
    pub addr: Option<String>,
    /// An upgrade plan's protocol version and the height it applies from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_height: Option<u64>,
    /// Members whose approvals count (on chain, or waiting for a block here).
    pub approvals: Vec<String>,
    pub required: usize,
    pub expires_at_height: u64,
}

pub fn members_info(view: &MembersView) -> MembersInfo {
    let m = &view.membership;
    MembersInfo {
        height: m.applied(),
        members: m
            .current()
            .iter()
            .map(|(id, info)| MemberEntry {
                node_id: id.to_hex(),
                addr: info.addr.to_string(),
                since_height: info.since,
            })
            .collect(),
        pending: view
            .pending()
            .into_iter()
            .map(|p| PendingEntry {
                change: p.change.kind().to_string(),
                node_id: p.change.subject().map(|id| id.to_hex()).unwrap_or_default(),
                addr: p.change.addr().map(|a| a.to_string()),
                version: p.change.plan().map(|plan| plan.version),
                activation_height: p.change.plan().map(|plan| plan.height),
                approvals: p.approvals.iter().map(|a| a.to_hex()).collect(),
                required: p.required,
                expires_at_height: p.expires_at,
            })
            .collect(),
    }
}

async fn members_handler(State(state): State<AdminState>) -> Json<MembersInfo> {
    Json(members_info(&state.status.members()))
}

/// `POST /members`'s body: `{"change": "add", "id": HEX, "addr": "ip:port"}`,
/// `{"change": "remove", "id": HEX}` or `{"change": "set-addr", "addr": "ip:port"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeBody {
    pub change: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

/// `POST /members`'s answer once the node signed and accepted its approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeAccepted {
    pub change: String,
    pub node_id: String,
    #[serde(default)]
    pub addr: Option<String>,
    pub approvals: usize,
    pub required: usize,
    pub expires_at_height: u64,
}

impl ChangeBody {
    pub fn request(&self) -> Result<ChangeRequest, String> {
        let id = || -> Result<NodeId, String> {
            let hex = self.id.as_deref().ok_or("\"id\" is required")?;
            let id = NodeId::from_hex(hex).map_err(|_| format!("id {hex:?} is not 64 hex characters"))?;
            id.verifying_key().ok_or(format!("id {hex} is not an ed25519 public key"))?;
            Ok(id)
        };
        let addr = || -> Result<SocketAddr, String> {
            let text = self.addr.as_deref().ok_or("\"addr\" is required")?;
            text.parse().map_err(|_| format!("addr {text:?} is not ip:port"))
        };
        match self.change.as_str() {
            "add" => Ok(ChangeRequest::Add { id: id()?, addr: addr()? }),
            "remove" => Ok(ChangeRequest::Remove { id: id()? }),
            "set-addr" => Ok(ChangeRequest::SetAddr { addr: addr()? }),
            other => Err(format!("change {other:?} is not one of add, remove, set-addr")),
        }
    }
}

/// Why a change request came to nothing.
#[derive(Debug, thiserror::Error)]
pub enum ChangeRequestError {
    #[error("refused: {0}")]
    Refused(#[from] ChangeError),
    #[error("the node is shutting down")]
    Stopped,
}

/// Hands a change to the producer and waits for its verdict.
pub async fn request_change(
    requests: &tokio::sync::mpsc::Sender<MemberRequest>,
    request: ChangeRequest,
) -> Result<Submitted, ChangeRequestError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    requests.send(MemberRequest { request, reply }).await.map_err(|_| ChangeRequestError::Stopped)?;
    Ok(answer.await.map_err(|_| ChangeRequestError::Stopped)??)
}

async fn change_handler(State(state): State<AdminState>, body: Bytes) -> Response {
    let parsed: ChangeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not a change: {e}")),
    };
    let request = match parsed.request() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match request_change(&state.producer.member_requests, request).await {
        Ok(s) => {
            let accepted = ChangeAccepted {
                change: s.change.kind().to_string(),
                node_id: s.change.subject().map(|id| id.to_hex()).unwrap_or_default(),
                addr: s.change.addr().map(|a| a.to_string()),
                approvals: s.approvals,
                required: s.required,
                expires_at_height: s.expires_at,
            };
            (StatusCode::ACCEPTED, Json(accepted)).into_response()
        }
        Err(ChangeRequestError::Refused(e)) => {
            (StatusCode::CONFLICT, Json(serde_json::json!({ "error": e.to_string(), "reason": e.reason() })))
                .into_response()
        }
        Err(e @ ChangeRequestError::Stopped) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

pub async fn fetch_members(addr: SocketAddr, timeout: Duration) -> Result<MembersInfo, ClientError> {
    let body = http_get(addr, "/members", timeout).await?;
    serde_json::from_str(&body).map_err(|e| ClientError::Body { addr, reason: e.to_string() })
}

/// Posts a change, with the admin token if the node wants one; the node's
/// answer, or its one-line refusal.
pub async fn post_change(
    addr: SocketAddr,
    change: &ChangeBody,
    token: Option<&AdminToken>,
    timeout: Duration,
) -> Result<ChangeAccepted, ClientError> {
    let body = serde_json::to_vec(change).unwrap_or_default();
    let request = HttpRequest { token, ..HttpRequest::post("/members", guard::JSON, &body) };
    let (code, text) = send(addr, &request, timeout).await?;
    if code != 202 {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        return Err(ClientError::Http { addr, code, message });
    }
    serde_json::from_str(&text).map_err(|e| ClientError::Body { addr, reason: e.to_string() })
}

/// The human form of `/members`, as `masternode members` prints it.
pub fn render_members(m: &MembersInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} member(s) at height {}", m.members.len(), m.height + 1);
    for e in &m.members {
        let _ = writeln!(out, "  {}  {:<24} since height {}", e.node_id, e.addr, e.since_height);
    }
    if m.pending.is_empty() {
        let _ = writeln!(out, "no pending changes");
    }
    for p in &m.pending {
        let what = match (p.version, p.activation_height) {
            (Some(v), Some(h)) => format!("upgrade to protocol {v} at height {h}"),
            _ => format!(
                "{} {}{}",
                p.change,
                p.node_id,
                p.addr.as_deref().map(|a| format!(" at {a}")).unwrap_or_default()
            ),
        };
        let _ = writeln!(
            out,
            "pending   {what}: {} of {} approvals, expires at height {}",
            p.approvals.len(),
            p.required,
            p.expires_at_height
        );
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("{addr} answered {code}: {message}")]
    Http { addr: SocketAddr, code: u16, message: String },
    #[error("{addr} sent a status that does not parse: {reason}")]
    Body { addr: SocketAddr, reason: String },
}

/// One HTTP/1.0 request (so the answer is never chunked) with neither a
/// content type nor a token; returns the status code and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    send(addr, &HttpRequest { method, path, content_type: None, token: None, body }, timeout).await
}

/// `POST /tx` with the raw transaction (and the admin token, if given); the
/// status code and the body.
pub async fn post_tx(
    addr: SocketAddr,
    tx: &[u8],
    token: Option<&AdminToken>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    send(addr, &HttpRequest { token, ..HttpRequest::post("/tx", guard::OCTET_STREAM, tx) }, timeout).await
}

/// A request as the client sends it. `Host` is always the address it connects
/// to, which the node accepts when that is the address it listens on.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub token: Option<&'a AdminToken>,
    pub body: &'a [u8],
}

impl<'a> HttpRequest<'a> {
    pub fn post(path: &'a str, content_type: &'a str, body: &'a [u8]) -> Self {
        HttpRequest { method: "POST", path, content_type: Some(content_type), token: None, body }
    }
}

/// Sends one HTTP/1.0 request; the status code and the body.
pub async fn send(
    addr: SocketAddr,
    request: &HttpRequest<'_>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let HttpRequest { method, path, content_type, token, body } = *request;
    let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
        let typed = content_type.map(|t| format!("Content-Type: {t}\r\n")).unwrap_or_default();
        let authorized = token.map(|t| format!("Authorization: {}\r\n", t.authorization())).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{typed}{authorized}Content-Length: {}\r\n\r\n",
            body.len()
        );
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
        return Err(ClientError::Http { addr, code, message: body });
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
    let age = s.last_block_age_secs.map_or("no block yet".to_string(), |a| format!("last block {a:.1} s ago"));
    let _ = writeln!(out, "round     {} at height {}, {age}", s.round, s.height + 1);
    let sync = match (s.sync.syncing, s.sync.best_peer_tip) {
        (true, Some(best)) => format!("catching up: {} of {best} ({} behind)", s.height, best.saturating_sub(s.height)),
        (_, Some(best)) => format!("up to date (best peer tip {best})"),
        (_, None) => "up to date (no peer tip known)".to_string(),
    };
    let _ = writeln!(out, "sync      {sync}");
    let clock = s.clock_offset_ms.map_or("offset unknown (no proposal from a peer yet)".to_string(), |o| {
        format!("{:+.3} s from the peers' median", o as f64 / 1000.0)
    });
    let _ = writeln!(out, "clock     {clock}");
    let _ = writeln!(
        out,
        "quorum    {}/{} active, {} required: {}",
        s.quorum.active,
        s.members,
        s.quorum.required,
        if s.quorum.met { "met" } else { "NOT met" }
    );
    let _ = writeln!(out, "peers     {}/{}", s.peers.len(), s.members.saturating_sub(s.member as usize));
    for p in &s.pending_changes {
        let _ = writeln!(
            out,
            "pending   {} {}{}: {} of {} approvals, expires at height {}",
            p.change,
            &p.node_id[..16.min(p.node_id.len())],
            p.addr.as_deref().map(|a| format!(" at {a}")).unwrap_or_default(),
            p.approvals,
            p.required,
            p.expires_at_height
        );
    }
    for p in &s.peers {
        let _ = writeln!(
            out,
            "  {}  {:<21} {:<8} rtt {:>7.3} ms  up {}s  queued {} B",
            &p.node_id[..16],
            p.addr,
            p.direction,
            p.rtt_ms,
            p.connected_secs,
            p.outbox_bytes
        );
    }
    let c = &s.counters;
    let _ = writeln!(
        out,
        "counters  dials {} handshakes ok {} failed {} duplicates closed {}",
        c.dials, c.handshakes_ok, c.handshakes_failed, c.duplicates_closed
    );
    let dropped: u64 = c.outbox_dropped.values().sum();
    if c.slow_peer_disconnects > 0 || dropped > 0 {
        let _ = writeln!(
            out,
            "slow      {} peer(s) disconnected as too slow, {} frame(s) dropped from full outboxes",
            c.slow_peer_disconnects, dropped
        );
    }
    for w in &s.warnings {
        let _ = writeln!(out, "WARNING   {w}");
    }
    out
}
