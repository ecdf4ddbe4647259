//! Tendermint consensus as a pure state machine.
//!
//! This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT
//! consensus" (2018); comments cite its line numbers ("L22"). The core takes inputs
//! (a proposal, a vote, a fired timeout, transactions to propose, the quorum gate)
//! together with the current time, and returns outputs (sign and broadcast this,
//! schedule that timeout, this block is decided). It reads no clock, opens no socket
//! and touches no disk, so every rule is tested exhaustively and fast.
//!
//! * The member set is the one in force at each height ([`Membership`]: changes
//!   committed in block H count from H + 2). Members are sorted by `NodeId`;
//!   `proposer(h, r) = members_h[(h + r) mod n_h]`.
//! * `q = floor(2n/3) + 1` votes make a quorum ("2f+1"); `n - q + 1` make "f+1",
//!   with `n` the size of the current height's set.
//! * Timeouts grow with the round, `base + delta * r`, without a bound short of
//!   [`MAX_TIMEOUT_MS`]: the paper's liveness needs timeouts that outgrow any
//!   message delay (see [`Timeouts`]).
//! * A height starts `block_interval` after its parent's timestamp (the
//!   "commit timeout"), so blocks come at the configured pace; never more than one
//!   interval after the commit here, so a clock behind the proposers' does not
//!   slow this node (the wait is paced by the local clock from the commit).
//! * The quorum gate: while fewer than the required masternodes are connected the
//!   core proposes nothing and advances no round; fired timeouts wait for the gate.
//! * Every message is verified before it is counted, buffered or reported: its
//!   signer is a member (the proposer of its height and round, for a proposal),
//!   its signature is valid, and a proposal's transactions match its signed
//!   header. Only then is anything said about its signer ([`Misbehaviour`]).
//!   Messages for the next height wait in a buffer with one slot per proposal
//!   round and per (voter, round, step), for a few rounds, bounded in bytes; a
//!   proposal short of room takes the place of later rounds' proposals, never
//!   of earlier ones.
//! * What a height holds is bounded: votes for at most [`MAX_ROUND_AHEAD`]
//!   rounds past ours, one per (voter, round, kind) and at most
//!   [`MAX_CONFLICTING`] conflicting versions more; proposals one per round,
//!   their blocks within [`PROPOSALS_HELD_BLOCKS`] of the largest block in
//!   bytes. Past that a proposal is held only in place of one of a round
//!   farther from ours (future rounds before past ones at equal distance),
//!   never in place of the current round's, the valid round's or the locked
//!   round's; one given up may come again. Giving one up never touches
//!   safety (locks and votes are kept); at worst a round decided elsewhere is
//!   taken by sync.
//! * The rules of a height's protocol version apply ([`super::rules`]): from
//!   version 4, a block's transactions are distinct and a fresh proposal is
//!   prevoted (L22) only when its timestamp is timely, within the synchrony
//!   bounds of its arrival here (proposer-based timestamps).
//! * Double-sign protection: the core never signs at or below the last
//!   `(height, round, step)` it signed, which the shell persists before a signature
//!   leaves the node and hands back after a restart.
//! * The lock (`lockedRound`) and `validRound` never move to an older round,
//!   across restarts too: a restarted node resumes at the round it last signed
//!   in, with the lock it persisted, never at round 0 below them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::block::{
    members_digest, parent_link, tx_ids_root_and_repeat, tx_root_and_repeat, Block, BlockError, Hash, Header, Height,
    Limits, Round, TxCheck,
};
use super::limits::Usage;
use super::members::{Completed, MemberSet, Membership, MembershipState, SignedApproval};
use super::quorum::vote_threshold;
use super::rules::{Rules, Synchrony};
use super::vote::{Certificate, Committed, Proposal, SignRecord, SignedProposal, SignedVote, Step, Vote, VoteKind};
use crate::identity::{Identity, NodeId};

/// Votes for rounds this far beyond ours are dropped: a member cannot make us
/// store votes for a million rounds.
pub const MAX_ROUND_AHEAD: Round = 64;
/// Rounds of the next height whose messages are buffered: a node one block
/// behind needs the first rounds of the next height, not a member's hundredth.
pub const MAX_FUTURE_ROUND: Round = 8;
/// Bytes buffered for the next height, at most (proposals by their transactions,
/// votes at [`FUTURE_VOTE_BYTES`] each).
pub const MAX_FUTURE_BYTES: usize = 8 * 1024 * 1024;
const FUTURE_VOTE_BYTES: usize = 256;
/// Conflicting votes kept per member, round and kind, beyond its first.
pub const MAX_CONFLICTING: usize = 2;
/// Proposals of the current height are held within this many times the
/// largest a proposal may hold ([`max_proposal_bytes`]): the current round's,
/// the valid round's and the locked round's, and room for one more. A member
/// proposing full blocks for every round it leads up to [`MAX_ROUND_AHEAD`]
/// would otherwise make every node hold one per round (16 blocks of 3 MiB at
/// four members).
pub const PROPOSALS_HELD_BLOCKS: usize = 4;
/// About what one vote held for the current height takes in memory: the signed
/// vote, its signature and its place in the map (as the next height's are
/// counted, [`FUTURE_VOTE_BYTES`]).
pub const VOTE_BYTES: usize = FUTURE_VOTE_BYTES;
/// A member shown to be ahead at a height is reported again after this long, so a
/// sync that failed is tried again.
pub(crate) const AHEAD_REPEAT_MS: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct Config {
    pub network_id: [u8; 32],
    /// The member sets from the height the core starts at: `applied()` is the
    /// height before it.
    pub members: Membership,
    pub block_interval_ms: u64,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub propose_ms: u64,
    pub prevote_ms: u64,
    pub precommit_ms: u64,
    pub delta_ms: u64,
}

/// The longest timeout: an overflow guard, far above any delay the chain is
/// meant to survive.
pub(crate) const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// Timeouts of round `r` are `base + delta * r`, growing without a bound short
/// of [`MAX_TIMEOUT_MS`] (saturating, so no round overflows them).
///
/// Growth is what makes Tendermint live: after the network stabilises, messages
/// take at most some unknown Δ, and a round can only succeed once its timeouts
/// exceed Δ. A cap on growth (timeouts stopped growing after round 8, at about
/// 5 s) meant that where delays exceed the cap no round ever succeeds.
///
/// The cap was there because a long run of failed rounds (a partition, a flapping
/// quorum) left nodes at high rounds with long timeouts, and the chain resumed
/// late once it healed. Growth without a cap does not bring that back in a form
/// that matters: rounds reset to 0 at every height, so long timeouts last for one
/// stuck height only; a round whose proposer is up and reachable ends as soon as
/// its votes arrive, never waiting for a timeout; a node behind the others joins
/// their round as soon as f+1 of them are there (L55), without waiting out its
/// own; and a node whose messages were lost in the partition sends them again
/// after a few block intervals without a block (the producer's rebroadcast). What
/// a long timeout can still cost is one wait in a round whose proposer is down,
/// which is the price of being live when delays are long.
impl Timeouts {
    /// A timeout of `base_ms` in `round`.
    pub(crate) fn in_round(&self, base_ms: u64, round: Round) -> u64 {
        base_ms.saturating_add(self.delta_ms.saturating_mul(round as u64)).min(MAX_TIMEOUT_MS)
    }

