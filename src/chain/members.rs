//! Membership on a running network: the member set in force at each height, and
//! the signed changes that move it. Pure: no clock, no IO.
//!
//! # Rules
//!
//! * The genesis (`network.toml`) names the first set; from then on the chain
//!   carries every change, as signed [`Approval`]s in block headers.
//! * `Add { id, addr }` and `Remove { id }` take effect once members holding more
//!   than two thirds of the set in force at the including height have approved
//!   that exact change; `SetAddr { id, addr, seq }` is signed by the member it
//!   moves and needs no vote.
//! * A change completed by block `H` is in force from height `H + 2` (the rule
//!   CometBFT uses for validator updates): when block `H` commits, the sets of
//!   `H + 1` and `H + 2` are both known, so the transport can admit a member one
//!   height before it votes, and a node one height behind still knows whom to
//!   count.
//! * An approval names the height its signer's chain had reached (`signed_at`).
//!   It is refused at or before that height, after `ttl` heights, and once any
//!   change about the same member completed at or after it: an approval for
//!   "add X" cannot be replayed after X was added and removed again.
//! * Everything is checked in block order, so an approval is valid or not in the
//!   same way on every node: a block with one invalid approval is an invalid
//!   block.
//!
//! # Upgrade plans
//!
//! * The chain's rules have a protocol version, a function of height
//!   ([`Membership::version_at`]): [`GENESIS_VERSION`] from genesis, then the
//!   version of each completed plan from its height on.
//! * `Upgrade { version, height }` is approved as `Add` and `Remove` are (more
//!   than two thirds of the set in force). It may complete in block `B` only if
//!   `version` is above every version scheduled so far, `height` is after every
//!   scheduled plan's height (so the version only grows with height, and each
//!   version is scheduled once), and `height >= B + UPGRADE_NOTICE` (every node
//!   hears of a plan well before it applies). Plans of other versions than this
//!   release knows are accepted: a node must know where to stop.
//! * Plans waiting for approvals may compete (two heights for one version); the
//!   first to complete is scheduled and the others can no longer complete and
//!   are dropped. Refusing a second plan for a version instead would let one
//!   member hold off the plan everyone wants with a plan of its own.
//! * Proposers carry a plan's approvals only while every member is connected at
//!   a wire version that can decode them ([`may_carry_plans`]): a policy, not a
//!   rule of validity, since 0.1.0 cannot decode a block that carries one.
//!
//! # What the state holds
//!
//! After block `H` ([`Membership::applied`]): the set in force at `H + 1`
//! ([`Membership::current`]), the set at `H + 2` ([`Membership::next`]), the
//! approvals collected for changes not yet complete, per member the height of
//! the last change about it, and the upgrade plans scheduled.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use super::genesis::Network;
use super::height::Height;
use super::quorum::vote_threshold;
use super::usage::Usage;
use crate::codec::BINCODE;
use crate::identity::{Identity, NodeId};

/// Members a set may hold, at most.
pub(crate) const MAX_MEMBERS: usize = 128;
/// Approvals one block may carry, at most.
pub(crate) const MAX_CHANGES_PER_BLOCK: usize = 64;
/// Approvals of one member waiting on chain, at most: a member cannot grow the
/// state every node keeps by approving changes nobody else wants.
pub(crate) const MAX_PENDING_PER_APPROVER: usize = 16;
/// Approvals a node holds for the next blocks, per approver. There is no cap
/// on the whole pool: one would let members that approve a lot (32 Byzantine
/// ones would do) crowd out everyone else's approvals, this node's own
/// included. Approvers are members of the set in force or the next one
/// ([`Membership::check`] comes first, and `retain_valid` drops those of a
/// member that left after every block), so the pool holds at most this many
/// times their number (a few thousand approvals, well under 1 MiB, with
/// [`MAX_MEMBERS`] in each set).
pub(crate) const MAX_POOL_PER_APPROVER: usize = 8;

/// The protocol version of the chain's rules from genesis.
pub(crate) const GENESIS_VERSION: u16 = 3;
/// Heights between the block that completes an upgrade plan and the plan's
/// height, at least: 10 s of 500 ms blocks, so every connected node has the
/// plan's block well before it applies, and a node far behind meets it while
/// it syncs.
pub(crate) const UPGRADE_NOTICE: Height = 20;
/// The first wire version that carries [`Change::Upgrade`]: 0.1.0 (wire 3)
/// cannot decode an approval of one, nor a block that carries it.
pub(crate) const UPGRADE_WIRE: u16 = 4;

/// A change of the member set, or of the chain's rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub enum Change {
    /// A new member with its node key and address.
    Add { id: NodeId, addr: SocketAddr },
    /// A member leaves the set.
    Remove { id: NodeId },
    /// A member announces a new address; `seq` grows with each announcement.
    SetAddr { id: NodeId, addr: SocketAddr, seq: u64 },
    /// From `height` on, the chain's rules are those of protocol `version`.
    Upgrade { version: u16, height: Height },
}

impl Change {
    /// The member the change is about (none for an upgrade plan).
    pub(crate) fn subject(&self) -> Option<NodeId> {
        match self {
            Change::Add { id, .. } | Change::Remove { id } | Change::SetAddr { id, .. } => Some(*id),
            Change::Upgrade { .. } => None,
        }
    }

    /// The change's name in the admin API: `add`, `remove`, `set-addr` or
    /// `upgrade`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Change::Add { .. } => "add",
            Change::Remove { .. } => "remove",
            Change::SetAddr { .. } => "set-addr",
            Change::Upgrade { .. } => "upgrade",
        }
    }

    /// The address it names, if any.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        match self {
            Change::Add { addr, .. } | Change::SetAddr { addr, .. } => Some(*addr),
            Change::Remove { .. } | Change::Upgrade { .. } => None,
        }
    }

    /// The plan it is, if it is an upgrade plan.
    pub fn plan(&self) -> Option<Plan> {
        match self {
            Change::Upgrade { version, height } => Some(Plan { version: *version, height: *height }),
            _ => None,
        }
    }

    /// Whether it needs approvals of more than two thirds of the set.
    pub fn needs_vote(&self) -> bool {
        !matches!(self, Change::SetAddr { .. })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Add { id, addr } => write!(f, "add {} at {addr}", id.short()),
            Change::Remove { id } => write!(f, "remove {}", id.short()),
            Change::SetAddr { id, addr, seq } => write!(f, "move {} to {addr} (seq {seq})", id.short()),
            Change::Upgrade { version, height } => write!(f, "upgrade to protocol {version} at height {height}"),
        }
    }
}

