//! `GET /ready`, the readiness probe, and the client side of `masternode
//! status --can-stop`. The rules are in [`crate::probe`].
//!
//! The stop verdict is computed by the client from `/status` and `/members`,
//! which every release since the membership contract serves, so the check
//! also works against a node still on the previous release during a rolling
//! upgrade.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{fetch_members, fetch_status, http_request, AdminState, ClientError};
use crate::identity::NodeId;
use crate::probe::{readiness, stop_verdict, Readiness, StopInput, StopVerdict};

/// 200 with the readiness while ready, 503 with it (and its `reason`)
/// otherwise. Computed afresh on every request from the live status.
pub(super) async fn ready_handler(State(state): State<AdminState>) -> Response {
    let started = state.status.progress().1 > 0;
    let r = readiness(&state.status.status(), started);
    let code = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(r)).into_response()
}

/// `GET /ready`: the status code (200 or 503) and the answer.
pub async fn fetch_readiness(addr: SocketAddr, timeout: Duration) -> Result<(u16, Readiness), ClientError> {
    let (code, body) = http_request(addr, "GET", "/ready", b"", timeout).await?;
    if code != 200 && code != 503 {
        return Err(ClientError::Http { addr, code, message: body });
    }
    let r = serde_json::from_str(&body).map_err(|e| ClientError::Body { addr, reason: e.to_string() })?;
    Ok((code, r))
}

/// Whether the node at `addr` may be stopped now without taking the connected
/// members below the quorum, as it sees them.
pub async fn fetch_stop_verdict(addr: SocketAddr, timeout: Duration) -> Result<StopVerdict, ClientError> {
    let bad = |reason: String| ClientError::Body { addr, reason };
    // The two answers are read one after the other; a block between them may
    // change the set. Read again while their heights differ, a few times (a
    // set changes far less often than a block comes).
    let mut tries = 0;
    let (status, members) = loop {
        let members = fetch_members(addr, timeout).await?;
        let status = fetch_status(addr, timeout).await?;
        tries += 1;
        if members.height == status.height || tries == 3 {
            break (status, members);
        }
    };
    let id = |hex: &str| NodeId::from_hex(hex).map_err(|e| bad(e.to_string()));
    let this = id(&status.node_id)?;
    let set = members.members.iter().map(|m| id(&m.node_id)).collect::<Result<BTreeSet<_>, _>>()?;
    let connected = status.peers.iter().map(|p| id(&p.node_id)).collect::<Result<Vec<_>, _>>()?;
    Ok(stop_verdict(StopInput { this, members: &set, connected: &connected, required: status.quorum.required }))
}