    pub fn for_interval(block_interval_ms: u64) -> Self {
        let base = block_interval_ms.clamp(500, 3_000);
        Timeouts { propose_ms: base + 500, prevote_ms: base, precommit_ms: base, delta_ms: 500 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeout {
    Propose {
        height: Height,
        round: Round,
    },
    Prevote {
        height: Height,
        round: Round,
    },
    Precommit {
        height: Height,
        round: Round,
    },
    /// The commit timeout: start round 0 of `height`.
    StartHeight {
        height: Height,
    },
    /// Our clock passed the parent's timestamp: the proposer of `round`, which
    /// waited for that under timely proposals, asks for its value now.
    Stamp {
        height: Height,
        round: Round,
    },
}

#[derive(Debug, Clone)]
pub enum Input {
    Proposal(SignedProposal),
    /// A proposal whose transactions the caller already matched, each by an id
    /// that hashes to the header's root and none twice: a compact proposal
    /// rebuilt from the mempool ([`super::compact`]), whose transactions were
    /// hashed as they entered the node. Its transactions are not hashed again.
    CheckedProposal(SignedProposal),
    Vote(SignedVote),
    Timeout(Timeout),
    /// Transactions for the block we were asked to propose with `NeedValue`.
    Value {
        height: Height,
        round: Round,
        txs: Vec<Vec<u8>>,
        /// The root over `txs`' ids ([`super::block::tx_root_of_ids`]), which
        /// the caller holds them by: the block's root without hashing them.
        tx_root: Hash,
        /// Membership approvals, chosen with [`Membership::select`].
        changes: Vec<SignedApproval>,
    },
    /// A block with its certificate, fetched by sync.
    Commit(Committed),
    /// The quorum gate opened or closed.
    Quorum(bool),
}

pub(crate) use super::misbehaviour::Misbehaviour;
pub(crate) use super::vote::{Lock, Signed};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Persist `record` (and `lock`, when there is one) durably, then broadcast
    /// `message`.
    Sign {
        record: SignRecord,
        message: Signed,
        /// Set with a precommit for a value: the lock it comes from (L36), which
        /// must survive a restart for the lock to mean anything.
        lock: Option<Box<Lock>>,
    },
    Schedule {
        timeout: Timeout,
        after_ms: u64,
    },
    /// We propose in this round and hold no valid value: send `Input::Value`.
    NeedValue {
        height: Height,
        round: Round,
    },
    /// Store durably (the block with the membership it leaves) before anything
    /// else happens; the core has moved on.
    Decided {
        committed: Committed,
        /// The membership after this block, to persist with it.
        membership: Box<MembershipState>,
        /// The member changes this block completed (in force two heights on).
        completed: Vec<Completed>,
        /// The block's transaction ids, in order, where the core hashed its
        /// transactions to check it (a synced block's): the commit takes them
        /// out of the mempool by these, hashing nothing again. `None` where
        /// the driver holds them (its own or a rebuilt proposal) or the check
        /// was made on arrival (a full proposal).
        tx_ids: Option<Vec<Hash>>,
    },
    /// A message broke the protocol; [`Misbehaviour::culprit`] says whether it
    /// proves a member guilty.
    Misbehaviour(Misbehaviour),
    /// A member signed a message for a higher height than ours: time to sync.
    /// Reported once per member and height (again after [`AHEAD_REPEAT_MS`]).
    Ahead {
        node: NodeId,
        height: Height,
    },
}

/// What [`Core::held`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// Votes of the current height, every round.
    pub votes: Usage,
    /// Proposals of the current height, one per round at most.
    pub proposals: Usage,
    /// Messages kept for the next height.
    pub next_height: Usage,
}

#[derive(Debug, Default)]
struct RoundVotes {
    prevotes: BTreeMap<NodeId, SignedVote>,
    precommits: BTreeMap<NodeId, SignedVote>,
    /// Second votes of equivocating members, one per (voter, kind), kept only
    /// when they are for nil, for a value proposed at this height or for one
    /// another voter's first vote of the kind names. They count towards
    /// that value: the paper counts messages from distinct processes per value,
    /// and a member that sent a value to some of us and nil to others must not
    /// leave the ones who saw one version unable ever to see the polka the
    /// others saw (found by the simulation: a height stalled for good). Two
    /// quorums for different values would still need f+1 equivocators.
    conflicting: BTreeMap<(NodeId, VoteKind, Option<Hash>), SignedVote>,
}

impl RoundVotes {
    fn of(&self, kind: VoteKind) -> &BTreeMap<NodeId, SignedVote> {
        match kind {
            VoteKind::Prevote => &self.prevotes,
            VoteKind::Precommit => &self.precommits,
        }
    }

    /// Every vote of `kind` for `value`: each voter's first, and its conflicting
    /// second where that is the one for `value`.
    fn for_value(&self, kind: VoteKind, value: Option<Hash>) -> impl Iterator<Item = &SignedVote> {
        let firsts = self.of(kind).values().filter(move |v| v.vote.block == value);
        let seconds = self.conflicting.iter().filter(move |((_, k, b), _)| *k == kind && *b == value);
        firsts.chain(seconds.map(|(_, v)| v))
    }

    fn count(&self, kind: VoteKind, value: Option<Hash>) -> usize {
        self.for_value(kind, value).count()
    }

    /// Whether this exact vote is held, as a first or a second version.
    fn holds(&self, v: &Vote) -> bool {
        self.of(v.kind).get(&v.voter).is_some_and(|f| f.vote == *v)
            || self.conflicting.get(&(v.voter, v.kind, v.block)).is_some_and(|c| c.vote == *v)
    }

    /// Adds a verified vote: its voter's first of its kind, or, where
    /// `may_conflict` (the value is nil or proposed at this height) or another
    /// voter's first vote of its kind names its value, a second version, at
    /// most [`MAX_CONFLICTING`] more per voter and kind: memory stays bounded.
    ///
    /// A value the first votes name counts before its proposal is held: a
    /// node that never held a round's proposal (it came compact in a round
    /// the node had left behind, so not fetched) learns the value only from
    /// a later re-proposal, and versions relayed before that would be
    /// dropped, so that the polka its valid round claims is complete only
    /// with the next relay, often after the propose timeout (found by the
    /// simulation: seed 2117, five correct members of seven, one of them
    /// prevoting nil on the re-proposal of a peer's locked value, the polka
    /// complete there 16 ms after its propose timeout). A value some voter's
    /// first vote names is not one made up to fill the slots.
    ///
    /// Past that bound a version takes the place of the held one whose value
    /// the other voters' first votes support least, when its own value has
    /// more support. Kept in the order they came, the versions held would be
    /// the equivocator's choice, per receiver: versions for values nobody
    /// else votes, sent first, kept out the one a polka of correct members
    /// needs, though a peer that counted it relays it again and again (found
    /// by the simulation: a height stalled for good, each member seeing a
    /// polka the others could not). A value that can still reach a quorum
    /// has the first votes of f+1 correct members (n = 3f + 1); of the other
    /// 2f - 1 first votes at most one other value gets as many, so once
    /// those first votes came, two slots always hold its version (one given
    /// up before they came is taken with the next relay of it).
    fn add(&mut self, sv: SignedVote, may_conflict: bool) -> Added {
        let (voter, kind, value) = (sv.vote.voter, sv.vote.kind, sv.vote.block);
        let firsts = match kind {
            VoteKind::Prevote => &mut self.prevotes,
            VoteKind::Precommit => &mut self.precommits,
        };
        match firsts.get(&voter) {
            None => {
                firsts.insert(voter, sv);
                return Added::First;
            }
            Some(first) if first.vote.block == value => return Added::Again,
            Some(_) => {}
        }
        if self.conflicting.contains_key(&(voter, kind, value)) {
            return Added::Again;
        }
        let held: Vec<Option<Hash>> =
            self.conflicting.keys().filter(|(v, k, _)| *v == voter && *k == kind).map(|(_, _, b)| *b).collect();
        let seconds = held.len();
        let support = |b: Option<Hash>| self.of(kind).values().filter(|f| f.vote.block == b).count();
        if !may_conflict && support(value) == 0 {
            return Added::NotCounted { news: seconds == 0 };
        }
        if seconds < MAX_CONFLICTING {
            self.conflicting.insert((voter, kind, value), sv);
            return Added::Second { news: seconds == 0 };
        }
        let weakest = held.iter().copied().min_by_key(|b| support(*b));
        match weakest.filter(|w| support(*w) < support(value)) {
            Some(w) => {
                self.conflicting.remove(&(voter, kind, w));
                self.conflicting.insert((voter, kind, value), sv);
                Added::Second { news: false }
            }
            None => Added::NotCounted { news: false },
        }
    }

    fn total(&self, kind: VoteKind) -> usize {
        self.of(kind).len()
    }
}

/// What [`RoundVotes::add`] did with a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    /// The voter's first vote of its kind in the round.
    First,
    /// A version already held.
    Again,
    /// A conflicting version, counted; `news` when it is the voter's first.
    Second { news: bool },
    /// A conflicting version not kept; `news` when no other is held.
    NotCounted { news: bool },
}

