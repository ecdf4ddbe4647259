//! What a node reports about itself: `/status`, the service status and the
//! metrics all read the same [`StatusSource`], which reads the transport's one
//! published peer table and computes the quorum with the one pure rule,
//! [`quorum`] (in `chain::quorum`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::chain::driver::MembersView;
use crate::chain::genesis::Network;
use crate::chain::links::ChainMetrics;
use crate::chain::members::MemberSet;
use crate::chain::quorum::{quorum, Quorum};
use crate::identity::{hex, NodeId};
use crate::net::handshake::{RejectReason, Tip};
use crate::net::Peers;

/// The commit this binary was built from (`git rev-parse --short HEAD` at build
/// time), "unknown" when built outside a git checkout.
pub const COMMIT: &str = env!("MASTERNODE_COMMIT");

/// What `masternode --version` prints after the name: the release, the commit,
/// the wire versions it speaks and the store format it writes, e.g. `0.2.0
/// (commit abc1234) wire 3..4 store 4`.
pub fn version() -> String {
    format!(
        "{} (commit {COMMIT}) wire {} store {}",
        env!("CARGO_PKG_VERSION"),
        crate::net::handshake::WIRE,
        crate::chain::store::FORMAT
    )
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node_id: String,
    /// The address the member set has for this node, which peers dial (a
    /// joiner's own `listen`).
    pub listen: String,
    /// The address this node's socket is bound to; null from a node that does
    /// not say.
    #[serde(default)]
    pub bound: Option<String>,
    pub network: String,
    /// Size of the masternode set in force at the next height.
    pub members: usize,
    /// Whether this node is in that set (a joiner, or a removed member, is not).
    #[serde(default = "yes")]
    pub member: bool,
    /// For a member that was removed: the first height it is not in the set.
    #[serde(default)]
    pub removed_at_height: Option<u64>,
    /// Membership changes collecting approvals (on chain or waiting for a block).
    #[serde(default)]
    pub pending_changes: Vec<PendingChange>,
    pub height: u64,
    pub tip_hash: Option<String>,
    pub quorum: Quorum,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    /// Handshake rejections this node sent, by reason.
    pub rejects_sent: BTreeMap<String, u64>,
    /// Handshake rejections peers sent this node, by reason.
    pub rejects_received: BTreeMap<String, u64>,
    /// The committed tip's header timestamp (the proposer's clock), ms since the
    /// epoch; null before the first block.
    #[serde(default)]
    pub last_block_timestamp_ms: Option<u64>,
    /// Seconds since that timestamp, by this node's clock.
    #[serde(default)]
    pub last_block_age_secs: Option<f64>,
    /// The consensus round at the current height (height + 1).
    #[serde(default)]
    pub round: u64,
    #[serde(default)]
    pub sync: SyncStatus,
    /// This node's clock minus the median of its peers' clocks, in ms (positive:
    /// ours is ahead); null until a peer's proposal has been seen.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// Conditions an operator should look at, one line each; empty when all is
    /// well.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why this member signs nothing now (the doppelganger watch after a
    /// start, or a lock its data dir lost); null while it signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_held: Option<String>,
    /// The lowest height whose block this node holds and serves: 1 unless
    /// `retain_blocks` pruned older ones.
    #[serde(default = "one")]
    pub earliest_height: u64,
    /// Bytes of the files in the data dir, measured every second; null from a
    /// node that does not say.
    #[serde(default)]
    pub data_dir_bytes: Option<u64>,
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

/// A membership change that has not completed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingChange {
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
    pub approvals: usize,
    pub required: usize,
    pub expires_at_height: u64,
}

