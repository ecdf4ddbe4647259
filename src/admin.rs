//! The admin API: plain HTTP on a local address.
//!
//! `GET /status` returns the JSON object of the contract in DESIGN.md (the
//! liveness probe: it answers whenever the process runs); `GET /ready` the
//! readiness probe, 200 or 503 with the reason ([`ready`], [`crate::probe`]);
//! `GET /members` the member set and the changes collecting approvals;
//! `POST /members` asks this node to approve a change (signed with its key);
//! `GET /upgrade` the protocol versions (in force, scheduled, collecting
//! approvals) and `POST /upgrade` asks this node to approve an upgrade plan.
//! The same module holds the small client that `masternode status`, `members`,
//! `member` and `upgrade` use.
//!
//! What the API trusts, and how a web page is kept out, is in [`guard`]; the
//! token in [`token`]; the connection budget and deadlines in [`server`].
//! Before a handler runs, every request passes the Host rule (421), every POST
//! the token while one is set (401), and each POST route its content type
//! (415), so nothing is queued or signed for a request refused.

pub(crate) mod guard;
mod metrics;
pub(crate) mod ready;
pub(crate) mod server;
pub(crate) mod token;

pub(crate) use metrics::render as render_metrics;
pub use ready::{fetch_readiness, fetch_stop_verdict};
pub(crate) use server::{AdminStats, LocalAddr};
pub use server::{HEADER_TIMEOUT, MAX_CONNECTIONS};
pub use token::AdminToken;
pub(crate) use token::TokenError;

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
pub(crate) struct AdminState {
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

pub(crate) async fn serve(listener: tokio::net::TcpListener, state: AdminState, shutdown: CancellationToken) {
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
        .route("/upgrade", get(upgrade_handler).merge(post(upgrade_post_handler).route_layer(typed(guard::JSON))))
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
    let body = metrics::render(&state.status, &state.stats);
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
pub(crate) async fn submit_tx(txs: &tokio::sync::mpsc::Sender<TxRequest>, tx: Vec<u8>) -> Result<Hash, SubmitError> {
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
    let read = move || store.block(height).and_then(|c| Ok((c, store.earliest()?)));
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok((Some(c), _))) => Json(BlockInfo {
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
        Ok(Ok((None, earliest))) if height > 0 && height < earliest => error(
            StatusCode::NOT_FOUND,
            format!("block {height} was pruned: this node holds heights from {earliest} (retain_blocks)"),
        ),
        Ok(Ok((None, _))) => error(StatusCode::NOT_FOUND, format!("no block at height {height}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `POST /tx`: 202 and the hash; 200 with the hash and the height of its
/// block when a recent block already committed it (a client's retry learns
/// that it is done, and it is not taken again); 413 over the size limit (also
/// enforced by the body limit layer before the body is read); 429 when the
/// mempool is full; 503 while the node stops.
async fn tx_handler(State(state): State<AdminState>, body: Bytes) -> Response {
    match submit_tx(&state.producer.txs, body.to_vec()).await {
        Ok(hash) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "hash": hash.to_hex() }))).into_response(),
        Err(SubmitError::Refused(AddError::Committed { id, height })) => {
            let answer = serde_json::json!({ "hash": id.to_hex(), "committed_height": height });
            (StatusCode::OK, Json(answer)).into_response()
        }
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

pub(crate) fn members_info(view: &MembersView) -> MembersInfo {
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
pub(crate) async fn request_change(
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

/// `GET /upgrade`: the protocol versions of the chain as this node sees them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpgradeStatus {
    /// The tip's height.
    pub height: u64,
    /// The protocol version of the tip's block.
    pub version: u16,
    /// The protocol version of the next height.
    pub next_version: u16,
    /// The highest protocol version this node's binary runs.
    pub max_version: u16,
    /// Heights of notice a plan needs: it completes only in a block at least
    /// this many heights before its own.
    pub notice: u64,
    /// Whether every other member of the set in force is connected to this
    /// node at a wire version that decodes a plan's approvals: proposers put
    /// them in blocks only then.
    pub wire_ready: bool,
    /// Plans completed on chain, in height order.
    pub schedule: Vec<PlanStatus>,
    /// Plans collecting approvals (on chain, or waiting here for a block).
    pub pending: Vec<PlanStatus>,
}

/// One upgrade plan, scheduled or collecting approvals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanStatus {
    pub version: u16,
    pub height: u64,
    /// Whether this node's binary runs the plan's version (if not, the node
    /// stops before the height).
    pub can_run: bool,
    /// See [`UpgradeStatus::wire_ready`].
    pub wire_ready: bool,
    /// A scheduled plan: whether its height has come (it applies at the next
    /// height or applied earlier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<bool>,
    /// A pending plan: members whose approvals count, how many it needs, and
    /// the height after which the first of them expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_height: Option<u64>,
}

/// `/upgrade` of `view`, for a node running up to `max_version` whose
/// connected peers speak `wire`.
pub(crate) fn upgrade_status(
    view: &MembersView,
    me: NodeId,
    max_version: u16,
    wire: &std::collections::BTreeMap<NodeId, u16>,
) -> UpgradeStatus {
    use crate::chain::members::{may_carry_plans, UPGRADE_NOTICE};
    let m = &view.membership;
    let height = m.applied();
    let wire_ready = may_carry_plans(m.current(), me, wire);
    let plan = |version: u16, at: u64| PlanStatus {
        version,
        height: at,
        can_run: version <= max_version,
        wire_ready,
        in_force: None,
        approvals: None,
        required: None,
        expires_at_height: None,
    };
    UpgradeStatus {
        height,
        version: m.version_at(height),
        next_version: m.version_at(height + 1),
        max_version,
        notice: UPGRADE_NOTICE,
        wire_ready,
        schedule: m
            .schedule()
            .iter()
            .map(|p| PlanStatus { in_force: Some(p.height <= height + 1), ..plan(p.version, p.height) })
            .collect(),
        pending: view
            .pending()
            .into_iter()
            .filter_map(|p| {
                let c = p.change.plan()?;
                Some(PlanStatus {
                    approvals: Some(p.approvals.iter().map(|a| a.to_hex()).collect()),
                    required: Some(p.required),
                    expires_at_height: Some(p.expires_at),
                    ..plan(c.version, c.height)
                })
            })
            .collect(),
    }
}

async fn upgrade_handler(State(state): State<AdminState>) -> Json<UpgradeStatus> {
    let source = &state.status;
    let wire = source.peers().wire_versions();
    Json(upgrade_status(&source.members(), source.id(), source.max_version(), &wire))
}

/// `POST /upgrade`'s body: the plan to approve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpgradeBody {
    pub version: u16,
    pub height: u64,
}

/// `POST /upgrade`'s answer once the node signed and accepted its approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpgradeAccepted {
    pub version: u16,
    pub height: u64,
    pub approvals: usize,
    pub required: usize,
    pub expires_at_height: u64,
}

async fn upgrade_post_handler(State(state): State<AdminState>, body: Bytes) -> Response {
    let UpgradeBody { version, height } = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not {{\"version\", \"height\"}}: {e}")),
    };
    let request = ChangeRequest::Upgrade { version, height };
    match request_change(&state.producer.member_requests, request).await {
        Ok(s) => {
            let accepted = UpgradeAccepted {
                version,
                height,
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

pub async fn fetch_upgrade(addr: SocketAddr, timeout: Duration) -> Result<UpgradeStatus, ClientError> {
    let body = http_get(addr, "/upgrade", timeout).await?;
    serde_json::from_str(&body).map_err(|e| ClientError::Body { addr, reason: e.to_string() })
}

/// Posts an upgrade plan's approval, with the admin token if the node wants
/// one; the node's answer, or its one-line refusal.
pub async fn post_upgrade(
    addr: SocketAddr,
    plan: UpgradeBody,
    token: Option<&AdminToken>,
    timeout: Duration,
) -> Result<UpgradeAccepted, ClientError> {
    let body = serde_json::to_vec(&plan).unwrap_or_default();
    let request = HttpRequest { token, ..HttpRequest::post("/upgrade", guard::JSON, &body) };
    let (code, text) = send(addr, &request, timeout).await?;
    if code != 202 {
        return Err(ClientError::Http { addr, code, message: refusal_message(text) });
    }
    serde_json::from_str(&text).map_err(|e| ClientError::Body { addr, reason: e.to_string() })
}

/// Whether `plan` is worth asking the node to sign, as `/upgrade` (`now`)
/// shows the chain: its version above every version scheduled, its height
/// after every scheduled plan's and at least [`UpgradeStatus::notice`]
/// heights after the next block; `proposing` a plan nobody proposed yet,
/// approving one collecting approvals. The one line says why not.
pub fn check_plan(now: &UpgradeStatus, plan: UpgradeBody, proposing: bool) -> Result<(), String> {
    let UpgradeBody { version, height } = plan;
    let (latest_version, latest_height) =
        now.schedule.last().map_or((crate::chain::members::GENESIS_VERSION, 0), |p| (p.version, p.height));
    if version <= latest_version {
        return Err(match now.schedule.last() {
            Some(p) => format!(
                "protocol {version} is not above protocol {}, the latest scheduled (from height {})",
                p.version, p.height
            ),
            None => format!("protocol {version} is not above protocol {latest_version}, the chain's from genesis"),
        });
    }
    if height <= latest_height {
        return Err(format!("height {height} is not after height {latest_height}, the latest plan's"));
    }
    let earliest = now.height + 1 + now.notice;
    if height < earliest {
        return Err(format!(
            "height {height} is too near: the chain is at height {} and a plan must complete at least {} heights \
             before its height; name height {earliest} or later, with room for the other members to approve it",
            now.height, now.notice
        ));
    }
    let pending = now.pending.iter().find(|p| p.version == version && p.height == height);
    match (proposing, pending) {
        (true, Some(p)) => Err(format!(
            "protocol {version} at height {height} is proposed already ({} of {} approvals): approve it with \
             `masternode upgrade approve --version {version} --height {height}`",
            p.approvals.as_ref().map_or(0, |a| a.len()),
            p.required.unwrap_or(0)
        )),
        (false, None) => Err(format!(
            "no plan for protocol {version} at height {height} is collecting approvals at this node: \
             `masternode upgrade propose --version {version} --height {height}` starts one (or wait until the \
             proposer's approval reaches this node)"
        )),
        _ => Ok(()),
    }
}

/// The sentence of a refusal and, when it has one, its typed reason: what
/// scripts match on.
fn refusal_message(text: String) -> String {
    let answer = serde_json::from_str::<serde_json::Value>(&text).ok();
    let field = |name: &str| answer.as_ref().and_then(|v| v.get(name)?.as_str().map(str::to_string));
    match (field("error"), field("reason")) {
        (Some(error), Some(reason)) => format!("{error} (reason: {reason})"),
        (Some(error), None) => error,
        _ => text,
    }
}

/// The human form of `/upgrade`, as `masternode upgrade status` prints it.
pub fn render_upgrade(u: &UpgradeStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "height    {}", u.height);
    let next = if u.next_version != u.version {
        format!(", protocol {} from height {}", u.next_version, u.height + 1)
    } else {
        String::new()
    };
    let _ = writeln!(out, "protocol  {} in force{next}; this binary runs up to protocol {}", u.version, u.max_version);
    let wire = if u.wire_ready {
        "every member is connected at wire 4 or later: proposers carry plans".to_string()
    } else {
        "not every member is connected at wire 4 or later (a node of 0.1.0, or one away): proposers carry no plan \
         until they are"
            .to_string()
    };
    let _ = writeln!(out, "wire      {wire}");
    if u.schedule.is_empty() && u.pending.is_empty() {
        let _ = writeln!(out, "no upgrade plans");
    }
    for p in &u.schedule {
        let when = if p.in_force == Some(true) {
            "in force".to_string()
        } else {
            format!("in {} blocks", p.height.saturating_sub(u.height + 1))
        };
        let run = if p.can_run {
            String::new()
        } else {
            format!(
                "; this binary cannot run it: install a release that runs protocol {} before height {}, or this node \
                 stops there",
                p.version, p.height
            )
        };
        let _ = writeln!(out, "scheduled protocol {} from height {}: {when}{run}", p.version, p.height);
    }
    for p in &u.pending {
        let approvals = p.approvals.as_ref().map_or(0, |a| a.len());
        let run = if p.can_run { "" } else { "; this binary cannot run it" };
        let _ = writeln!(
            out,
            "pending   protocol {} at height {}: {approvals} of {} approvals, expires at height {}; the last block \
             that can complete it is {}{run}",
            p.version,
            p.height,
            p.required.unwrap_or(0),
            p.expires_at_height.unwrap_or(0),
            p.height.saturating_sub(u.notice),
        );
    }
    out
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
        return Err(ClientError::Http { addr, code, message: refusal_message(text) });
    }
    serde_json::from_str(&text).map_err(|e| ClientError::Body { addr, reason: e.to_string() })
}

/// The human form of `/members`, as `masternode members` prints it.
pub fn render_members(m: &MembersInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "height    {}", m.height);
    let _ = writeln!(out, "members   {}, the set in force after height {}", m.members.len(), m.height);
    for e in &m.members {
        let _ = writeln!(out, "  {}  {:<24} since height {}", e.node_id, e.addr, e.since_height);
    }
    if m.pending.is_empty() {
        let _ = writeln!(out, "no pending changes");
    }
    for p in &m.pending {
        let mut line = match (p.version, p.activation_height) {
            (Some(v), Some(h)) => format!(
                "upgrade to protocol {v} at height {h}: {} of {} approvals, expires at height {}",
                p.approvals.len(),
                p.required,
                p.expires_at_height
            ),
            _ => pending_line(
                &p.change,
                &p.node_id,
                p.addr.as_deref(),
                p.approvals.len(),
                p.required,
                p.expires_at_height,
            ),
        };
        if let Some(now) = m.members.iter().find(|e| e.node_id == p.node_id && p.change == "set-addr") {
            let _ = write!(line, "; in force: {}", now.addr);
        }
        let _ = writeln!(out, "pending   {line}");
    }
    out
}

/// One change collecting approvals. A `set-addr` needs no approvals: it waits
/// only for a block, and is in force two blocks after it, so the line says
/// that rather than "1 of 1", which reads as done.
fn pending_line(change: &str, id: &str, addr: Option<&str>, approvals: usize, required: usize, expires: u64) -> String {
    match (change, addr) {
        ("set-addr", Some(addr)) => {
            format!("set-addr {id} to {addr}: not in force yet (two blocks after a block carries it)")
        }
        _ => format!(
            "{change} {id}{}: {approvals} of {required} approvals, expires at height {expires}",
            addr.map(|a| format!(" at {a}")).unwrap_or_default()
        ),
    }
}

/// Whether two `ip:port` texts name one address (IPv4-mapped as IPv4).
fn same_addr(a: &str, b: &str) -> bool {
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(a), Ok(b)) => crate::net::canonical(a) == crate::net::canonical(b),
        _ => a == b,
    }
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
pub(crate) struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub token: Option<&'a AdminToken>,
    pub body: &'a [u8],
}