/// Verified messages for the next height, one per slot.
#[derive(Debug, Default)]
struct NextHeight {
    /// With the local time each arrived (a timely proposal is judged by when it
    /// reached us, not by when its height began here).
    proposals: BTreeMap<Round, (SignedProposal, u64)>,
    votes: BTreeMap<(Round, Step, NodeId), SignedVote>,
    bytes: usize,
}

impl NextHeight {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.proposals.len() + self.votes.len()
    }

    /// Whether a proposal of `round` taking `bytes` fits within
    /// [`MAX_FUTURE_BYTES`], in place of proposals of later rounds if need be
    /// (the latest first): the first rounds of a height are the ones a node
    /// one block behind needs, and a member proposing full blocks for its own
    /// later rounds must not keep the others' earlier ones out. `evict`: give
    /// those up now.
    fn room_for(&mut self, round: Round, bytes: usize, evict: bool) -> bool {
        let mut held = self.bytes;
        let mut given_up = Vec::new();
        for (r, (p, _)) in self.proposals.range(round + 1..).rev() {
            if held + bytes <= MAX_FUTURE_BYTES {
                break;
            }
            held -= proposal_bytes(p);
            given_up.push(*r);
        }
        if held + bytes > MAX_FUTURE_BYTES {
            return false;
        }
        if evict {
            for r in given_up {
                if let Some((p, _)) = self.proposals.remove(&r) {
                    self.bytes -= proposal_bytes(&p);
                }
            }
        }
        true
    }
}

/// Whether a block's transactions were hashed against its root already, and
/// what that found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hashed {
    No,
    /// The first transaction equal to an earlier one, where the rules asked
    /// (see [`tx_root_and_repeat`]).
    Yes {
        first_repeat: Option<usize>,
    },
}

/// About what a buffered proposal holds in memory.
fn proposal_bytes(p: &SignedProposal) -> usize {
    let block = &p.proposal.block;
    block.txs.iter().map(|t| held_tx_bytes(t.len())).sum::<usize>() + block.header.changes.len() * 256 + 512
}

/// What one transaction of a held block takes, at most: its handle (`Bytes`)
/// and an allocation of its own, which the allocator rounds up (glibc's: the
/// length and an 8-byte header in steps of 16, 32 bytes at least; nothing for
/// an empty one), as a transaction of a block this node built holds (the
/// mempool's buffer); a decoded block's transactions share one buffer of
/// their bytes alone, so this counts more than they take. Counted by its
/// length alone, a block of one-byte transactions would be counted at under
/// half of what it takes.
fn held_tx_bytes(len: usize) -> usize {
    let heap = if len == 0 { 0 } else { ((len + 8 + 15) & !15).max(32) };
    std::mem::size_of::<bytes::Bytes>() + heap
}

/// The most [`held_tx_bytes`] takes beyond a transaction's length (for a
/// one-byte one: 32 and 32, less the byte).
const HELD_TX_OVERHEAD: usize = std::mem::size_of::<bytes::Bytes>() + 32;

/// The most [`proposal_bytes`] of a proposal within `limits`.
pub fn max_proposal_bytes(limits: &Limits) -> usize {
    limits.max_block_bytes + limits.max_block_txs * HELD_TX_OVERHEAD + super::members::MAX_CHANGES_PER_BLOCK * 256 + 512
}

pub struct Core {
    cfg: Config,
    identity: Arc<Identity>,
    me: NodeId,
    q: usize,
    f1: usize,
    height: Height,
    round: Round,
    step: Step,
    started: bool,
    /// The last height started here (its `StartHeight` fired) and the local
    /// time it did.
    started_at: Option<(Height, u64)>,
    prev_hash: Hash,
    /// What this height's block carries as `prev_hash`: `prev_hash` itself, or
    /// from version 4 the link to it and the member state it left
    /// ([`super::block::parent_link`]); computed once per height.
    parent_link: Hash,
    prev_ts: u64,
    locked: Option<(Round, Block)>,
    valid: Option<(Round, Block)>,
    proposals: BTreeMap<Round, SignedProposal>,
    /// [`proposal_bytes`] of `proposals`.
    proposals_bytes: usize,
    /// Result of validating each round's proposed block, computed once.
    proposal_ok: BTreeMap<Round, bool>,
    /// When each round's proposal reached this node (local wall clock).
    received: BTreeMap<Round, u64>,
    synchrony: Synchrony,
    votes: BTreeMap<Round, RoundVotes>,
    prevote_timer: BTreeSet<Round>,
    precommit_timer: BTreeSet<Round>,
    polka_seen: BTreeSet<Round>,
    last_signed: Option<SignRecord>,
    quorum: bool,
    deferred: Vec<Timeout>,
    future: NextHeight,
    /// The highest height each member was reported ahead at, and when.
    ahead: BTreeMap<NodeId, (Height, u64)>,
    /// The signer of the first message of the current height that verified
    /// (or repeated one that had) during the input being handled; see
    /// [`Core::handle_signed`].
    heard: Option<NodeId>,
}

impl Core {
    /// A core at `height` (the tip's height + 1) whose parent is `(prev_hash,
    /// prev_ts)`. `last_signed` comes from the store.
    pub fn new(
        cfg: Config,
        identity: Arc<Identity>,
        height: Height,
        prev_hash: Hash,
        prev_ts: u64,
        last_signed: Option<SignRecord>,
    ) -> Core {
        debug_assert_eq!(cfg.members.applied() + 1, height, "the membership is the one before `height`");
        let n = cfg.members.current().len();
        let q = vote_threshold(n);
        let synchrony = Synchrony::for_interval(cfg.block_interval_ms);
        let mut core = Core {
            me: identity.id(),
            identity,
            q,
            f1: n - q + 1,
            cfg,
            height,
            round: 0,
            step: Step::Propose,
            started: false,
            started_at: None,
            prev_hash,
            parent_link: prev_hash,
            prev_ts,
            locked: None,
            valid: None,
            proposals: BTreeMap::new(),
            proposals_bytes: 0,
            proposal_ok: BTreeMap::new(),
            received: BTreeMap::new(),
            synchrony,
            votes: BTreeMap::new(),
            prevote_timer: BTreeSet::new(),
            precommit_timer: BTreeSet::new(),
            polka_seen: BTreeSet::new(),
            last_signed,
            quorum: false,
            deferred: Vec::new(),
            future: NextHeight::default(),
            ahead: BTreeMap::new(),
            heard: None,
        };
        core.parent_link = core.link_to_parent();
        core
    }

    /// The parent link of this height's block under its rules.
    fn link_to_parent(&self) -> Hash {
        let link = self.rules().members_link;
        let digest = if link { members_digest(self.cfg.members.state()) } else { Hash::default() };
        parent_link(self.prev_hash, digest, link)
    }