/// Whether the node is catching up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SyncStatus {
    /// A usable peer claims blocks this node does not have.
    pub syncing: bool,
    /// The highest tip a usable peer claims, if any peer claimed one.
    pub best_peer_tip: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub node_id: String,
    pub addr: String,
    pub direction: String,
    pub rtt_ms: f64,
    pub connected_secs: u64,
    /// Bytes waiting in our outbox for this peer.
    #[serde(default)]
    pub outbox_bytes: u64,
    /// The wire version the connection uses (null from a node of 0.1.0, which
    /// does not report it).
    #[serde(default)]
    pub wire_version: Option<u16>,
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
    /// Peers disconnected for not taking what we had queued for them in time.
    #[serde(default)]
    pub slow_peer_disconnects: u64,
    /// Frames dropped because a peer's outbox was full, by class.
    #[serde(default)]
    pub outbox_dropped: BTreeMap<String, u64>,
    /// Bytes read from peers and waiting for the node.
    #[serde(default)]
    pub inbound_bytes: u64,
}

impl Status {
    /// Members of the set that are not connected (this node aside).
    pub(crate) fn missing_peers(&self) -> usize {
        self.members.saturating_sub(1).saturating_sub(self.peers.len())
    }

    /// Healthy: quorum met, every member connected, and nothing to look at.
    /// Every warning is a degradation: what is not (catching up, a change
    /// collecting approvals) is shown but never warned about.
    pub fn healthy(&self) -> bool {
        self.quorum.met && self.missing_peers() == 0 && self.warnings.is_empty()
    }
}

/// The transport's and the set's part of a status; `set` is the member set in
/// force at the next height.
pub(crate) fn build_status(
    id: NodeId,
    advertised: SocketAddr,
    network: &Network,
    set: &MemberSet,
    peers: &Peers,
    tip: Tip,
) -> Status {
    let infos = peers.peers();
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
        bound: Some(peers.local_addr().to_string()),
        network: network.name.clone(),
        members: set.len(),
        member: set.contains(&id),
        removed_at_height: None,
        pending_changes: Vec::new(),
        height: tip.height,
        tip_hash: (tip.height > 0).then(|| hex(&tip.hash)),
        quorum: quorum(
            infos.iter().filter(|p| set.contains(&p.id)).count() + set.contains(&id) as usize,
            set.len(),
            network.min_active,
        ),
        peers: infos
            .iter()
            .map(|p| PeerStatus {
                node_id: p.id.to_hex(),
                addr: p.addr.to_string(),
                direction: p.direction.as_str().to_string(),
                rtt_ms: (p.rtt.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                connected_secs: p.connected_for.as_secs(),
                outbox_bytes: p.outbox_bytes as u64,
                wire_version: Some(p.wire_version),
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
            slow_peer_disconnects: load(&c.slow_peer_disconnects),
            outbox_dropped: crate::net::Class::ALL
                .iter()
                .map(|class| (class.as_str().to_string(), load(&c.outbox_dropped[*class as usize])))
                .collect(),
            inbound_bytes: peers.inbound_bytes(),
        },
        rejects_sent: by_reason(&c.rejects_sent),
        rejects_received: by_reason(&c.rejects_received),
        last_block_timestamp_ms: None,
        last_block_age_secs: None,
        round: 0,
        sync: SyncStatus::default(),
        clock_offset_ms: None,
        warnings: Vec::new(),
        signing_held: None,
        earliest_height: 1,
        data_dir_bytes: None,
    }
}

/// A clock further than this from the peers' is worth a warning.
pub(crate) const CLOCK_WARN_MS: u64 = 1_000;
/// A slow peer disconnected within this long still shows as a warning.
pub(crate) const SLOW_PEER_RECENT_MS: u64 = 10 * 60 * 1000;

/// What the producer knows, as of one moment, for [`add_chain`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ChainState {
    pub last_block_timestamp_ms: Option<u64>,
    pub round: u64,
    pub best_peer_tip: u64,
    pub clock_offset_ms: Option<i64>,
    /// Wall-clock time of the last slow-peer disconnect (ms), if any.
    pub last_slow_disconnect_ms: Option<u64>,
}