/// A scheduled upgrade: protocol `version` from `height` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub struct Plan {
    pub version: u16,
    pub height: Height,
}

/// One member's approval of a change.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Approval {
    pub change: Change,
    pub approver: NodeId,
    /// The height of the signer's last committed block when it signed.
    pub signed_at: Height,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedApproval {
    pub approval: Approval,
    pub signature: [u8; 64],
}

impl Approval {
    pub(crate) fn sign_bytes(&self, network_id: &[u8; 32]) -> Vec<u8> {
        let mut out = b"masternode/approval/v1\0".to_vec();
        out.extend_from_slice(network_id);
        // Encoding into a Vec fails only past the codec's limit, far above an approval.
        let _ = bincode::encode_into_std_write(self, &mut out, BINCODE);
        out
    }

    pub fn sign(self, network_id: &[u8; 32], identity: &Identity) -> SignedApproval {
        let signature = identity.sign(&self.sign_bytes(network_id));
        SignedApproval { approval: self, signature }
    }
}

impl SignedApproval {
    fn signature_ok(&self, network_id: &[u8; 32]) -> bool {
        let Some(key) = self.approval.approver.verifying_key() else { return false };
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&self.approval.sign_bytes(network_id), &sig).is_ok()
    }
}

/// Why an approval is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("the signature does not verify")]
    BadSignature,
    #[error("{0} is not a member and cannot approve changes")]
    NotAMember(NodeId),
    #[error("an address change must be signed by the member it moves")]
    NotSelfSigned,
    #[error("signed at height {signed_at}, not before height {height}")]
    FromTheFuture { signed_at: Height, height: Height },
    #[error("expired: signed at height {signed_at}, valid until {until}")]
    Expired { signed_at: Height, until: Height },
    #[error("a change about this member completed at height {completed}, after this approval was signed (height {signed_at})")]
    Superseded { signed_at: Height, completed: Height },
    #[error("{0} already approved this change")]
    Duplicate(NodeId),
    #[error("{0} is already a member")]
    AlreadyMember(NodeId),
    #[error("{0} is not a member")]
    UnknownMember(NodeId),
    #[error("the set would have {members} members, fewer than min_active = {min_active}")]
    BelowMinActive { members: usize, min_active: usize },
    #[error("the set is full ({0} members)")]
    SetFull(usize),
    #[error("address {0} is already used by member {1}")]
    AddressInUse(SocketAddr, NodeId),
    #[error("address {0} cannot be dialled")]
    BadAddress(SocketAddr),
    #[error("address sequence {got} is not above the member's {current}")]
    StaleSequence { got: u64, current: u64 },
    #[error("more than {MAX_CHANGES_PER_BLOCK} approvals in one block")]
    TooMany,
    #[error("{0} has {MAX_PENDING_PER_APPROVER} approvals waiting already")]
    TooManyPending(NodeId),
    #[error("protocol {version} is not above {scheduled}, the latest version scheduled")]
    VersionNotAbove { version: u16, scheduled: u16 },
    #[error("height {height} is not after {scheduled}, the height of the latest plan")]
    PlanNotAfter { height: Height, scheduled: Height },
    #[error("height {height} is too soon: a plan completed now may name height {earliest} at the earliest")]
    PlanTooSoon { height: Height, earliest: Height },
}

impl ChangeError {
    /// A short name for the admin API and logs.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ChangeError::BadSignature => "bad_signature",
            ChangeError::NotAMember(_) => "not_a_member",
            ChangeError::NotSelfSigned => "not_self_signed",
            ChangeError::FromTheFuture { .. } => "from_the_future",
            ChangeError::Expired { .. } => "expired",
            ChangeError::Superseded { .. } => "superseded",
            ChangeError::Duplicate(_) => "duplicate",
            ChangeError::AlreadyMember(_) => "already_member",
            ChangeError::UnknownMember(_) => "unknown_member",
            ChangeError::BelowMinActive { .. } => "below_min_active",
            ChangeError::SetFull(_) => "set_full",
            ChangeError::AddressInUse(..) => "address_in_use",
            ChangeError::BadAddress(_) => "bad_address",
            ChangeError::StaleSequence { .. } => "stale_sequence",
            ChangeError::TooMany => "too_many",
            ChangeError::TooManyPending(_) => "too_many_pending",
            ChangeError::VersionNotAbove { .. } => "version_not_above",
            ChangeError::PlanNotAfter { .. } => "plan_not_after",
            ChangeError::PlanTooSoon { .. } => "plan_too_soon",
        }
    }
}

/// A member as the set records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct MemberInfo {
    pub addr: SocketAddr,
    /// The first height at which it was a member (0: the genesis set).
    pub since: Height,
    /// Its last `SetAddr` sequence (0 before any).
    pub addr_seq: u64,
}

/// A member set, ordered by `NodeId` (the proposer order).
#[derive(Debug, Clone, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct MemberSet(BTreeMap<NodeId, MemberInfo>);

impl MemberSet {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.0.contains_key(id)
    }

    pub fn get(&self, id: &NodeId) -> Option<&MemberInfo> {
        self.0.get(id)
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.0.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &MemberInfo)> {
        self.0.iter()
    }

    /// The `i`-th member in `NodeId` order, modulo the size (the proposer rule).
    pub(crate) fn nth_cyclic(&self, i: u64) -> Option<NodeId> {
        if self.0.is_empty() {
            return None;
        }
        self.0.keys().nth((i % self.0.len() as u64) as usize).copied()
    }

    /// Votes that make a quorum of this set (more than two thirds).
    pub(crate) fn quorum(&self) -> usize {
        vote_threshold(self.0.len())
    }

    /// The member other than `except` at `addr`, if any.
    pub(crate) fn holder_of(&self, addr: SocketAddr, except: NodeId) -> Option<NodeId> {
        self.0.iter().find(|(id, m)| **id != except && m.addr == addr).map(|(id, _)| *id)
    }
}

/// What the genesis fixes for membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub min_active: usize,
    /// Heights an approval stays valid after the height it was signed at.
    pub ttl: Height,
}