    pub fn height(&self) -> Height {
        self.height
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn round(&self) -> Round {
        self.round
    }

    /// Whether a proposal of `(height, round)` could be taken in now: one of this
    /// height within the rounds a proposal is accepted for, or of the next height
    /// within the rounds buffered for it, whose slot holds none yet. A compact
    /// proposal that could not is neither rebuilt nor fetched.
    pub(crate) fn wants_proposal(&self, height: Height, round: Round) -> bool {
        if height == self.height {
            round <= self.round + MAX_ROUND_AHEAD && !self.proposals.contains_key(&round)
        } else {
            self.buffers(height, round) && !self.future.proposals.contains_key(&round)
        }
    }

    /// The block proposed in `(height, round)`, if this height's proposal of
    /// that round is here: a peer rebuilding it may ask for its transactions.
    pub(crate) fn proposed_block(&self, height: Height, round: Round) -> Option<&Block> {
        (height == self.height).then(|| self.proposals.get(&round)).flatten().map(|sp| &sp.proposal.block)
    }

    /// The lock (L36): `lockedRound` and the hash of `lockedValue`.
    #[cfg(test)]
    pub(crate) fn lock(&self) -> Option<(Round, Hash)> {
        self.locked.as_ref().map(|(r, b)| (*r, b.hash()))
    }

    pub(crate) fn proposer(&self, height: Height, round: Round) -> NodeId {
        // A set is never empty (changes keep at least `min_active` members); an
        // empty one would have no proposer, and no id is all zeros.
        self.members_at(height).nth_cyclic(height + round as u64).unwrap_or(NodeId([0; 32]))
    }

    /// The member set in force at `height` (past the next height: the latest
    /// known, which is what a message from there can be checked against).
    pub fn members_at(&self, height: Height) -> &MemberSet {
        self.cfg.members.at(height)
    }

    /// The membership as of the last committed block.
    pub fn membership(&self) -> &Membership {
        &self.cfg.members
    }

    /// Schedules the start of the current height; call once after `new`.
    pub(crate) fn start(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let interval = self.cfg.block_interval_ms;
        // One interval after the height before started here, and one interval
        // after the parent's timestamp, which keeps this node in step with the
        // proposers. A parent stamped by a clock behind ours (its proposer's
        // clock read less than its own parent's stamp, so it stamped that
        // + 1 ms) must not make the chain faster than its pace, nor one stamped
        // by a clock ahead of ours slower: when this node started the parent's
        // height, a stamp ahead of our clock says nothing of when that was.
        let started_parent = self.started_at.is_some_and(|(h, _)| h + 1 == self.height);
        let by_start = self.started_at.map_or(0, |(_, at)| (at + interval).saturating_sub(now_ms));
        let by_parent =
            if started_parent && self.prev_ts > now_ms { 0 } else { (self.prev_ts + interval).saturating_sub(now_ms) };
        // At most one interval from now, whatever the parent's timestamp says
        // (after a restart or a sync this node started no height it can go by).
        let after_ms = by_parent.max(by_start).min(interval);
        out.push(Output::Schedule { timeout: Timeout::StartHeight { height: self.height }, after_ms });
        out
    }

    /// Restores what we signed at the current height before a restart, so that it
    /// is counted and replayed to peers (the same signatures again: no double
    /// signing). Messages for other heights are ignored.
    pub fn restore_own(&mut self, own: Vec<Signed>) {
        for m in own {
            match m {
                Signed::Proposal(p) if p.proposal.height == self.height && p.proposal.proposer == self.me => {
                    // Read back from disk: checked in full.
                    let (round, vr) = (p.proposal.round, p.proposal.valid_round);
                    let ok = self.validate_block(&p.proposal.block, round, vr, None, Hashed::No).is_ok();
                    self.proposal_ok.insert(round, ok);
                    // Stamped by this node's clock when it made it.
                    self.received.insert(round, p.proposal.block.header.timestamp_ms);
                    self.room_for(round, proposal_bytes(&p), true);
                    self.insert_proposal(round, p);
                }
                Signed::Vote(v) if v.vote.height == self.height && v.vote.voter == self.me => self.insert_vote(v),
                _ => {}
            }
        }
    }

    /// Restores the lock (L36) this node held at the current height before a
    /// restart: without it, a restarted node could prevote another value in a
    /// later round than the one it had locked on.
    pub fn restore_lock(&mut self, lock: Option<Lock>) {
        if let Some(lock) = lock.filter(|l| l.block.height() == self.height) {
            // The polka's prevotes were verified before they were stored with the
            // lock; they count again, and the rebroadcast relays them.
            for v in lock.polka {
                if v.vote.height != self.height || v.vote.round != lock.round || v.vote.kind != VoteKind::Prevote {
                    continue;
                }
                // Votes for the locked value, which this node knows.
                self.votes.entry(v.vote.round).or_default().add(v, true);
            }
            self.locked = Some((lock.round, lock.block.clone()));
            self.valid = Some((lock.round, lock.block));
        }
    }

    /// Our own signed messages for the current height, to replay to a peer that
    /// just connected and missed them.
    pub(crate) fn own_messages(&self) -> Vec<Signed> {
        let mut out = Vec::new();
        for (r, p) in &self.proposals {
            if self.proposer(self.height, *r) == self.me {
                out.push(Signed::Proposal(p.clone()));
            }
        }
        for rv in self.votes.values() {
            for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                if let Some(v) = rv.of(kind).get(&self.me) {
                    out.push(Signed::Vote(v.clone()));
                }
            }
        }
        out
    }

    /// What this node holds for the current height that peers may lack: every
    /// verified vote (others' too, conflicting ones included) and the proposals of
    /// the current round and of the round its valid value comes from. Sent again
    /// when no block came for a while: Tendermint assumes that a message one
    /// correct process received, every correct process eventually receives.
    pub(crate) fn relay_messages(&self) -> Vec<Signed> {
        let mut out = Vec::new();
        let valid_round = self.valid.as_ref().map(|(r, _)| *r);
        for r in [Some(self.round), valid_round].into_iter().flatten().collect::<BTreeSet<_>>() {
            if let Some(p) = self.proposals.get(&r) {
                out.push(Signed::Proposal(p.clone()));
            }
        }
        for rv in self.votes.values() {
            for v in rv.prevotes.values().chain(rv.precommits.values()).chain(rv.conflicting.values()) {
                out.push(Signed::Vote(v.clone()));
            }
        }
        out
    }

    /// Every message signed by `node` that this core holds: its proposals and
    /// its votes (conflicting versions too) of the current height, and those
    /// kept for the next height. Sent to `node` when it connects: a node
    /// restarted on an older copy of its data dir, or from a checkpoint one
    /// block past this node's tip, learns what its key signed (see
    /// [`super::doppelganger`]).
    pub(crate) fn signed_by(&self, node: NodeId) -> Vec<Signed> {
        let mut out: Vec<Signed> = (self.proposals.values())
            .filter(|p| p.proposal.proposer == node)
            .map(|p| Signed::Proposal(p.clone()))
            .collect();
        for rv in self.votes.values() {
            let firsts = rv.prevotes.get(&node).into_iter().chain(rv.precommits.get(&node));
            let seconds = rv.conflicting.iter().filter(|((v, _, _), _)| *v == node).map(|(_, sv)| sv);
            out.extend(firsts.chain(seconds).map(|v| Signed::Vote(v.clone())));
        }
        let next = &self.future;
        let proposals = next.proposals.values().map(|(p, _)| p).filter(|p| p.proposal.proposer == node);
        out.extend(proposals.map(|p| Signed::Proposal(p.clone())));
        let votes = next.votes.iter().filter(|((_, _, voter), _)| *voter == node);
        out.extend(votes.map(|(_, sv)| Signed::Vote(sv.clone())));
        out
    }

    /// The last `(height, round, step)` this core signed, or will not sign at
    /// or below ([`Self::raise_floor`]).
    pub(crate) fn last_signed(&self) -> Option<SignRecord> {
        self.last_signed
    }

    /// The parent's timestamp: no message of the current height is older.
    pub(crate) fn parent_timestamp(&self) -> u64 {
        self.prev_ts
    }

    /// Whether this exact vote is held (a vote of the current height).
    pub(crate) fn holds_vote(&self, v: &Vote) -> bool {
        v.height == self.height && self.votes.get(&v.round).is_some_and(|rv| rv.holds(v))
    }

    /// Whether a vote of `voter` of this kind, height and round is held.
    pub(crate) fn has_vote_of(&self, voter: NodeId, height: Height, round: Round, kind: VoteKind) -> bool {
        height == self.height
            && self.votes.get(&round).is_some_and(|rv| {
                rv.of(kind).contains_key(&voter) || rv.conflicting.keys().any(|(v, k, _)| *v == voter && *k == kind)
            })
    }

    /// The network proves this node's key signed `record`: never sign at or
    /// below it (a data dir restored from an older copy holds an older record).
    pub(crate) fn raise_floor(&mut self, record: SignRecord) {
        if self.last_signed.is_none_or(|last| record > last) {
            self.last_signed = Some(record);
        }
    }

    /// The lock a precommit of this node's key for `value` in `round` of the
    /// current height implies (L36 ran there): taken if that round's
    /// proposal is held and is `value`, and the lock held is of an earlier
    /// round. False while the proposal is not held.
    pub(crate) fn adopt_lock(&mut self, round: Round, value: Hash) -> bool {
        let Some(block) = self.proposals.get(&round).map(|p| &p.proposal.block).filter(|b| b.hash() == value) else {
            return false;
        };
        let block = block.clone();
        if self.locked.as_ref().is_none_or(|(lr, _)| *lr < round) {
            self.locked = Some((round, block.clone()));
        }
        if self.valid.as_ref().is_none_or(|(vr, _)| *vr < round) {
            self.valid = Some((round, block));
        }
        true
    }