/// Fills in the chain's part of a status and the warnings, as of `now_ms`.
/// `missing` names the members that are not connected; `block_interval_ms` is
/// the network's.
pub(crate) fn add_chain(s: &mut Status, chain: ChainState, missing: &[String], block_interval_ms: u64, now_ms: u64) {
    s.last_block_timestamp_ms = chain.last_block_timestamp_ms;
    s.last_block_age_secs =
        chain.last_block_timestamp_ms.map(|ts| (now_ms as i64 - ts as i64) as f64 / 1000.0).map(|a| a.max(0.0));
    s.round = chain.round;
    s.sync = SyncStatus {
        syncing: chain.best_peer_tip > s.height,
        best_peer_tip: (chain.best_peer_tip > 0).then_some(chain.best_peer_tip),
    };
    s.clock_offset_ms = chain.clock_offset_ms;
    let mut w = Vec::new();
    match (s.member, s.removed_at_height) {
        (true, _) => {}
        (false, None) => w.push(format!(
            "this node is not in the member set ({} members): a joiner, it follows the chain and is accepted once \
             its `masternode member add` is in force",
            s.members
        )),
        (false, Some(h)) => w.push(format!(
            "this node was removed from the member set at height {h}: it follows the chain but votes no more; \
             stop it, or have the members add it again"
        )),
    }
    // A node outside the set is refused by the members and counts towards no
    // quorum: their absence is what being outside means, said once above, and
    // the quorum and peer lines still show it.
    if !s.quorum.met && s.member {
        w.push(format!("quorum not met: {}/{} active, {} required", s.quorum.active, s.members, s.quorum.required));
    }
    if !missing.is_empty() && s.member {
        w.push(format!("{} member(s) not connected: {}", missing.len(), missing.join(", ")));
    }
    let stalled_after_secs = (5 * block_interval_ms).max(30_000) as f64 / 1000.0;
    if let Some(age) = s.last_block_age_secs.filter(|a| s.quorum.met && *a > stalled_after_secs) {
        w.push(format!("no block for {age:.0} s although the quorum is met (round {})", s.round));
    }
    if let Some(offset) = chain.clock_offset_ms.filter(|o| o.unsigned_abs() > CLOCK_WARN_MS) {
        let side = if offset > 0 { "ahead of" } else { "behind" };
        w.push(format!("clock {:.1} s {side} the peers' clocks: check NTP", offset.unsigned_abs() as f64 / 1000.0));
    }
    if let Some(at) = chain.last_slow_disconnect_ms.filter(|at| now_ms.saturating_sub(*at) <= SLOW_PEER_RECENT_MS) {
        w.push(format!(
            "slow peers disconnected: {} in all, the last {} s ago",
            s.counters.slow_peer_disconnects,
            now_ms.saturating_sub(at) / 1000
        ));
    }
    s.warnings = w;
}

/// A warning when this node's socket, bound to `local`, cannot reach some of
/// the members' `addrs` because they are of the other address family.
pub(crate) fn family_mismatch(local: SocketAddr, addrs: impl IntoIterator<Item = SocketAddr>) -> Option<String> {
    let other: Vec<SocketAddr> = addrs.into_iter().filter(|a| !crate::net::reaches(local, *a)).collect();
    let example = other.first()?;
    let (ours, theirs) = if local.is_ipv4() { ("IPv4", "IPv6") } else { ("IPv6", "IPv4") };
    Some(format!(
        "listening on {local} ({ours} only) while {} member(s) have {theirs} addresses (such as {example}): this node cannot dial them and waits for them to dial it; listen on [::]:{} to reach both",
        other.len(),
        local.port()
    ))
}