impl<'a> HttpRequest<'a> {
    pub(crate) fn post(path: &'a str, content_type: &'a str, body: &'a [u8]) -> Self {
        HttpRequest { method: "POST", path, content_type: Some(content_type), token: None, body }
    }
}

/// Sends one HTTP/1.0 request; the status code and the body.
pub(crate) async fn send(
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

/// Bytes as an operator reads them: `812 B`, `4.2 MiB`, `1.07 GiB`.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The human form of a status, as `masternode status` prints it.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "node      {}", s.node_id);
    // Where peers dial, and where the socket is when that is elsewhere.
    let bound = s.bound.as_deref().filter(|b| !same_addr(b, &s.listen)).map(|b| format!(" (bound {b})"));
    let _ = writeln!(out, "listen    {}{}", s.listen, bound.unwrap_or_default());
    let member = match (s.member, s.removed_at_height) {
        (true, _) => format!("true, one of {}", s.members),
        (false, None) => "false: a joiner, accepted once its add is in force".to_string(),
        (false, Some(h)) => format!("false: removed at height {h}"),
    };
    let _ = writeln!(out, "member    {member}");
    let _ = writeln!(out, "network   {}", s.network);
    let _ = writeln!(out, "height    {} {}", s.height, s.tip_hash.as_deref().unwrap_or("-"));
    let age = s.last_block_age_secs.map_or("no block yet".to_string(), |a| format!("last block {a:.1} s ago"));
    let _ = writeln!(out, "round     {} at height {}, {age}", s.round, s.height + 1);
    let disk = s.data_dir_bytes.map_or(String::new(), |b| format!(", data dir {}", human_bytes(b)));
    let held = match s.height {
        0 => "none yet".to_string(),
        h => format!("{}..{h} held", s.earliest_height),
    };
    let _ = writeln!(out, "blocks    {held}{disk}");
    let sync = match (s.sync.syncing, s.sync.best_peer_tip) {
        (true, Some(best)) => format!("catching up: {} of {best} ({} behind)", s.height, best.saturating_sub(s.height)),
        (_, Some(best)) => format!("up to date (best peer tip {best})"),
        (_, None) if s.member && s.members <= 1 => "up to date (the only member)".to_string(),
        (_, None) if s.peers.is_empty() => "unknown: no peer connected to compare with".to_string(),
        (_, None) => "up to date (no peer has a block yet)".to_string(),
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
    if let Some(held) = &s.signing_held {
        let _ = writeln!(out, "signing   held: {held}");
    }
    let _ = writeln!(out, "peers     {}/{}", s.peers.len(), s.members.saturating_sub(s.member as usize));
    for p in &s.pending_changes {
        let id = &p.node_id[..16.min(p.node_id.len())];
        let _ = writeln!(
            out,
            "pending   {}",
            pending_line(&p.change, id, p.addr.as_deref(), p.approvals, p.required, p.expires_at_height)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Counters, SyncStatus};

    fn joiner_status() -> Status {
        Status {
            node_id: "ab".repeat(32),
            listen: "127.0.0.5:24100".into(),
            bound: Some("127.0.0.5:24100".into()),
            network: "devnet".into(),
            members: 4,
            member: false,
            removed_at_height: None,
            pending_changes: vec![],
            height: 0,
            tip_hash: None,
            quorum: crate::chain::quorum::Quorum { active: 0, required: 3, met: false },
            peers: vec![],
            counters: Counters::default(),
            rejects_sent: Default::default(),
            rejects_received: Default::default(),
            last_block_timestamp_ms: None,
            last_block_age_secs: None,
            round: 0,
            sync: SyncStatus::default(),
            clock_offset_ms: None,
            warnings: vec![],
            signing_held: None,
            earliest_height: 1,
            data_dir_bytes: None,
        }
    }

    fn line<'a>(text: &'a str, field: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} line in\n{text}"))
    }

    #[test]
    fn a_joiner_status_says_member_false_and_claims_no_sync_state() {
        let text = render_status(&joiner_status());
        assert_eq!(line(&text, "member "), "member    false: a joiner, accepted once its add is in force");
        assert_eq!(line(&text, "sync "), "sync      unknown: no peer connected to compare with");
        assert_eq!(line(&text, "listen "), "listen    127.0.0.5:24100", "bound where the set has it");
        let removed = Status { removed_at_height: Some(40), height: 45, ..joiner_status() };
        assert_eq!(line(&render_status(&removed), "member "), "member    false: removed at height 40");
        let member = Status { member: true, ..joiner_status() };
        assert_eq!(line(&render_status(&member), "member "), "member    true, one of 4");
    }

    #[test]
    fn status_text_names_the_heights_held_and_the_data_dir_size() {
        let pruned = Status { height: 5_000, earliest_height: 4_901, data_dir_bytes: Some(5 << 20), ..joiner_status() };
        assert_eq!(line(&render_status(&pruned), "blocks "), "blocks    4901..5000 held, data dir 5.0 MiB");
        let old = Status { height: 7, data_dir_bytes: None, ..joiner_status() };
        assert_eq!(line(&render_status(&old), "blocks "), "blocks    1..7 held", "a node that does not say");
        let empty = Status { height: 0, data_dir_bytes: Some(40_960), ..joiner_status() };
        assert_eq!(line(&render_status(&empty), "blocks "), "blocks    none yet, data dir 40.0 KiB");
        assert_eq!(human_bytes(812), "812 B");
    }

    #[test]
    fn status_shows_the_bound_address_beside_the_one_peers_dial() {
        let moved = Status { bound: Some("127.0.0.9:24100".into()), ..joiner_status() };
        assert_eq!(line(&render_status(&moved), "listen "), "listen    127.0.0.5:24100 (bound 127.0.0.9:24100)");
        let mapped = Status { bound: Some("[::ffff:127.0.0.5]:24100".into()), ..joiner_status() };
        assert_eq!(line(&render_status(&mapped), "listen "), "listen    127.0.0.5:24100");
    }

    fn upgrade_now(height: u64, schedule: &[(u16, u64)], pending: &[(u16, u64)]) -> UpgradeStatus {
        let plan = |(version, at): &(u16, u64)| PlanStatus {
            version: *version,
            height: *at,
            can_run: *version <= 4,
            wire_ready: true,
            in_force: None,
            approvals: None,
            required: None,
            expires_at_height: None,
        };
        UpgradeStatus {
            height,
            version: 3,
            next_version: 3,
            max_version: 4,
            notice: 20,
            wire_ready: true,
            schedule: schedule.iter().map(|p| PlanStatus { in_force: Some(false), ..plan(p) }).collect(),
            pending: pending
                .iter()
                .map(|p| PlanStatus {
                    approvals: Some(vec!["ab".repeat(32)]),
                    required: Some(3),
                    expires_at_height: Some(1_100),
                    ..plan(p)
                })
                .collect(),
        }
    }

    #[test]
    fn the_upgrade_cli_refuses_before_signing_a_plan_the_chain_would_refuse_or_the_verb_does_not_fit() {
        let body = |version, height| UpgradeBody { version, height };
        let fresh = upgrade_now(100, &[], &[]);
        let scheduled = upgrade_now(100, &[(4, 200)], &[(5, 400)]);
        // (what, status, plan, proposing, the refusal's start)
        let table: Vec<(&str, &UpgradeStatus, UpgradeBody, bool, Option<&str>)> = vec![
            ("a new plan far enough ahead", &fresh, body(4, 121), true, None),
            (
                "one height too near",
                &fresh,
                body(4, 120),
                true,
                Some("height 120 is too near: the chain is at height 100"),
            ),
            ("the genesis version", &fresh, body(3, 500), true, Some("protocol 3 is not above protocol 3")),
            (
                "the version scheduled",
                &scheduled,
                body(4, 500),
                true,
                Some("protocol 4 is not above protocol 4, the latest scheduled (from height 200)"),
            ),
            ("before the scheduled plan", &scheduled, body(6, 150), true, Some("height 150 is not after height 200")),
            (
                "proposing one proposed already",
                &scheduled,
                body(5, 400),
                true,
                Some("protocol 5 at height 400 is proposed already (1 of 3 approvals): approve it"),
            ),
            ("approving one that is pending", &scheduled, body(5, 400), false, None),
            (
                "approving one nobody proposed",
                &scheduled,
                body(6, 500),
                false,
                Some("no plan for protocol 6 at height 500 is collecting approvals"),
            ),
        ];
        for (what, now, plan, proposing, want) in table {
            match (check_plan(now, plan, proposing), want) {
                (Ok(()), None) => {}
                (Err(e), Some(start)) => assert!(e.starts_with(start), "{what}: {e}"),
                (got, want) => panic!("{what}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn upgrade_status_shows_what_this_binary_runs_and_when_it_stops() {
        let mut u = upgrade_now(150, &[(4, 100), (5, 200)], &[(6, 900)]);
        u.version = 4;
        u.next_version = 4;
        u.schedule[0].in_force = Some(true);
        u.wire_ready = false;
        let text = render_upgrade(&u);
        assert_eq!(line(&text, "protocol "), "protocol  4 in force; this binary runs up to protocol 4");
        assert!(line(&text, "wire ").contains("proposers carry no plan until they are"), "{text}");
        assert_eq!(line(&text, "scheduled protocol 4"), "scheduled protocol 4 from height 100: in force");
        let stop = line(&text, "scheduled protocol 5");
        assert!(
            stop.starts_with("scheduled protocol 5 from height 200: in 49 blocks; this binary cannot run it"),
            "{stop}"
        );
        let pending = line(&text, "pending ");
        assert!(pending.contains("protocol 6 at height 900: 1 of 3 approvals, expires at height 1100"), "{pending}");
        assert!(pending.contains("the last block that can complete it is 880"), "{pending}");
        let json = serde_json::to_value(&u).unwrap();
        for field in ["height", "version", "next_version", "max_version", "notice", "wire_ready", "schedule", "pending"]
        {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
        assert_eq!(json["schedule"][1]["can_run"], false);
        assert_eq!(json["pending"][0]["required"], 3);
    }

    #[test]
    fn members_says_the_height_the_json_says_and_a_move_is_not_taken_for_done() {
        let m = MembersInfo {
            height: 12,
            members: vec![MemberEntry { node_id: "cd".repeat(32), addr: "127.0.0.3:24100".into(), since_height: 0 }],
            pending: vec![PendingEntry {
                change: "set-addr".into(),
                node_id: "cd".repeat(32),
                addr: Some("127.0.0.9:24100".into()),
                approvals: vec!["cd".repeat(32)],
                required: 1,
                expires_at_height: 1012,
                version: None,
                activation_height: None,
            }],
        };
        let text = render_members(&m);
        assert_eq!(line(&text, "height "), "height    12");
        assert!(!text.contains("13"), "no other height than the JSON's: {text}");
        let pending = line(&text, "pending ");
        assert!(pending.contains("to 127.0.0.9:24100: not in force yet"), "{pending}");
        assert!(pending.ends_with("in force: 127.0.0.3:24100"), "{pending}");
        assert!(!pending.contains("1 of 1"), "{pending}");
        let status = Status {
            pending_changes: vec![crate::status::PendingChange {
                change: "set-addr".into(),
                node_id: "cd".repeat(32),
                addr: Some("127.0.0.9:24100".into()),
                approvals: 1,
                required: 1,
                expires_at_height: 1012,
                version: None,
                activation_height: None,
            }],
            ..joiner_status()
        };
        assert!(line(&render_status(&status), "pending ").contains("not in force yet"));
    }
}