    /// What the core holds of what members sent: the votes and the proposals
    /// of the current height (one proposal per round, rounds up to
    /// [`MAX_ROUND_AHEAD`] past the current one; per round and voter a
    /// prevote, a precommit and [`MAX_CONFLICTING`] conflicting versions of
    /// each), and the next height's buffer.
    pub(crate) fn held(&self) -> Held {
        let votes: usize =
            self.votes.values().map(|rv| rv.prevotes.len() + rv.precommits.len() + rv.conflicting.len()).sum();
        Held {
            votes: Usage::new(votes, votes * VOTE_BYTES),
            // Kept as proposals come and go: summing a held block's
            // transactions here cost a pass over them per turn of the loop.
            proposals: Usage::new(self.proposals.len(), self.proposals_bytes),
            next_height: Usage::new(self.future.proposals.len() + self.future.votes.len(), self.future.bytes),
        }
    }

    /// The most votes held of one voter in one round and of one kind: its
    /// first and the conflicting versions kept (at most [`MAX_CONFLICTING`]
    /// more), whatever the number of rounds. What [`Core::held`] sums over
    /// every voter and round, per voter: a member voting many values in one
    /// round stays within its own slots, not only within everyone's.
    pub fn most_votes_of_one_voter(&self) -> usize {
        let mut most = 0;
        for rv in self.votes.values() {
            let mut seconds: BTreeMap<(NodeId, VoteKind), usize> = BTreeMap::new();
            for (voter, kind, _) in rv.conflicting.keys() {
                *seconds.entry((*voter, *kind)).or_default() += 1;
            }
            let firsts = rv.prevotes.keys().map(|v| (*v, VoteKind::Prevote));
            for key in firsts.chain(rv.precommits.keys().map(|v| (*v, VoteKind::Precommit))) {
                most = most.max(1 + seconds.get(&key).copied().unwrap_or(0));
            }
        }
        most
    }

    pub(crate) fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Output> {
        self.handle_signed(input, now_ms).0
    }

    /// [`Core::handle`] for a peer's proposal or vote, also returning its
    /// signer when it verified as a message of the current height (or is the
    /// same as one that did): what the shell may take as a sign of that member
    /// taking part. A message that fails its checks, or one of another height,
    /// names nobody; nor does anything the input causes (messages buffered
    /// for the next height that a decision replays come after it).
    pub(crate) fn handle_signed(&mut self, input: Input, now_ms: u64) -> (Vec<Output>, Option<NodeId>) {
        let mut out = Vec::new();
        self.heard = None;
        self.apply(input, now_ms, &mut out);
        (out, self.heard.take())
    }

    /// Notes `node` as the signer of a message of the current height that
    /// verified; the first one of an input counts.
    fn note_heard(&mut self, node: NodeId) {
        if self.heard.is_none() {
            self.heard = Some(node);
        }
    }

    fn apply(&mut self, input: Input, now_ms: u64, out: &mut Vec<Output>) {
        match input {
            Input::Proposal(p) => self.receive_proposal(p, false, now_ms, now_ms, out),
            Input::CheckedProposal(p) => self.receive_proposal(p, true, now_ms, now_ms, out),
            Input::Vote(v) => self.on_vote(v, now_ms, out),
            Input::Timeout(t) => self.on_timeout(t, now_ms, out),
            Input::Value { height, round, txs, tx_root, changes } => {
                self.on_value(height, round, (txs, tx_root), changes, now_ms, out)
            }
            Input::Commit(c) => self.on_commit(c, now_ms, out),
            Input::Quorum(met) => {
                let was = self.quorum;
                self.quorum = met;
                if met && !was {
                    for t in std::mem::take(&mut self.deferred) {
                        self.on_timeout(t, now_ms, out);
                    }
                    self.check_rules(now_ms, out);
                }
            }
        }
    }

    /// A proposal that reached this node at `received_ms` (earlier than `now_ms`
    /// for one held for the next height), handled now.
    /// `checked`: the caller matched the transactions to the header's root
    /// ([`Input::CheckedProposal`]).
    fn receive_proposal(
        &mut self,
        sp: SignedProposal,
        checked: bool,
        received_ms: u64,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let p = &sp.proposal;
        let (height, round, proposer) = (p.height, p.round, p.proposer);
        if height < self.height || !self.members_at(height).contains(&proposer) {
            return;
        }
        let future = height > self.height;
        if future {
            let slot_free =
                !self.future.proposals.contains_key(&round) && self.future.room_for(round, proposal_bytes(&sp), false);
            let wanted = (self.buffers(height, round) && slot_free) || self.ahead_due(proposer, height, now_ms);
            if !wanted {
                return;
            }
        } else {
            if round > self.round + MAX_ROUND_AHEAD {
                return;
            }
            // The same proposal again (gossip, a replay): verified when it first came.
            if self.proposals.get(&round).is_some_and(|e| e.proposal == sp.proposal) {
                self.note_heard(proposer);
                return;
            }
            // Not held (another of that round is: equivocation, reported
            // below) unless its bytes fit, in place of farther rounds'.
            if !self.proposals.contains_key(&round) && !self.room_for(round, proposal_bytes(&sp), false) {
                return;
            }
        }
        let Some(repeat) = self.authenticate(&sp, checked, out) else { return };
        if future {
            self.hold_future(proposer, height, Input::Proposal(sp), now_ms, out);
            return;
        }
        self.note_heard(proposer);
        if self.proposals.contains_key(&round) {
            out.push(Output::Misbehaviour(Misbehaviour::Equivocation {
                node: proposer,
                height,
                round,
                step: Step::Propose,
            }));
            return;
        }
        // `authenticate` checked the transactions against the header.
        let ok = self.validate_block(
            &sp.proposal.block,
            round,
            sp.proposal.valid_round,
            Some(now_ms),
            Hashed::Yes { first_repeat: repeat },
        );
        if let Err(reason) = &ok {
            out.push(Output::Misbehaviour(Misbehaviour::InvalidBlock {
                node: proposer,
                height,
                round,
                reason: reason.clone(),
            }));
        }
        self.room_for(round, proposal_bytes(&sp), true);
        self.proposal_ok.insert(round, ok.is_ok());
        self.received.insert(round, received_ms);
        self.insert_proposal(round, sp);
        self.check_rules(now_ms, out);
    }

    /// Whether a proposal of `round` taking `bytes` fits within the budget of
    /// proposals held ([`PROPOSALS_HELD_BLOCKS`]), in place of those of rounds
    /// farther from ours if need be (never the current round's, the valid
    /// round's or the locked round's). `evict`: give those up now.
    fn room_for(&mut self, round: Round, bytes: usize, evict: bool) -> bool {
        let budget = PROPOSALS_HELD_BLOCKS * max_proposal_bytes(&self.cfg.limits);
        let current = self.round;
        // Farther first; at equal distance a future round before a past one.
        let distance = |r: Round| (r.abs_diff(current), r > current);
        let kept = |r: Round| {
            r == current
                || self.valid.as_ref().is_some_and(|(v, _)| *v == r)
                || self.locked.as_ref().is_some_and(|(l, _)| *l == r)
        };
        let mut victims: Vec<(Round, usize)> = self
            .proposals
            .iter()
            .filter(|(r, _)| !kept(**r) && distance(**r) > distance(round))
            .map(|(r, sp)| (*r, proposal_bytes(sp)))
            .collect();
        victims.sort_by_key(|(r, _)| std::cmp::Reverse(distance(*r)));
        let mut held = self.proposals_bytes;
        let mut given_up = Vec::new();
        for (r, b) in victims {
            if held + bytes <= budget {
                break;
            }
            held -= b;
            given_up.push(r);
        }
        if held + bytes > budget {
            return false;
        }
        if evict {
            for r in given_up {
                self.remove_proposal(r);
            }
        }
        true
    }

    fn insert_proposal(&mut self, round: Round, sp: SignedProposal) {
        self.proposals_bytes += proposal_bytes(&sp);
        if let Some(old) = self.proposals.insert(round, sp) {
            self.proposals_bytes -= proposal_bytes(&old);
        }
    }