/// A warning when this node's socket is bound to a specific address other
/// than the one the member set has for it (`in_set`), which is where peers dial.
/// A wildcard binding reaches every address of the host and says nothing.
pub(crate) fn address_mismatch(bound: SocketAddr, in_set: SocketAddr) -> Option<String> {
    let bound = crate::net::canonical(bound);
    if bound.ip().is_unspecified() || bound.port() == 0 || bound == crate::net::canonical(in_set) {
        return None;
    }
    Some(format!(
        "bound to {bound} but the member set has this node at {in_set}, where peers dial it: restart it listening \
         there, or announce this address with `masternode member set-addr --addr {bound}`"
    ))
}

/// A warning when the chain has scheduled a protocol version this binary
/// (which runs up to `max_version`) cannot run, at a height after the tip: the
/// node will stop there.
pub(crate) fn upgrade_warning(schedule: &[crate::chain::members::Plan], tip: u64, max_version: u16) -> Option<String> {
    let plan = schedule.iter().find(|p| p.version > max_version && p.height > tip)?;
    let left = plan.height - tip - 1;
    Some(format!(
        "the chain switches to protocol {} at height {} ({left} blocks from now); this binary runs up to protocol \
         {max_version}: install a release that does before then, or this node stops there",
        plan.version, plan.height
    ))
}

pub(crate) use crate::chain::mempool::Figures as MempoolFigures;

/// Builds `/status` from the live parts of a node.
#[derive(Clone)]
pub struct StatusSource {
    pub(crate) id: NodeId,
    pub(crate) advertised: SocketAddr,
    pub(crate) network: Arc<Network>,
    pub(crate) peers: Peers,
    pub(crate) tip: watch::Receiver<Tip>,
    pub(crate) chain: Arc<ChainMetrics>,
    pub(crate) members: watch::Receiver<Arc<MembersView>>,
    /// The highest protocol version this node runs.
    pub(crate) max_version: u16,
}

impl StatusSource {
    pub(crate) fn status(&self) -> Status {
        let tip = *self.tip.borrow();
        let view = self.members.borrow().clone();
        let set = view.membership.current();
        // The address peers dial now: the chain's latest, which a `set-addr`
        // may have moved since the node started.
        let in_set = view.membership.next().get(&self.id).or_else(|| set.get(&self.id)).map(|m| m.addr);
        let mut s = build_status(self.id, in_set.unwrap_or(self.advertised), &self.network, set, &self.peers, tip);
        s.pending_changes = pending_changes(&view);
        s.removed_at_height = removed_at(&view.membership, self.id);
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let connected: std::collections::BTreeSet<&str> = s.peers.iter().map(|p| p.node_id.as_str()).collect();
        let missing: Vec<String> = set
            .iter()
            .filter(|(id, _)| **id != self.id && !connected.contains(id.to_hex().as_str()))
            .map(|(id, m)| format!("{} ({})", id.short(), m.addr))
            .collect();
        let chain = ChainState {
            last_block_timestamp_ms: (tip.height > 0).then(|| load(&self.chain.last_block_timestamp_ms)),
            round: load(&self.chain.round),
            best_peer_tip: load(&self.chain.best_peer_tip),
            clock_offset_ms: (load(&self.chain.clock_peers) > 0)
                .then(|| self.chain.clock_offset_ms.load(Ordering::Relaxed)),
            last_slow_disconnect_ms: Some(load(&self.peers.counters().last_slow_disconnect_ms)).filter(|t| *t > 0),
        };
        add_chain(&mut s, chain, &missing, self.network.block_interval_ms, crate::chain::producer::now_ms());
        s.signing_held = crate::chain::doppelganger::Hold::from_code(self.chain.hold.load(Ordering::Relaxed))
            .map(|h| h.message().to_string());
        s.earliest_height = load(&self.chain.earliest_height);
        s.data_dir_bytes = Some(load(&self.chain.data_dir_bytes));
        let others = view.membership.reachable().into_iter().filter(|(id, _)| *id != self.id).map(|(_, a)| a);
        s.warnings.extend(family_mismatch(self.peers.local_addr(), others));
        s.warnings.extend(in_set.and_then(|addr| address_mismatch(self.peers.local_addr(), addr)));
        s.warnings.extend(upgrade_warning(view.membership.schedule(), tip.height, self.max_version));
        s
    }