impl Params {
    /// Approvals stay valid for a day of blocks (at least 1,000 heights): long
    /// enough for operators in other time zones to add theirs.
    pub fn for_network(network: &Network) -> Params {
        let ttl = (86_400_000 / network.block_interval_ms.max(1)).max(1_000);
        Params { min_active: network.min_active, ttl }
    }
}

/// The part of [`Membership`] the store persists with each block.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct MembershipState {
    pub applied: Height,
    pub current: MemberSet,
    pub next: MemberSet,
    /// Per change, its approvers and the height each signed at.
    pub pending: BTreeMap<Change, BTreeMap<NodeId, Height>>,
    /// Per member, the height of the block that completed the last change about it.
    pub touched: BTreeMap<NodeId, Height>,
    /// The upgrade plans completed, in height order (and so in version order).
    pub schedule: Vec<Plan>,
}

/// A change completed by a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub change: Change,
    /// The block that completed it.
    pub height: Height,
    /// The first height it is in force.
    pub in_force: Height,
}

/// A change still collecting approvals, as `/members` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingView {
    pub change: Change,
    pub approvals: Vec<NodeId>,
    pub required: usize,
    pub expires_at: Height,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    params: Params,
    state: MembershipState,
}

impl Membership {
    /// The membership before the first block: the genesis set, in force at
    /// heights 1 and 2.
    pub fn genesis(network: &Network) -> Membership {
        let set = MemberSet(
            network.members.iter().map(|m| (m.id, MemberInfo { addr: m.addr, since: 0, addr_seq: 0 })).collect(),
        );
        Membership {
            params: Params::for_network(network),
            state: MembershipState {
                applied: 0,
                current: set.clone(),
                next: set,
                pending: BTreeMap::new(),
                touched: BTreeMap::new(),
                schedule: Vec::new(),
            },
        }
    }