    /// Gives up round `round`'s proposal: a proposal of it may come again.
    fn remove_proposal(&mut self, round: Round) -> Option<SignedProposal> {
        let sp = self.proposals.remove(&round)?;
        self.proposals_bytes -= proposal_bytes(&sp);
        self.proposal_ok.remove(&round);
        self.received.remove(&round);
        Some(sp)
    }

    /// What a proposal's signature proves, checked in that order: the signature
    /// (else nothing is known of its signer), then what the signer answers for
    /// (leading the round, the valid round below it), then that the transactions
    /// are the ones its signed header commits to.
    ///
    /// `Some` with the first transaction that repeats an earlier one (looked
    /// for only where the rules make it invalid) when the proposal passes;
    /// `None`, reported, when it does not.
    fn authenticate(&self, sp: &SignedProposal, checked: bool, out: &mut Vec<Output>) -> Option<Option<usize>> {
        let p = &sp.proposal;
        let (node, height, round) = (p.proposer, p.height, p.round);
        let refused = if sp.verify(&self.cfg.network_id).is_err() {
            Misbehaviour::BadSignature { claimed: node, height, round, step: Step::Propose }
        } else if node != self.proposer(height, round) {
            Misbehaviour::WrongProposer { node, height, round }
        } else if let Some(valid_round) = p.valid_round.filter(|vr| *vr >= round) {
            Misbehaviour::BadValidRound { node, height, round, valid_round }
        } else if p.block.txs.len() > self.cfg.limits.max_block_txs
            || p.block.header.changes.len() > super::members::MAX_CHANGES_PER_BLOCK
        {
            Misbehaviour::BadTransactions { claimed: node, height, round }
        } else if checked {
            return Some(None);
        } else {
            let (root, first_repeat) = tx_root_and_repeat(&p.block.txs, self.rules().distinct_txs);
            if root == p.block.header.tx_root {
                return Some(first_repeat);
            }
            Misbehaviour::BadTransactions { claimed: node, height, round }
        };
        out.push(Output::Misbehaviour(refused));
        None
    }

    /// The rules of the current height's protocol version.
    fn rules(&self) -> Rules {
        Rules::of(self.cfg.members.version_at(self.height))
    }

    /// Whether round `round`'s proposal may be prevoted for its timestamp: always
    /// before the version that brings proposer-based timestamps; after it, when
    /// its block's timestamp is within the synchrony bounds of its arrival.
    fn timely(&self, round: Round) -> bool {
        if !self.rules().timely_proposals {
            return true;
        }
        let (Some(sp), Some(&received)) = (self.proposals.get(&round), self.received.get(&round)) else {
            return false;
        };
        self.synchrony.timely(sp.proposal.block.header.timestamp_ms, received, round)
    }

    /// Checks a block proposed in `round` with `valid_round` against our parent
    /// and the block rules. A fresh value (no valid round) is built in the round
    /// that proposes it, so its header carries that round and that round's
    /// proposer. A re-proposed value is the one that had a polka in `valid_round`
    /// (L36 sets `validValue` from that round's proposal), which was itself fresh
    /// there or carried from an earlier round: its header's round is at most
    /// `valid_round`, and its proposer is the proposer of the header's round.
    fn validate_block(
        &self,
        block: &Block,
        round: Round,
        valid_round: Option<Round>,
        now_ms: Option<u64>,
        txs: Hashed,
    ) -> Result<Option<Vec<Hash>>, BlockError> {
        let block_round = block.header.round;
        match valid_round {
            None if block_round != round => return Err(BlockError::NotFresh { block_round, round }),
            Some(vr) if block_round > vr => return Err(BlockError::NewerThanRound { block_round, round: vr }),
            _ => {}
        }
        let distinct = self.rules().distinct_txs;
        let (first_repeat, ids) = match txs {
            Hashed::Yes { first_repeat } => (first_repeat, None),
            Hashed::No => {
                let (root, first_repeat, ids) = tx_ids_root_and_repeat(&block.txs, distinct);
                if root != block.header.tx_root {
                    return Err(BlockError::TxRootMismatch);
                }
                (first_repeat, Some(ids))
            }
        };
        if let Some(index) = first_repeat.filter(|_| distinct) {
            return Err(BlockError::RepeatedTx { index });
        }
        let height = self.height;
        block.validate(
            self.parent_link,
            height - 1,
            self.prev_ts,
            |r| self.proposer(height, r),
            now_ms,
            &self.cfg.limits,
            TxCheck::Done,
        )?;
        self.cfg
            .members
            .validate(&block.header.changes, &self.cfg.network_id)
            .map_err(|(index, reason)| BlockError::BadChange { index, reason })?;
        Ok(ids)
    }

    fn on_vote(&mut self, sv: SignedVote, now_ms: u64, out: &mut Vec<Output>) {
        let v = &sv.vote;
        let (height, round, voter, step) = (v.height, v.round, v.voter, v.kind.step());
        if height < self.height || !self.members_at(height).contains(&voter) {
            return;
        }
        let future = height > self.height;
        if future {
            let slot_free = !self.future.votes.contains_key(&(round, step, voter))
                && self.future.bytes + FUTURE_VOTE_BYTES <= MAX_FUTURE_BYTES;
            let wanted = (self.buffers(height, round) && slot_free) || self.ahead_due(voter, height, now_ms);
            if !wanted {
                return;
            }
        } else {
            if round > self.round + MAX_ROUND_AHEAD {
                return;
            }
            // The same vote again (a relay, a replay): verified when it first came.
            if self.votes.get(&round).is_some_and(|rv| rv.holds(&sv.vote)) {
                self.note_heard(voter);
                return;
            }
        }
        if sv.verify(&self.cfg.network_id).is_err() {
            out.push(Output::Misbehaviour(Misbehaviour::BadSignature { claimed: voter, height, round, step }));
            return;
        }
        if future {
            self.hold_future(voter, height, Input::Vote(sv), now_ms, out);
            return;
        }
        self.note_heard(voter);
        // A value proposed in any round of this height (a re-proposal makes a
        // value known after its round).
        let known = sv.vote.block.is_none_or(|b| self.proposals.values().any(|p| p.proposal.block.hash() == b));
        let added = self.votes.entry(round).or_default().add(sv, known);
        if let Added::Second { news: true } | Added::NotCounted { news: true } = added {
            out.push(Output::Misbehaviour(Misbehaviour::Equivocation { node: voter, height, round, step }));
        }
        if let Added::First | Added::Second { .. } = added {
            self.check_rules(now_ms, out);
        }
    }

    /// Our own vote, or one restored from the store.
    fn insert_vote(&mut self, sv: SignedVote) {
        self.votes.entry(sv.vote.round).or_default().add(sv, false);
    }

    /// Whether messages of `(height, round)` go into the next-height buffer.
    fn buffers(&self, height: Height, round: Round) -> bool {
        height == self.height + 1 && round <= MAX_FUTURE_ROUND
    }

    /// Whether `node`, at `height`, is news: a higher height than it was last
    /// reported at, or the same one reported long enough ago.
    fn ahead_due(&self, node: NodeId, height: Height, now_ms: u64) -> bool {
        self.ahead
            .get(&node)
            .is_none_or(|(h, at)| height > *h || (height == *h && now_ms >= at.saturating_add(AHEAD_REPEAT_MS)))
    }

    /// A verified message for a later height: report its signer ahead (when
    /// that is news), and keep it if it is for the next height and its slot is free.
    fn hold_future(&mut self, from: NodeId, height: Height, input: Input, now_ms: u64, out: &mut Vec<Output>) {
        if self.ahead_due(from, height, now_ms) {
            self.ahead.insert(from, (height, now_ms));
            out.push(Output::Ahead { node: from, height });
        }
        let round = match &input {
            Input::Proposal(p) => p.proposal.round,
            Input::Vote(v) => v.vote.round,
            _ => return,
        };
        if !self.buffers(height, round) {
            return;
        }
        let next = &mut self.future;
        match input {
            Input::Proposal(p) => {
                let bytes = proposal_bytes(&p);
                if !next.proposals.contains_key(&round) && next.room_for(round, bytes, true) {
                    next.bytes += bytes;
                    next.proposals.insert(round, (p, now_ms));
                }
            }
            Input::Vote(v) => {
                let slot = (v.vote.round, v.vote.kind.step(), v.vote.voter);
                if !next.votes.contains_key(&slot) && next.bytes + FUTURE_VOTE_BYTES <= MAX_FUTURE_BYTES {
                    next.bytes += FUTURE_VOTE_BYTES;
                    next.votes.insert(slot, v);
                }
            }
            _ => {}
        }
    }

