//! systemd integration through `sd_notify`: `READY=1` once the node listens and
//! its admin API serves, `STATUS=` a one-line summary whenever it changes,
//! `WATCHDOG=1` only while the node's own loops make progress, and `STOPPING=1` on
//! shutdown. Without `NOTIFY_SOCKET` every call is a no-op.
//!
//! The watchdog is fed from proof, not from a timer: the connection manager's and
//! the producer's loops each count their turns (both turn at least every few
//! seconds even when idle); a watchdog period in which either count stood still is
//! not acknowledged, and systemd restarts the stuck node.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::status::{Status, StatusSource};

/// The one-line summary systemd shows for the unit.
pub(crate) fn summary(s: &Status) -> String {
    format!(
        "peers {}/{}, height {}, quorum {} ({}/{} active, {} required)",
        s.peers.len(),
        s.members.saturating_sub(1),
        s.height,
        if s.quorum.met { "met" } else { "not met" },
        s.quorum.active,
        s.members,
        s.quorum.required
    )
}

fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) reads it: the variable
/// applies to us unless `WATCHDOG_PID` names another process.
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("started")]);
}

/// Runs until `shutdown`: keeps STATUS current and feeds the watchdog while the
/// node makes progress; sends STOPPING=1 at the end.
pub async fn supervise(node: StatusSource, shutdown: CancellationToken) {
    let watchdog = watchdog_period();
    let tick = watchdog.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
    let mut ticker = tokio::time::interval(tick);
    let mut last_status = String::new();
    let mut last_progress = node.progress();
    let mut last_fed = tokio::time::Instant::now();
    let mut stalled_reported = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let line = summary(&node.status());
        if line != last_status {
            notify(&[NotifyState::Status(&line)]);
            last_status = line;
        }
        if let Some(period) = watchdog {
            if last_fed.elapsed() >= period {
                let progress = node.progress();
                let moved = progress.0 != last_progress.0 && progress.1 != last_progress.1;
                if moved {
                    notify(&[NotifyState::Watchdog]);
                    stalled_reported = false;
                } else if !stalled_reported {
                    tracing::error!("node loops made no progress for {period:?}; not feeding the watchdog");
                    stalled_reported = true;
                }
                last_progress = progress;
                last_fed = tokio::time::Instant::now();
            }
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