    /// A genesis set of `ids` with placeholder addresses (tests and simulations
    /// of consensus, where no one dials).
    pub fn of_ids(ids: &[NodeId], min_active: usize) -> Membership {
        let set = MemberSet(
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
                    (*id, MemberInfo { addr, since: 0, addr_seq: 0 })
                })
                .collect(),
        );
        Membership {
            params: Params { min_active, ttl: 1_000 },
            state: MembershipState {
                applied: 0,
                current: set.clone(),
                next: set,
                pending: BTreeMap::new(),
                touched: BTreeMap::new(),
                schedule: Vec::new(),
            },
        }
    }

    pub fn restore(params: Params, state: MembershipState) -> Membership {
        Membership { params, state }
    }

    pub fn params(&self) -> Params {
        self.params
    }

    pub fn state(&self) -> &MembershipState {
        &self.state
    }

    /// The last block applied.
    pub fn applied(&self) -> Height {
        self.state.applied
    }

    /// The set in force at `applied + 1`, the height being decided.
    pub fn current(&self) -> &MemberSet {
        &self.state.current
    }

    /// The set in force at `applied + 2`.
    pub fn next(&self) -> &MemberSet {
        &self.state.next
    }

    /// The set in force at `height`, where known (`applied + 1` and `+ 2`);
    /// beyond that the latest known.
    pub(crate) fn at(&self, height: Height) -> &MemberSet {
        if height <= self.state.applied + 1 {
            &self.state.current
        } else {
            &self.state.next
        }
    }

    /// The protocol version of the rules at `height`: that of the last plan
    /// scheduled at or below it, [`GENESIS_VERSION`] before any. Plans
    /// completed by later blocks may change the answer for heights at least
    /// [`UPGRADE_NOTICE`] above the tip, never below.
    pub fn version_at(&self, height: Height) -> u16 {
        self.state.schedule.iter().rev().find(|p| p.height <= height).map_or(GENESIS_VERSION, |p| p.version)
    }

    /// The upgrade plans completed, in height order.
    pub fn schedule(&self) -> &[Plan] {
        &self.state.schedule
    }

    /// Every member the transport should talk to: in force now or from the next
    /// height, with the latest address.
    pub fn reachable(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut out: BTreeMap<NodeId, SocketAddr> = self.state.current.iter().map(|(id, m)| (*id, m.addr)).collect();
        out.extend(self.state.next.iter().map(|(id, m)| (*id, m.addr)));
        out.into_iter().collect()
    }

    /// [`Self::reachable`] and the `extra` members it does not name (a node's
    /// `bootstrap` peers): where both name a member, the chain's address counts.
    pub(crate) fn reachable_with(&self, extra: &[(NodeId, SocketAddr)]) -> Vec<(NodeId, SocketAddr)> {
        let mut out: BTreeMap<NodeId, SocketAddr> = extra.iter().copied().collect();
        out.extend(self.reachable());
        out.into_iter().collect()
    }

    /// Changes collecting approvals, with the approvers that still count.
    pub fn pending(&self) -> Vec<PendingView> {
        let height = self.state.applied + 1;
        let set = &self.state.current;
        self.state
            .pending
            .iter()
            .map(|(change, approvers)| PendingView {
                change: change.clone(),
                approvals: approvers.keys().filter(|a| set.contains(a)).copied().collect(),
                required: set.quorum(),
                expires_at: approvers.values().map(|s| s + self.params.ttl).min().unwrap_or(height),
            })
            .collect()
    }

    /// A copy of this state as block `applied + 1` begins (pending changes
    /// settled), and the set two heights after it: where `check`, `validate`
    /// and `select` try approvals without touching `self`.
    fn draft(&self) -> (Membership, MemberSet) {
        let mut scratch = self.clone();
        let mut after = self.state.next.clone();
        scratch.settle(&mut after);
        (scratch, after)
    }

    /// Checks one approval as the next block (`applied + 1`) would, without
    /// applying it: what a node asks before it gossips or signs one.
    pub(crate) fn check(&self, sa: &SignedApproval, network_id: &[u8; 32]) -> Result<(), ChangeError> {
        let (mut scratch, mut after) = self.draft();
        scratch.admit(sa, network_id, &mut after).map(|_| ())
    }

    /// Checks the approvals of block `applied + 1` in order, as applying them
    /// would; the index of the first refused one and why.
    pub fn validate(&self, changes: &[SignedApproval], network_id: &[u8; 32]) -> Result<(), (usize, ChangeError)> {
        if changes.is_empty() {
            return Ok(());
        }
        if changes.len() > MAX_CHANGES_PER_BLOCK {
            return Err((MAX_CHANGES_PER_BLOCK, ChangeError::TooMany));
        }
        let (mut scratch, mut after) = self.draft();
        for (i, sa) in changes.iter().enumerate() {
            scratch.admit(sa, network_id, &mut after).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Of `candidates`, the approvals the next block may carry, in order, at most
    /// [`MAX_CHANGES_PER_BLOCK`]: each one valid after the ones before it.
    pub(crate) fn select<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a SignedApproval>,
        network_id: &[u8; 32],
    ) -> Vec<SignedApproval> {
        let (mut scratch, mut after) = self.draft();
        let mut out = Vec::new();
        for sa in candidates {
            if out.len() == MAX_CHANGES_PER_BLOCK {
                break;
            }
            // `admit` changes nothing when it refuses.
            if scratch.admit(sa, network_id, &mut after).is_ok() {
                out.push(sa.clone());
            }
        }
        out
    }

    /// Applies block `applied + 1`'s approvals, which [`Self::validate`]
    /// accepted (one that does not verify is skipped, so a node never diverges
    /// from the checks it made), and moves on a height. Returns the changes the
    /// block completed.
    pub fn apply(&mut self, changes: &[SignedApproval], network_id: &[u8; 32]) -> Vec<Completed> {
        let height = self.state.applied + 1;
        let mut after = self.state.next.clone();
        let mut completed = self.settle(&mut after);
        for sa in changes.iter().take(MAX_CHANGES_PER_BLOCK) {
            if let Ok(Some(c)) = self.admit(sa, network_id, &mut after) {
                completed.push(c);
            }
        }
        self.state.current = std::mem::replace(&mut self.state.next, after);
        self.state.applied = height;
        // Approvals that can no longer count in the next block are dropped.
        let ttl = self.params.ttl;
        for approvers in self.state.pending.values_mut() {
            approvers.retain(|_, signed_at| *signed_at + ttl > height);
        }
        self.state.pending.retain(|_, a| !a.is_empty());
        completed
    }

    /// What a change would do to `after` (the latest set) is allowed.
    fn effect_allowed(&self, change: &Change, after: &MemberSet) -> Result<(), ChangeError> {
        match change {
            Change::Add { id, addr } => {
                if after.contains(id) {
                    return Err(ChangeError::AlreadyMember(*id));
                }
                if after.len() >= MAX_MEMBERS {
                    return Err(ChangeError::SetFull(after.len()));
                }
                check_addr(*addr)?;
            }
            Change::Remove { id } => {
                if !after.contains(id) {
                    return Err(ChangeError::UnknownMember(*id));
                }
                let left = after.len() - 1;
                if left < self.params.min_active.max(1) {
                    return Err(ChangeError::BelowMinActive { members: left, min_active: self.params.min_active });
                }
            }
            Change::SetAddr { id, addr, seq } => {
                let Some(m) = after.get(id) else { return Err(ChangeError::UnknownMember(*id)) };
                if *seq <= m.addr_seq {
                    return Err(ChangeError::StaleSequence { got: *seq, current: m.addr_seq });
                }
                check_addr(*addr)?;
            }
            Change::Upgrade { version, height } => {
                let latest =
                    self.state.schedule.last().copied().unwrap_or(Plan { version: GENESIS_VERSION, height: 0 });
                if *version <= latest.version {
                    return Err(ChangeError::VersionNotAbove { version: *version, scheduled: latest.version });
                }
                if *height <= latest.height {
                    return Err(ChangeError::PlanNotAfter { height: *height, scheduled: latest.height });
                }
                let earliest = (self.state.applied + 1).saturating_add(UPGRADE_NOTICE);
                if *height < earliest {
                    return Err(ChangeError::PlanTooSoon { height: *height, earliest });
                }
            }
        }
        Ok(())
    }

    /// Completes `change` in block `applied + 1`: in force two heights later.
    fn complete(&mut self, change: Change, after: &mut MemberSet) -> Completed {
        let height = self.state.applied + 1;
        let a_change = &change;
        let subject = change.subject();
        let in_force = height + 2;
        match a_change {
            Change::Add { id, addr } => {
                after.0.insert(*id, MemberInfo { addr: *addr, since: in_force, addr_seq: 0 });
            }
            Change::Remove { id } => {
                after.0.remove(id);
            }
            Change::SetAddr { id, addr, seq } => {
                if let Some(m) = after.0.get_mut(id) {
                    m.addr = *addr;
                    m.addr_seq = *seq;
                }
            }
            Change::Upgrade { version, height } => {
                let plan = Plan { version: *version, height: *height };
                self.state.schedule.push(plan);
                // Competing plans can no longer complete: the schedule only grows.
                self.state
                    .pending
                    .retain(|c, _| c.plan().is_none_or(|p| p.version > plan.version && p.height > plan.height));
            }
        }
        self.state.pending.remove(a_change);
        if let (Some(subject), true) = (subject, a_change.needs_vote()) {
            // Approvals of other changes about this member were signed for a
            // set it is no longer in (or now in): they lapse.
            self.state.touched.insert(subject, height);
            self.state.pending.retain(|c, _| c.subject() != Some(subject) || !c.needs_vote());
        }
        let in_force = a_change.plan().map_or(in_force, |p| p.height);
        Completed { change, height, in_force }
    }

    /// Before block `applied + 1`'s approvals: a change whose approvers already
    /// hold more than 2/3 of the set in force now (the set shrank since they
    /// approved) completes in this block, in key order, if it still may.
    fn settle(&mut self, after: &mut MemberSet) -> Vec<Completed> {
        let mut done = Vec::new();
        let keys: Vec<Change> = self.state.pending.keys().filter(|c| c.needs_vote()).cloned().collect();
        for change in keys {
            let Some(approvers) = self.state.pending.get(&change) else { continue };
            let current = &self.state.current;
            let count = approvers.keys().filter(|x| current.contains(x)).count();
            if count >= current.quorum() && self.effect_allowed(&change, after).is_ok() {
                done.push(self.complete(change, after));
            }
        }
        done
    }

    /// One approval in block `applied + 1`: checked, then counted. `after` is the
    /// set in force two heights after the block, as the block's approvals so far
    /// leave it. Changes nothing when it refuses.
    fn admit(
        &mut self,
        sa: &SignedApproval,
        network_id: &[u8; 32],
        after: &mut MemberSet,
    ) -> Result<Option<Completed>, ChangeError> {
        let height = self.state.applied + 1;
        let a = &sa.approval;
        if a.signed_at >= height {
            return Err(ChangeError::FromTheFuture { signed_at: a.signed_at, height });
        }
        let until = a.signed_at.saturating_add(self.params.ttl);
        if height > until {
            return Err(ChangeError::Expired { signed_at: a.signed_at, until });
        }
        let subject = a.change.subject();
        if let Some(&completed) = subject.and_then(|s| self.state.touched.get(&s)) {
            if a.signed_at < completed {
                return Err(ChangeError::Superseded { signed_at: a.signed_at, completed });
            }
        }
        // Who may sign: any member of the set in force here for a vote; the
        // member itself for its address.
        if a.change.needs_vote() {
            if !self.state.current.contains(&a.approver) {
                return Err(ChangeError::NotAMember(a.approver));
            }
        } else if subject != Some(a.approver) {
            return Err(ChangeError::NotSelfSigned);
        }
        self.effect_allowed(&a.change, after)?;
        if self.state.pending.get(&a.change).is_some_and(|p| p.contains_key(&a.approver)) {
            return Err(ChangeError::Duplicate(a.approver));
        }
        if a.change.needs_vote()
            && self.state.pending.values().filter(|p| p.contains_key(&a.approver)).count() >= MAX_PENDING_PER_APPROVER
        {
            return Err(ChangeError::TooManyPending(a.approver));
        }
        // The signature last: everything above is cheap and refuses most junk.
        if !sa.signature_ok(network_id) {
            return Err(ChangeError::BadSignature);
        }
        let approvers = self.state.pending.entry(a.change.clone()).or_default();
        approvers.insert(a.approver, a.signed_at);
        let current = &self.state.current;
        let done =
            !a.change.needs_vote() || approvers.keys().filter(|x| current.contains(x)).count() >= current.quorum();
        if !done {
            return Ok(None);
        }
        let change = a.change.clone();
        Ok(Some(self.complete(change, after)))
    }
}