    fn on_timeout(&mut self, t: Timeout, now_ms: u64, out: &mut Vec<Output>) {
        if !self.quorum {
            // The gate is closed: no round advances until it opens again.
            if !self.deferred.contains(&t) {
                self.deferred.push(t);
            }
            return;
        }
        match t {
            Timeout::StartHeight { height } if height == self.height && !self.started => {
                self.started = true;
                self.started_at = Some((height, now_ms));
                self.start_round(self.resume_round(), now_ms, out);
            }
            // L57
            Timeout::Propose { height, round }
                if height == self.height && round == self.round && self.step == Step::Propose =>
            {
                self.vote(VoteKind::Prevote, None, out);
                self.step = Step::Prevote;
            }
            // L61
            Timeout::Prevote { height, round }
                if height == self.height && round == self.round && self.step == Step::Prevote =>
            {
                self.vote(VoteKind::Precommit, None, out);
                self.step = Step::Precommit;
            }
            // L65
            Timeout::Precommit { height, round } if height == self.height && round == self.round => {
                self.start_round(round + 1, now_ms, out);
            }
            Timeout::Stamp { height, round }
                if height == self.height
                    && round == self.round
                    && self.step == Step::Propose
                    && !self.proposals.contains_key(&round) =>
            {
                self.ask_value(now_ms, out);
            }
            _ => return,
        }
        self.check_rules(now_ms, out);
    }

    /// The round a height starts in: 0, or after a restart the round this node
    /// last signed in at this height. Restarting at round 0 would put the node
    /// below its own lock and its own signatures: every old round that f+1 members
    /// (one of them replaying) appear in would be entered again by the round skip
    /// (L55), with rules that assume rounds only grow. The paper's process never
    /// goes back a round; neither does a restarted one.
    fn resume_round(&self) -> Round {
        let signed = self.last_signed.filter(|s| s.height == self.height).map_or(0, |s| s.round);
        let locked = self.locked.as_ref().map_or(0, |(r, _)| *r);
        signed.max(locked)
    }

    /// L11-L21
    fn start_round(&mut self, round: Round, now_ms: u64, out: &mut Vec<Output>) {
        self.round = round;
        self.step = Step::Propose;
        // A round we already signed in (only after a restart) resumes at the step
        // after that signature: the rules of the steps before it have run.
        let signed_here = self.last_signed.filter(|s| s.height == self.height && s.round == round);
        if let Some(s) = signed_here {
            self.step = s.step;
        }
        let t = &self.cfg.timeouts;
        let after_ms = t.in_round(t.propose_ms, round);
        out.push(Output::Schedule { timeout: Timeout::Propose { height: self.height, round }, after_ms });
        if self.proposer(self.height, round) == self.me && signed_here.is_none() {
            match self.valid.clone() {
                Some((vr, block)) => self.propose(block, Some(vr), now_ms, out),
                None => self.ask_value(now_ms, out),
            }
        }
        self.check_rules(now_ms, out);
    }

    /// A fresh value for this round (L18): asked for at once, except under
    /// timely proposals while our clock has not passed the parent's
    /// timestamp. A block must be stamped after its parent, so it would carry
    /// the parent's stamp + 1 ms, ahead of our clock and of every honest
    /// clock near ours: untimely for all of us (and for us), a round given up
    /// for nothing. A parent stamped ahead comes from a clock ahead of ours:
    /// at the version's first height, a parent of the version before it,
    /// stamped within `max_clock_drift_ms` (PBTS's proposer likewise waits
    /// for its clock to pass the previous block's time). The wait ends when
    /// our clock passes it ([`Timeout::Stamp`]) or with the round.
    fn ask_value(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let (height, round) = (self.height, self.round);
        if self.rules().timely_proposals && now_ms <= self.prev_ts {
            let after_ms = self.prev_ts + 1 - now_ms;
            out.push(Output::Schedule { timeout: Timeout::Stamp { height, round }, after_ms });
            return;
        }
        out.push(Output::NeedValue { height, round });
    }

    fn on_value(
        &mut self,
        height: Height,
        round: Round,
        (txs, root): (Vec<Vec<u8>>, Hash),
        changes: Vec<SignedApproval>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        if height != self.height
            || round != self.round
            || self.step != Step::Propose
            || self.proposals.contains_key(&round)
        {
            return;
        }
        if self.proposer(height, round) != self.me || !self.quorum {
            return;
        }
        let block = Block {
            header: Header {
                height,
                round,
                prev_hash: self.parent_link,
                timestamp_ms: now_ms.max(self.prev_ts + 1),
                proposer: self.me,
                tx_root: root,
                changes,
            },
            // Each in the buffer the mempool's copy was taken into.
            txs: txs.into_iter().map(bytes::Bytes::from).collect(),
        };
        self.propose(block, None, now_ms, out);
        self.check_rules(now_ms, out);
    }

    fn propose(&mut self, block: Block, valid_round: Option<Round>, now_ms: u64, out: &mut Vec<Output>) {
        let record = SignRecord { height: self.height, round: self.round, step: Step::Propose };
        if !self.may_sign(record) {
            return;
        }
        let proposal = Proposal { height: self.height, round: self.round, block, valid_round, proposer: self.me };
        let sp = proposal.sign(&self.cfg.network_id, &self.identity);
        self.last_signed = Some(record);
        // Our own block: its root was computed from its transactions (`on_value`,
        // from the mempool, which holds each transaction once), or it is a
        // value that passed `authenticate` and validation in an earlier round.
        let hashed = Hashed::Yes { first_repeat: None };
        let ok = self.validate_block(&sp.proposal.block, self.round, valid_round, None, hashed).is_ok();
        self.proposal_ok.insert(self.round, ok);
        self.received.insert(self.round, now_ms);
        // Our own proposal is held within the same budget as the peers': it
        // takes the place of farther rounds' (only the valid and locked
        // rounds' are kept beside it, so it always fits).
        self.room_for(self.round, proposal_bytes(&sp), true);
        self.insert_proposal(self.round, sp.clone());
        out.push(Output::Sign { record, message: Signed::Proposal(sp), lock: None });
    }

    fn vote(&mut self, kind: VoteKind, block: Option<Hash>, out: &mut Vec<Output>) {
        let vote = Vote { kind, height: self.height, round: self.round, block, voter: self.me };
        let record = vote.record();
        if !self.may_sign(record) {
            return;
        }
        let sv = vote.sign(&self.cfg.network_id, &self.identity);
        self.last_signed = Some(record);
        self.insert_vote(sv.clone());
        let lock = match (kind, block, &self.locked) {
            (VoteKind::Precommit, Some(_), Some((round, value))) => {
                let polka = self
                    .votes
                    .get(round)
                    .map(|rv| rv.for_value(VoteKind::Prevote, Some(value.hash())).cloned().collect())
                    .unwrap_or_default();
                Some(Box::new(Lock { round: *round, block: value.clone(), polka }))
            }
            _ => None,
        };
        out.push(Output::Sign { record, message: Signed::Vote(sv), lock });
    }

    /// Double-sign protection: only strictly after the last signature.
    fn may_sign(&self, record: SignRecord) -> bool {
        self.members_at(self.height).contains(&self.me) && self.last_signed.is_none_or(|last| record > last)
    }

    /// Re-evaluates every `upon` rule until none fires.
    fn check_rules(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        loop {
            let before = (self.height, self.round, self.step, out.len());
            self.rules_once(now_ms, out);
            if before == (self.height, self.round, self.step, out.len()) {
                break;
            }
        }
    }