    /// The highest protocol version this node runs.
    pub(crate) fn max_version(&self) -> u16 {
        self.max_version
    }

    /// This node's id.
    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    /// The membership after the tip, and approvals waiting for a block.
    pub(crate) fn members(&self) -> Arc<MembersView> {
        self.members.borrow().clone()
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    pub(crate) fn network(&self) -> &Network {
        &self.network
    }

    pub(crate) fn chain(&self) -> &ChainMetrics {
        &self.chain
    }

    /// The mempool's figures: what it holds, by kind of share, and what it
    /// refused and dropped, as the producer last published them.
    pub(crate) fn mempool(&self) -> MempoolFigures {
        self.chain.mempool()
    }

    /// Turns of the node's own loops (transport manager, producer): the service
    /// watchdog is fed only while both move.
    pub(crate) fn progress(&self) -> (u64, u64) {
        (self.peers.counters().manager_loops.load(Ordering::Relaxed), self.chain.loops.load(Ordering::Relaxed))
    }
}

/// For a node that was a member and is in neither set the chain knows: the
/// first height it is not a member (two after the block that removed it).
fn removed_at(membership: &crate::chain::members::Membership, id: NodeId) -> Option<u64> {
    if membership.current().contains(&id) || membership.next().contains(&id) {
        return None;
    }
    membership.state().touched.get(&id).map(|h| h + 2)
}

/// Changes collecting approvals: those on chain, and those only this node's
/// pool holds so far.
pub(crate) fn pending_changes(view: &MembersView) -> Vec<PendingChange> {
    view.pending()
        .into_iter()
        .map(|p| PendingChange {
            change: p.change.kind().to_string(),
            node_id: p.change.subject().map(|id| id.to_hex()).unwrap_or_default(),
            addr: p.change.addr().map(|a| a.to_string()),
            version: p.change.plan().map(|plan| plan.version),
            activation_height: p.change.plan().map(|plan| plan.height),
            approvals: p.approvals.len(),
            required: p.required,
            expires_at_height: p.expires_at,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_of_one_family_among_members_of_both_says_so() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let v4 = [a("10.0.0.2:24100"), a("10.0.0.3:24100")];
        let v6 = [a("[fd00::2]:24100")];
        let mixed = || v4.iter().chain(&v6).copied();
        assert_eq!(family_mismatch(a("0.0.0.0:24100"), v4), None, "one family everywhere");
        assert_eq!(family_mismatch(a("[::]:24100"), mixed()), None, "[::] reaches both");
        let w = family_mismatch(a("0.0.0.0:24100"), mixed()).expect("an IPv4 socket cannot reach IPv6 members");
        assert!(w.contains("IPv4 only") && w.contains("1 member(s) have IPv6") && w.contains("[::]:24100"), "{w}");
        let w = family_mismatch(a("[fd00::1]:24100"), mixed()).expect("an IPv6 address reaches no IPv4 member");
        assert!(w.contains("2 member(s) have IPv4") && w.contains("10.0.0.2:24100"), "{w}");
    }

    fn status(height: u64, met: bool) -> Status {
        Status {
            node_id: "00".repeat(32),
            listen: "127.0.0.1:24100".into(),
            bound: Some("127.0.0.1:24100".into()),
            network: "devnet".into(),
            members: 4,
            member: true,
            removed_at_height: None,
            pending_changes: vec![],
            height,
            tip_hash: None,
            quorum: Quorum { active: if met { 4 } else { 2 }, required: 3, met },
            peers: vec![],
            counters: Counters { slow_peer_disconnects: 2, ..Counters::default() },
            rejects_sent: BTreeMap::new(),
            rejects_received: BTreeMap::new(),
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

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_healthy_node_has_no_warning() {
        let mut s = status(10, true);
        let chain = ChainState {
            last_block_timestamp_ms: Some(NOW - 800),
            round: 0,
            best_peer_tip: 10,
            clock_offset_ms: Some(-999),
            last_slow_disconnect_ms: Some(NOW - SLOW_PEER_RECENT_MS - 1),
        };
        add_chain(&mut s, chain, &[], 1_000, NOW);
        assert_eq!(s.warnings, Vec::<String>::new());
        assert_eq!(s.last_block_age_secs, Some(0.8));
        assert_eq!(s.sync, SyncStatus { syncing: false, best_peer_tip: Some(10) });
    }

    #[test]
    fn each_kind_of_trouble_gives_its_warning() {
        // (what, quorum met, chain state, missing members, the warning it gives)
        let base = ChainState { last_block_timestamp_ms: Some(NOW - 500), best_peer_tip: 10, ..ChainState::default() };
        let table: [(&str, bool, ChainState, &[&str], &str); 5] = [
            ("quorum lost", false, base, &[], "quorum not met: 2/4 active, 3 required"),
            ("a member away", true, base, &["aaaa (127.0.0.2:24100)"], "1 member(s) not connected: aaaa"),
            (
                "stalled",
                true,
                ChainState { last_block_timestamp_ms: Some(NOW - 31_000), round: 7, ..base },
                &[],
                "no block for 31 s although the quorum is met (round 7)",
            ),
            (
                "clock ahead",
                true,
                ChainState { clock_offset_ms: Some(1_500), ..base },
                &[],
                "clock 1.5 s ahead of the peers' clocks",
            ),
            (
                "slow peers",
                true,
                ChainState { last_slow_disconnect_ms: Some(NOW - 42_000), ..base },
                &[],
                "slow peers disconnected: 2 in all, the last 42 s ago",
            ),
        ];
        for (what, met, chain, missing, want) in table {
            let mut s = status(10, met);
            let missing: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
            add_chain(&mut s, chain, &missing, 1_000, NOW);
            assert_eq!(s.warnings.len(), 1, "{what}: {:?}", s.warnings);
            assert!(s.warnings[0].starts_with(want), "{what}: {:?}", s.warnings);
        }
    }

    #[test]
    fn every_warning_makes_the_status_degraded() {
        let chain = ChainState { last_block_timestamp_ms: Some(NOW - 500), best_peer_tip: 10, ..ChainState::default() };
        // A network of one: no peer to miss.
        let mut s = Status { members: 1, ..status(10, true) };
        add_chain(&mut s, chain, &[], 1_000, NOW);
        assert!(s.healthy(), "{:?}", s.warnings);
        // Quorum met, every member connected, but the clock is off: degraded.
        add_chain(&mut s, ChainState { clock_offset_ms: Some(2_000), ..chain }, &[], 1_000, NOW);
        assert_eq!(s.warnings.len(), 1);
        assert!(!s.healthy(), "a WARNING line is never exit 0");
    }

    #[test]
    fn a_removed_node_is_not_told_it_is_joining() {
        let chain = ChainState { last_block_timestamp_ms: Some(NOW - 500), best_peer_tip: 10, ..ChainState::default() };
        let mut joiner = Status { member: false, ..status(10, true) };
        add_chain(&mut joiner, chain, &[], 1_000, NOW);
        assert!(joiner.warnings[0].contains("a joiner") && joiner.warnings[0].contains("member add"), "{joiner:?}");
        let mut removed = Status { member: false, removed_at_height: Some(57), ..status(10, true) };
        add_chain(&mut removed, chain, &[], 1_000, NOW);
        assert_eq!(removed.warnings.len(), 1);
        assert!(removed.warnings[0].starts_with("this node was removed from the member set at height 57"));
        assert!(!removed.warnings[0].contains("joiner"), "{:?}", removed.warnings);
    }

    #[test]
    fn a_node_outside_the_set_is_warned_of_that_alone() {
        let chain = ChainState { best_peer_tip: 0, ..ChainState::default() };
        let missing: Vec<String> = ["aaaa", "bbbb", "cccc", "dddd"].iter().map(|m| m.to_string()).collect();
        for removed_at_height in [None, Some(57)] {
            let mut s = Status {
                member: false,
                removed_at_height,
                quorum: Quorum { active: 0, required: 3, met: false },
                ..status(0, false)
            };
            add_chain(&mut s, chain, &missing, 1_000, NOW);
            assert_eq!(s.warnings.len(), 1, "{removed_at_height:?}: {:?}", s.warnings);
            assert!(s.warnings[0].contains("member set"), "{:?}", s.warnings);
            assert!(!s.healthy(), "still degraded: it votes no more, or not yet");
        }
        // The same quorum and members missing on a member are two warnings.
        let mut member = Status { quorum: Quorum { active: 0, required: 3, met: false }, ..status(0, false) };
        add_chain(&mut member, chain, &missing, 1_000, NOW);
        assert_eq!(member.warnings.len(), 2, "{:?}", member.warnings);
    }

    #[test]
    fn a_node_bound_elsewhere_than_its_address_in_the_set_says_so() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let w = address_mismatch(a("127.0.0.9:24100"), a("127.0.0.2:24100")).expect("peers dial .2");
        assert!(w.contains("bound to 127.0.0.9:24100") && w.contains("has this node at 127.0.0.2:24100"), "{w}");
        assert!(w.contains("member set-addr --addr 127.0.0.9:24100"), "{w}");
        assert_eq!(address_mismatch(a("127.0.0.2:24100"), a("127.0.0.2:24100")), None);
        assert_eq!(address_mismatch(a("[::ffff:127.0.0.2]:24100"), a("127.0.0.2:24100")), None, "one address");
        assert_eq!(address_mismatch(a("0.0.0.0:24100"), a("203.0.113.7:24100")), None, "the wildcard reaches it");
        assert_eq!(address_mismatch(a("[::]:24100"), a("203.0.113.7:24200")), None, "a forwarded port, maybe");
    }

    #[test]
    fn a_scheduled_version_this_binary_cannot_run_is_a_warning_until_the_height() {
        use crate::chain::members::Plan;
        let schedule = [Plan { version: 4, height: 50 }, Plan { version: 5, height: 100 }];
        let w = upgrade_warning(&schedule, 60, 4).expect("protocol 5 is scheduled");
        assert!(w.starts_with("the chain switches to protocol 5 at height 100 (39 blocks from now)"), "{w}");
        assert!(w.contains("runs up to protocol 4"), "{w}");
        assert_eq!(upgrade_warning(&schedule, 60, 5), None, "a binary that runs it");
        assert!(upgrade_warning(&schedule, 10, 3).unwrap().contains("protocol 4 at height 50"), "the first first");
        assert_eq!(upgrade_warning(&[], 60, 4), None);
    }

    #[test]
    fn catching_up_is_a_state_not_a_warning() {
        let mut s = status(10, true);
        let chain = ChainState { last_block_timestamp_ms: Some(NOW - 500), best_peer_tip: 50, ..ChainState::default() };
        add_chain(&mut s, chain, &[], 1_000, NOW);
        assert_eq!(s.sync, SyncStatus { syncing: true, best_peer_tip: Some(50) });
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn a_status_without_the_newer_fields_still_parses() {
        let mut v = serde_json::to_value(status(3, true)).unwrap();
        for k in ["last_block_timestamp_ms", "last_block_age_secs", "round", "sync", "clock_offset_ms", "warnings"] {
            v.as_object_mut().unwrap().remove(k);
        }
        let s: Status = serde_json::from_value(v).unwrap();
        assert_eq!(s.height, 3);
        assert!(s.warnings.is_empty());
    }
}