/// Approvals this node holds until a block carries them: its own, and those
/// gossiped by its peers. Bounded per approver. Approvals of upgrade plans are
/// held but offered ([`Self::iter`]) only while the proposer policy allows it
/// ([`Self::set_carry_plans`] with [`may_carry_plans`]); until told, never, so
/// a proposer never puts a plan in a block a member of 0.1.0 cannot decode.
#[derive(Debug, Default)]
pub(crate) struct ApprovalPool {
    items: BTreeMap<(Change, NodeId), SignedApproval>,
    carry_plans: bool,
}

impl ApprovalPool {
    /// Adds an approval the caller checked (so its approver is a member);
    /// false when it is held already or its approver has
    /// [`MAX_POOL_PER_APPROVER`] waiting.
    pub(crate) fn add(&mut self, sa: SignedApproval) -> bool {
        let key = (sa.approval.change.clone(), sa.approval.approver);
        if self.items.contains_key(&key) {
            return false;
        }
        let mine = self.items.keys().filter(|(_, a)| *a == sa.approval.approver).count();
        if mine >= MAX_POOL_PER_APPROVER {
            return false;
        }
        self.items.insert(key, sa);
        true
    }

    /// The approvals on offer for the next blocks (and for peers that connect):
    /// every one held, those of upgrade plans only while plans may be carried.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SignedApproval> {
        let carry = self.carry_plans;
        self.items.values().filter(move |sa| carry || sa.approval.change.plan().is_none())
    }

    /// Every approval held, those of upgrade plans too: what this node shows
    /// (`/members`, `/upgrade`) and relays to peers that connect (the
    /// transport sends a plan's approval only to peers whose wire version
    /// decodes it).
    pub(crate) fn held(&self) -> impl Iterator<Item = &SignedApproval> {
        self.items.values()
    }

    /// Whether approvals of upgrade plans are on offer: the proposer policy's
    /// answer ([`may_carry_plans`]) for the connected peers, set before each
    /// proposal.
    pub(crate) fn set_carry_plans(&mut self, carry: bool) {
        self.carry_plans = carry;
    }

    /// Whether an approval of `change` by `approver` is held (one per pair:
    /// [`Self::add`] refuses another).
    pub(crate) fn has(&self, change: &Change, approver: NodeId) -> bool {
        self.items.contains_key(&(change.clone(), approver))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The approvals held and about their bytes (each with its key).
    pub(crate) fn usage(&self) -> Usage {
        let each = std::mem::size_of::<SignedApproval>() + std::mem::size_of::<(Change, NodeId)>();
        Usage::new(self.items.len(), self.items.len() * each)
    }

    /// Keeps what the next block could still carry: a block that carried an
    /// approval, a change that completed or an expiry makes it go.
    pub(crate) fn retain_valid(&mut self, membership: &Membership, network_id: &[u8; 32]) {
        self.items.retain(|_, sa| membership.check(sa, network_id).is_ok());
    }
}

/// Proposer policy: whether a block this node proposes may carry approvals of
/// upgrade plans, which a member on wire version 3 (0.1.0) cannot decode. Only
/// while every member of `set` (in force at the proposed height) other than
/// `me` is connected at [`UPGRADE_WIRE`] or later; `wire` holds the connected
/// peers' versions. A member that is away may run anything: its turn waits.
pub(crate) fn may_carry_plans(set: &MemberSet, me: NodeId, wire: &BTreeMap<NodeId, u16>) -> bool {
    set.iter().all(|(id, _)| *id == me || wire.get(id).is_some_and(|v| *v >= UPGRADE_WIRE))
}