    fn rules_once(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        // L49: a decision, from any round, needs no quorum gate: the votes prove it.
        let decided = self.proposals.iter().find_map(|(r, sp)| {
            let id = sp.proposal.block.hash();
            let enough = self.votes.get(r).is_some_and(|rv| rv.count(VoteKind::Precommit, Some(id)) >= self.q);
            (enough && self.proposal_ok.get(r) == Some(&true)).then_some(*r)
        });
        // The height ends here and its proposals are cleared: the block moves
        // out rather than being copied.
        if let Some(sp) = decided.and_then(|r| self.remove_proposal(r)) {
            self.decide(sp.proposal.round, sp.proposal.block, now_ms, out);
            return;
        }
        if !self.started || !self.quorum {
            return;
        }
        let h = self.height;
        let r = self.round;
        let q = self.q;
        // The proposal's hash only: the block itself is copied where a rule
        // keeps it (a lock, a valid value), not on every pass.
        let proposal = self.proposals.get(&r).map(|sp| (sp.proposal.block.hash(), sp.proposal.valid_round));
        let ok = self.proposal_ok.get(&r) == Some(&true);
        if self.step == Step::Propose {
            if let Some((id, vr)) = proposal {
                match vr {
                    // L22, with the timeliness of proposer-based timestamps where
                    // the version has it (see `super::rules`).
                    None => {
                        let accept = ok && self.timely(r) && self.locked.as_ref().is_none_or(|(_, lv)| lv.hash() == id);
                        self.vote(VoteKind::Prevote, accept.then_some(id), out);
                        self.step = Step::Prevote;
                    }
                    // L28
                    Some(vr) => {
                        let polka = self.votes.get(&vr).is_some_and(|rv| rv.count(VoteKind::Prevote, Some(id)) >= q);
                        if polka && vr < r {
                            let accept = ok && self.locked.as_ref().is_none_or(|(lr, lv)| *lr <= vr || lv.hash() == id);
                            self.vote(VoteKind::Prevote, accept.then_some(id), out);
                            self.step = Step::Prevote;
                        }
                    }
                }
            }
        }
        let rv = self.votes.get(&r);
        let prevotes_total = rv.map_or(0, |rv| rv.total(VoteKind::Prevote));
        // L34
        if self.step == Step::Prevote && prevotes_total >= q && self.prevote_timer.insert(r) {
            let t = &self.cfg.timeouts;
            out.push(Output::Schedule {
                timeout: Timeout::Prevote { height: h, round: r },
                after_ms: t.in_round(t.prevote_ms, r),
            });
        }
        // L36. `lockedRound` and `validRound` only ever grow: in the paper they
        // are set to the current round, which never decreases. The comparison
        // keeps that true whatever round this core is in (a restored lock may be
        // of a later round than one we are made to revisit).
        if let Some((id, _)) = proposal {
            let polka = rv.is_some_and(|rv| rv.count(VoteKind::Prevote, Some(id)) >= q);
            if ok && polka && self.step >= Step::Prevote && !self.polka_seen.contains(&r) {
                self.polka_seen.insert(r);
                let block = self.proposals[&r].proposal.block.clone();
                if self.step == Step::Prevote && self.locked.as_ref().is_none_or(|(lr, _)| *lr <= r) {
                    self.locked = Some((r, block.clone()));
                    self.vote(VoteKind::Precommit, Some(id), out);
                    self.step = Step::Precommit;
                }
                if self.valid.as_ref().is_none_or(|(vr, _)| *vr <= r) {
                    self.valid = Some((r, block));
                }
            }
        }
        // L44
        let nil_polka = self.votes.get(&r).is_some_and(|rv| rv.count(VoteKind::Prevote, None) >= q);
        if self.step == Step::Prevote && nil_polka {
            self.vote(VoteKind::Precommit, None, out);
            self.step = Step::Precommit;
        }
        // L47
        let precommits_total = self.votes.get(&r).map_or(0, |rv| rv.total(VoteKind::Precommit));
        if precommits_total >= q && self.precommit_timer.insert(r) {
            let t = &self.cfg.timeouts;
            out.push(Output::Schedule {
                timeout: Timeout::Precommit { height: h, round: r },
                after_ms: t.in_round(t.precommit_ms, r),
            });
        }
        // L47's wait is for precommits of a value that could still reach a quorum.
        // Once f+1 precommits are nil, no value can: go to the next round at once
        // rather than after the timeout (a liveness shortcut; a round change never
        // touches safety). A member that is down or paused as proposer costs one
        // quick nil round instead of a timeout.
        let nil_precommits = self.votes.get(&r).map_or(0, |rv| rv.count(VoteKind::Precommit, None));
        if self.step == Step::Precommit && nil_precommits >= self.f1 {
            self.start_round(r + 1, now_ms, out);
            return;
        }
        // L55: f+1 members are in a later round: skip to it.
        let skip_to = self.votes.iter().filter(|(vr, _)| **vr > r).find_map(|(vr, rv)| {
            let mut senders: BTreeSet<NodeId> = rv.prevotes.keys().chain(rv.precommits.keys()).copied().collect();
            if let Some(sp) = self.proposals.get(vr) {
                senders.insert(sp.proposal.proposer);
            }
            (senders.len() >= self.f1).then_some(*vr)
        });
        if let Some(vr) = skip_to {
            self.start_round(vr, now_ms, out);
        }
    }

    fn decide(&mut self, round: Round, block: Block, now_ms: u64, out: &mut Vec<Output>) {
        let id = block.hash();
        let precommits: Vec<SignedVote> =
            self.votes[&round].for_value(VoteKind::Precommit, Some(id)).cloned().collect();
        let cert = Certificate { height: self.height, round, block: id, precommits };
        self.advance(block, None, now_ms, out, cert);
    }

    fn on_commit(&mut self, c: Committed, now_ms: u64, out: &mut Vec<Output>) {
        if c.block.height() != self.height {
            return;
        }
        let height = self.height;
        if let Err(reason) = c.cert.verify(&c.block, &self.members_at(height).ids(), &self.cfg.network_id) {
            out.push(Output::Misbehaviour(Misbehaviour::BadCertificate { height, reason }));
            return;
        }
        // Decided in the certificate's round: the block existed by then.
        let tx_ids = match self.validate_block(&c.block, c.cert.round, Some(c.cert.round), None, Hashed::No) {
            Ok(ids) => ids,
            Err(reason) => {
                out.push(Output::Misbehaviour(Misbehaviour::InvalidSyncedBlock { height, reason }));
                return;
            }
        };
        self.advance(c.block, tx_ids, now_ms, out, c.cert);
    }

    /// Commits `block` and moves to the next height (L49-L54); `tx_ids`: its
    /// transactions' ids, where this height's check of the block computed them.
    fn advance(
        &mut self,
        block: Block,
        tx_ids: Option<Vec<Hash>>,
        now_ms: u64,
        out: &mut Vec<Output>,
        cert: Certificate,
    ) {
        self.prev_hash = block.hash();
        self.prev_ts = block.header.timestamp_ms;
        // Checked with the block (`validate_block`), so every approval applies.
        let completed = self.cfg.members.apply(&block.header.changes, &self.cfg.network_id);
        // Members that left are reported ahead no more (a map per member).
        let m = &self.cfg.members;
        self.ahead.retain(|id, _| m.current().contains(id) || m.next().contains(id));
        let membership = Box::new(self.cfg.members.state().clone());
        out.push(Output::Decided { committed: Committed { block, cert }, membership, completed, tx_ids });
        self.height += 1;
        self.parent_link = self.link_to_parent();
        let n = self.members_at(self.height).len();
        self.q = vote_threshold(n);
        self.f1 = n - self.q + 1;
        self.round = 0;
        self.step = Step::Propose;
        self.started = false;
        self.locked = None;
        self.valid = None;
        self.proposals.clear();
        self.proposals_bytes = 0;
        self.proposal_ok.clear();
        self.received.clear();
        self.votes.clear();
        self.prevote_timer.clear();
        self.precommit_timer.clear();
        self.polka_seen.clear();
        self.deferred.clear();
        out.extend(self.start(now_ms));
        // Buffered for what is now the current height; verified again on the way
        // in, now against the parent they build on.
        let next = std::mem::take(&mut self.future);
        for (p, received_ms) in next.proposals.into_values() {
            self.receive_proposal(p, false, received_ms, now_ms, out);
        }
        for v in next.votes.into_values() {
            self.apply(Input::Vote(v), now_ms, out);
        }
    }
}

#[cfg(test)]
#[path = "consensus_tests.rs"]
mod tests;