/// Whether an address may enter the chain. Only what the address itself says
/// counts: which other member holds an address depends on the genesis file's
/// addresses, which the network id does not cover, so it is no rule of the chain
/// (a node refuses it before signing its own approval, with
/// [`MemberSet::holder_of`]). One spelling per address (an IPv4-mapped IPv6
/// address is the IPv4 one), and no IPv6 scope or flow label: the codec does not
/// carry them, so a node holding the address in memory would compare it
/// differently from one that decoded it.
fn check_addr(addr: SocketAddr) -> Result<(), ChangeError> {
    let scoped = matches!(addr, SocketAddr::V6(v6) if v6.scope_id() != 0 || v6.flowinfo() != 0);
    if scoped
        || crate::net::canonical(addr) != addr
        || addr.ip().is_unspecified()
        || addr.port() == 0
        || addr.ip().is_multicast()
    {
        return Err(ChangeError::BadAddress(addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::genesis::Member;

    const NET: [u8; 32] = [5; 32];

    fn identity(i: u8) -> Identity {
        Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[i; 32])).unwrap()
    }

    fn addr(i: u8) -> SocketAddr {
        format!("127.0.0.{i}:24100").parse().unwrap()
    }

    /// A genesis of members 1..=n, min_active 3, a TTL of 100 heights.
    fn genesis(n: u8) -> Membership {
        let members = (1..=n).map(|i| Member { id: identity(i).id(), addr: addr(i) }).collect();
        let network = Network {
            name: "t".into(),
            genesis_time_ms: 0,
            block_interval_ms: 1000,
            min_active: 3,
            members,
            max_block_bytes: None,
            max_block_txs: None,
            id: NET,
        };
        let mut m = Membership::genesis(&network);
        m.params.ttl = 100;
        m
    }

    fn approve(by: u8, change: Change, signed_at: Height) -> SignedApproval {
        Approval { change, approver: identity(by).id(), signed_at }.sign(&NET, &identity(by))
    }

    fn add(i: u8) -> Change {
        Change::Add { id: identity(i).id(), addr: addr(i) }
    }

    #[test]
    fn the_pool_holds_a_share_per_approver_that_no_other_approver_can_take() {
        let mut pool = ApprovalPool::default();
        // 40 members approve as much as they may (more than a cap of 256 on
        // the whole pool would have held).
        for by in 1..=40u8 {
            for j in 0..MAX_POOL_PER_APPROVER as u8 {
                assert!(pool.add(approve(by, add(100 + j), 1)), "approver {by}'s approval {j}");
            }
            assert!(!pool.add(approve(by, add(120), 1)), "approver {by}: one over its share");
        }
        assert_eq!(pool.len(), 40 * MAX_POOL_PER_APPROVER);
        // Another member (this node, say) still has its whole share.
        assert!(pool.add(approve(41, remove(7), 1)));
        assert!(!pool.add(approve(41, remove(7), 1)), "held already");
        assert!(pool.has(&remove(7), identity(41).id()));
    }

    fn remove(i: u8) -> Change {
        Change::Remove { id: identity(i).id() }
    }

    /// Applies blocks until `applied == height - 1`, empty.
    fn advance_to(m: &mut Membership, height: Height) {
        while m.applied() + 1 < height {
            m.apply(&[], &NET);
        }
    }

    #[test]
    fn an_add_needs_more_than_two_thirds_and_is_in_force_two_heights_later() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        let five = identity(5).id();
        // Two of four approve in block 10: pending, nothing changes.
        let done = m.apply(&[approve(1, add(5), 9), approve(2, add(5), 9)], &NET);
        assert!(done.is_empty());
        assert_eq!(m.pending()[0].approvals.len(), 2);
        assert_eq!(m.pending()[0].required, 3);
        // The third, in block 11: complete, in force at 13.
        let done = m.apply(&[approve(3, add(5), 10)], &NET);
        assert_eq!(done, vec![Completed { change: add(5), height: 11, in_force: 13 }]);
        assert!(m.pending().is_empty());
        assert!(!m.at(12).contains(&five), "height 12 still has the old set");
        assert!(m.at(13).contains(&five));
        assert!(m.reachable().iter().any(|(id, _)| *id == five), "the transport admits it one height early");
        m.apply(&[], &NET);
        assert!(m.current().contains(&five));
        assert_eq!(m.current().get(&five).unwrap().since, 13);
        assert_eq!(m.current().quorum(), 4, "five members need four votes");
    }

    #[test]
    fn refused_approvals_say_why_and_change_nothing() {
        let mut m = genesis(4);
        advance_to(&mut m, 50);
        let mut forged = approve(1, add(5), 40);
        forged.signature[0] ^= 1;
        let stranger = approve(9, add(5), 40);
        let table: Vec<(&str, SignedApproval, ChangeError)> = vec![
            ("a forged signature", forged, ChangeError::BadSignature),
            ("a non-member", stranger, ChangeError::NotAMember(identity(9).id())),
            (
                "signed ahead of the chain",
                approve(1, add(5), 50),
                ChangeError::FromTheFuture { signed_at: 50, height: 50 },
            ),
            ("adding a member", approve(1, add(2), 40), ChangeError::AlreadyMember(identity(2).id())),
            ("removing a stranger", approve(1, remove(9), 40), ChangeError::UnknownMember(identity(9).id())),
            (
                "an IPv6 address with a scope",
                approve(1, Change::Add { id: identity(5).id(), addr: "[fe80::1%2]:24100".parse().unwrap() }, 40),
                ChangeError::BadAddress("[fe80::1%2]:24100".parse().unwrap()),
            ),
            (
                "an unspecified address",
                approve(1, Change::Add { id: identity(5).id(), addr: "0.0.0.0:1".parse().unwrap() }, 40),
                ChangeError::BadAddress("0.0.0.0:1".parse().unwrap()),
            ),
            (
                "someone else's address",
                approve(1, Change::SetAddr { id: identity(2).id(), addr: addr(9), seq: 1 }, 40),
                ChangeError::NotSelfSigned,
            ),
            (
                "a stale address sequence",
                approve(2, Change::SetAddr { id: identity(2).id(), addr: addr(9), seq: 0 }, 40),
                ChangeError::StaleSequence { got: 0, current: 0 },
            ),
        ];
        let before = m.clone();
        for (what, sa, want) in table {
            assert_eq!(m.check(&sa, &NET), Err(want.clone()), "{what}");
            assert_eq!(m.validate(std::slice::from_ref(&sa), &NET), Err((0, want)), "{what}: in a block");
        }
        assert_eq!(m, before, "nothing changed");
        // Signed at 40 with a TTL of 100: valid in block 140, expired in 141.
        let late = approve(1, add(5), 40);
        advance_to(&mut m, 140);
        assert_eq!(m.check(&late, &NET), Ok(()));
        m.apply(&[], &NET);
        assert_eq!(m.check(&late, &NET), Err(ChangeError::Expired { signed_at: 40, until: 140 }));
    }

    #[test]
    fn a_member_approves_a_change_once() {
        let mut m = genesis(4);
        advance_to(&mut m, 20);
        let a = approve(1, add(5), 19);
        assert_eq!(m.validate(&[a.clone(), a.clone()], &NET), Err((1, ChangeError::Duplicate(identity(1).id()))));
        m.apply(std::slice::from_ref(&a), &NET);
        // Signed again later: still the same approver.
        assert_eq!(m.check(&approve(1, add(5), 20), &NET), Err(ChangeError::Duplicate(identity(1).id())));
    }

    #[test]
    fn approvals_cannot_be_replayed_after_the_change_completed() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        let old = [approve(1, add(5), 9), approve(2, add(5), 9), approve(3, add(5), 9)];
        m.apply(&old, &NET);
        advance_to(&mut m, 20);
        // Five members; remove 5 again with four approvals.
        let rm: Vec<_> = (1..=4).map(|i| approve(i, remove(5), 19)).collect();
        assert_eq!(m.apply(&rm, &NET).len(), 1);
        advance_to(&mut m, 30);
        assert!(!m.current().contains(&identity(5).id()));
        // The old approvals for adding 5 are still within their TTL but were
        // signed before the removal completed.
        assert_eq!(m.check(&old[0], &NET), Err(ChangeError::Superseded { signed_at: 9, completed: 20 }));
    }

    #[test]
    fn a_block_that_completes_a_change_refuses_later_approvals_of_it() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        let four: Vec<_> = (1..=4).map(|i| approve(i, add(5), 9)).collect();
        // The fourth comes after the third completed the change in this block.
        assert_eq!(m.validate(&four, &NET), Err((3, ChangeError::Superseded { signed_at: 9, completed: 10 })));
        let selected = m.select(&four, &NET);
        assert_eq!(selected.len(), 3, "the proposer leaves the surplus out");
        assert_eq!(m.validate(&selected, &NET), Ok(()));
    }

    #[test]
    fn the_set_never_shrinks_below_min_active() {
        let mut m = genesis(4);
        advance_to(&mut m, 5);
        let rm4: Vec<_> = (1..=3).map(|i| approve(i, remove(4), 4)).collect();
        assert_eq!(m.apply(&rm4, &NET).len(), 1);
        // Three left from height 7 (min_active 3): a removal of a third is refused
        // as soon as the set it would apply to has three.
        assert_eq!(
            m.check(&approve(1, remove(3), 5), &NET),
            Err(ChangeError::BelowMinActive { members: 2, min_active: 3 })
        );
    }

    #[test]
    fn an_address_change_needs_only_its_member_and_a_higher_sequence() {
        let mut m = genesis(4);
        advance_to(&mut m, 8);
        let two = identity(2).id();
        let moved = Change::SetAddr { id: two, addr: addr(42), seq: 1 };
        let done = m.apply(&[approve(2, moved.clone(), 7)], &NET);
        assert_eq!(done, vec![Completed { change: moved.clone(), height: 8, in_force: 10 }]);
        assert_eq!(m.at(9).get(&two).unwrap().addr, addr(2));
        assert_eq!(m.at(10).get(&two).unwrap().addr, addr(42));
        assert!(m.reachable().contains(&(two, addr(42))), "the transport dials the new address");
        assert_eq!(m.check(&approve(2, moved, 8), &NET), Err(ChangeError::StaleSequence { got: 1, current: 1 }));
    }

    #[test]
    fn approvals_of_removed_members_stop_counting() {
        let mut m = genesis(5);
        advance_to(&mut m, 10);
        // Members 4 and 5 approve adding 6.
        m.apply(&[approve(4, add(6), 9), approve(5, add(6), 9)], &NET);
        // Member 5 is removed (four of five approve), in force at 13.
        let rm: Vec<_> = (1..=4).map(|i| approve(i, remove(5), 10)).collect();
        m.apply(&rm, &NET);
        advance_to(&mut m, 13);
        // Four members now: 4's approval counts, 5's does not.
        assert_eq!(m.pending()[0].approvals, vec![identity(4).id()]);
        // Two more of the four complete it (3 of 4).
        let done = m.apply(&[approve(1, add(6), 12), approve(2, add(6), 12)], &NET);
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn a_change_completes_when_a_removal_leaves_its_approvers_a_quorum() {
        let mut m = genesis(5);
        advance_to(&mut m, 10);
        // 1, 2 and 3 approve adding 6: three of five, four needed.
        m.apply(&[approve(1, add(6), 9), approve(2, add(6), 9), approve(3, add(6), 9)], &NET);
        // 5 is removed (four of five), in force at 13: four members, three needed.
        let rm: Vec<_> = (1..=4).map(|i| approve(i, remove(5), 10)).collect();
        m.apply(&rm, &NET);
        advance_to(&mut m, 13);
        assert_eq!(m.pending()[0].approvals.len(), 3);
        assert_eq!(m.pending()[0].required, 3);
        // The next block completes it with no new approval.
        let done = m.apply(&[], &NET);
        assert_eq!(done, vec![Completed { change: add(6), height: 13, in_force: 15 }]);
        assert!(m.pending().is_empty());
    }

    #[test]
    fn pending_approvals_expire() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        m.apply(&[approve(1, add(5), 9)], &NET);
        assert_eq!(m.pending()[0].expires_at, 109);
        advance_to(&mut m, 109);
        assert_eq!(m.pending().len(), 1, "it may still count in block 109");
        m.apply(&[], &NET);
        assert!(m.pending().is_empty());
    }

    fn upgrade(version: u16, height: Height) -> Change {
        Change::Upgrade { version, height }
    }

    #[test]
    fn an_upgrade_plan_needs_more_than_two_thirds_and_schedules_its_version() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        let plan = upgrade(4, 100);
        assert!(m.apply(&[approve(1, plan.clone(), 9), approve(2, plan.clone(), 9)], &NET).is_empty());
        assert_eq!(m.pending()[0].required, 3);
        assert_eq!(m.version_at(1_000), GENESIS_VERSION, "a plan still collecting approvals schedules nothing");
        let done = m.apply(&[approve(3, plan.clone(), 10)], &NET);
        assert_eq!(done, vec![Completed { change: plan, height: 11, in_force: 100 }]);
        assert!(m.pending().is_empty());
        assert_eq!(m.schedule(), &[Plan { version: 4, height: 100 }]);
        assert_eq!((m.version_at(11), m.version_at(99)), (3, 3), "version 3 rules until the plan's height");
        assert_eq!((m.version_at(100), m.version_at(u64::MAX)), (4, 4));
        assert_eq!(m.current().len(), 4, "the member set is left alone");
    }

    #[test]
    fn a_plan_for_a_version_this_release_does_not_know_is_accepted() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        let plan = upgrade(9_000, 500);
        let done = m.apply(&(1..=3).map(|i| approve(i, plan.clone(), 9)).collect::<Vec<_>>(), &NET);
        assert_eq!(done.len(), 1, "a node must learn where it has to stop");
        assert_eq!(m.version_at(500), 9_000);
    }

    #[test]
    fn refused_upgrade_plans_say_why() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        m.apply(&(1..=3).map(|i| approve(i, upgrade(5, 200), 9)).collect::<Vec<_>>(), &NET);
        advance_to(&mut m, 50);
        let table: Vec<(&str, Change, ChangeError)> = vec![
            (
                "a version not above the one scheduled",
                upgrade(5, 300),
                ChangeError::VersionNotAbove { version: 5, scheduled: 5 },
            ),
            (
                "a version below the one scheduled, before it",
                upgrade(4, 150),
                ChangeError::VersionNotAbove { version: 4, scheduled: 5 },
            ),
            ("the genesis version", upgrade(3, 300), ChangeError::VersionNotAbove { version: 3, scheduled: 5 }),
            (
                "a later version before the scheduled plan",
                upgrade(6, 150),
                ChangeError::PlanNotAfter { height: 150, scheduled: 200 },
            ),
        ];
        for (what, change, want) in table {
            assert_eq!(m.check(&approve(1, change, 49), &NET), Err(want), "{what}");
        }
        assert_eq!(
            m.check(&approve(9, upgrade(6, 300), 49), &NET),
            Err(ChangeError::NotAMember(identity(9).id())),
            "only members approve plans"
        );
        let mut fresh = genesis(4);
        advance_to(&mut fresh, 50);
        assert_eq!(
            fresh.check(&approve(1, upgrade(4, 69), 49), &NET),
            Err(ChangeError::PlanTooSoon { height: 69, earliest: 70 }),
        );
        assert_eq!(fresh.check(&approve(1, upgrade(4, 70), 49), &NET), Ok(()), "exactly UPGRADE_NOTICE on");
    }

    #[test]
    fn a_plan_whose_height_came_too_near_can_no_longer_complete() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        let plan = upgrade(4, 40);
        m.apply(&[approve(1, plan.clone(), 9), approve(2, plan.clone(), 9)], &NET);
        advance_to(&mut m, 25);
        assert_eq!(
            m.check(&approve(3, plan.clone(), 24), &NET),
            Err(ChangeError::PlanTooSoon { height: 40, earliest: 45 }),
            "completed in block 25 it would leave 15 heights"
        );
        assert_eq!(m.version_at(40), GENESIS_VERSION);
    }

    #[test]
    fn competing_plans_for_a_version_lapse_when_one_completes() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        // Member 4 approves its own height for version 4 first.
        m.apply(&[approve(4, upgrade(4, 900), 9)], &NET);
        m.apply(&[approve(4, upgrade(6, 2_000), 10)], &NET);
        let wanted: Vec<_> = (1..=3).map(|i| approve(i, upgrade(4, 300), 11)).collect();
        assert_eq!(m.apply(&wanted, &NET).len(), 1, "the competing plan held nothing up");
        let left: Vec<Change> = m.pending().into_iter().map(|p| p.change).collect();
        assert_eq!(left, vec![upgrade(6, 2_000)], "the other plan for 4 lapsed; a later version may follow");
        assert_eq!(m.schedule(), &[Plan { version: 4, height: 300 }]);
    }

    #[test]
    fn proposers_carry_plans_only_when_every_member_speaks_a_wire_that_decodes_them() {
        let m = genesis(4);
        let me = identity(1).id();
        let wire = |versions: &[(u8, u16)]| -> BTreeMap<NodeId, u16> {
            versions.iter().map(|(i, v)| (identity(*i).id(), *v)).collect()
        };
        let table: [(&str, BTreeMap<NodeId, u16>, bool); 4] = [
            ("every other member on wire 4", wire(&[(2, 4), (3, 4), (4, 4)]), true),
            ("one member on 0.1.0 (wire 3)", wire(&[(2, 4), (3, 3), (4, 4)]), false),
            ("one member away: it may run anything", wire(&[(2, 4), (3, 4)]), false),
            ("a later wire version decodes them too", wire(&[(2, 5), (3, 4), (4, 9)]), true),
        ];
        for (what, connected, want) in table {
            assert_eq!(may_carry_plans(m.current(), me, &connected), want, "{what}");
        }
        let mut pool = ApprovalPool::default();
        pool.add(approve(2, upgrade(4, 100), 1));
        pool.add(approve(2, add(5), 1));
        let offered = |pool: &ApprovalPool| pool.iter().map(|sa| sa.approval.change.clone()).collect::<Vec<_>>();
        assert_eq!(offered(&pool), vec![add(5)], "no plans on offer until the policy says so");
        assert!(pool.has(&upgrade(4, 100), identity(2).id()), "the plan is held all the same");
        pool.set_carry_plans(true);
        assert_eq!(offered(&pool), vec![add(5), upgrade(4, 100)]);
        pool.set_carry_plans(false);
        assert_eq!(offered(&pool), vec![add(5)]);
    }

    #[test]
    fn the_state_round_trips_through_the_codec() {
        let mut m = genesis(4);
        advance_to(&mut m, 10);
        m.apply(&(1..=3).map(|i| approve(i, upgrade(4, 100), 9)).collect::<Vec<_>>(), &NET);
        m.apply(&[approve(1, add(5), 10)], &NET);
        let bytes = bincode::encode_to_vec(m.state(), BINCODE).unwrap();
        let (state, _): (MembershipState, usize) = bincode::decode_from_slice(&bytes, BINCODE).unwrap();
        assert_eq!(Membership::restore(m.params(), state), m);
    }
}
