//! Checkpoint start: a node on an empty data dir begins at a trusted
//! `(height, block id)` instead of replaying the chain from genesis. Pure: no
//! clock, no IO.
//!
//! # Rules
//!
//! * A checkpoint is trusted in one of two ways: the operator names it
//!   (`checkpoint = "HEIGHT:HASH"` in `masternode.toml`, `--checkpoint`), or a
//!   peer offers one whose certificate carries precommits of more than two
//!   thirds of the member set this node knows (the genesis set on an empty
//!   data dir), each verified ([`verify_offered`]).
//! * A peer answers `GetCheckpoint` with [`CheckpointAnswer`]: the block at the
//!   height with its certificate, the id of its parent, and the member state
//!   the parent left. The block's id must be the trusted one; from protocol
//!   version 4 its `prev_hash` is the link to the parent and that member state
//!   ([`super::block::parent_link`]), so the state is verified, not trusted: a
//!   state that does not hash to the block's commitment is refused, and so is a
//!   state that says the block's rules are older than version 4 (nothing would
//!   commit to it). The certificate must verify against the verified set.
//! * The node then applies the block's approvals to that state (as every node
//!   did when it committed the block), stores the block as its tip and earliest
//!   height, and follows the chain from the next height: every later block must
//!   link to the checkpoint, so a node that started from one never follows a
//!   history without it. After a restart it opens that store as any pruned one.

use std::fmt;
use std::str::FromStr;

use super::block::{members_digest, parent_link, Hash, Height};
use super::members::{MemberSet, Membership, MembershipState, Params};
use super::rules::Rules;
use super::vote::{CertError, Committed};
use crate::identity::NodeId;

/// A trusted `(height, block id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub height: Height,
    pub hash: Hash,
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.height, self.hash)
    }
}

/// Why `HEIGHT:HASH` is not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "a checkpoint is HEIGHT:HASH (a height of at least 2, the block id in 64 hex digits) or \"peers\", got {0:?}"
    )]
    Malformed(String),
}

/// Where a node on an empty data dir starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSource {
    /// The operator's `(height, id)`.
    Trusted(Checkpoint),
    /// The tip a peer offers, taken only with precommits of more than two
    /// thirds of the set this node knows ([`verify_offered`]).
    Peers,
}

impl FromStr for CheckpointSource {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<CheckpointSource, ParseError> {
        match s.trim() {
            "peers" => Ok(CheckpointSource::Peers),
            other => other.parse().map(CheckpointSource::Trusted),
        }
    }
}

impl FromStr for Checkpoint {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Checkpoint, ParseError> {
        let bad = || ParseError::Malformed(s.to_string());
        let (h, hex) = s.trim().split_once(':').ok_or_else(bad)?;
        let height: Height = h.parse().map_err(|_| bad())?;
        if height < 2 || hex.len() != 64 {
            return Err(bad());
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(Checkpoint { height, hash: Hash(hash) })
    }
}

/// What a peer answers to `GetCheckpoint`: the block at the height asked
/// with its certificate, its parent's id, and the member state the parent
/// left (`applied == height - 1`).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct CheckpointAnswer {
    pub parent: Hash,
    pub committed: Committed,
    pub before: MembershipState,
}

/// A verified start: the block, and the member states before and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub committed: Committed,
    pub before: MembershipState,
    pub after: MembershipState,
}

/// Why a checkpoint answer is refused. Each names what the peer got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the block offered is of height {got}, the checkpoint's is {expected}")]
    WrongHeight { got: Height, expected: Height },
    #[error("the block offered at height {height} has id {got}, the checkpoint names {expected}")]
    WrongHash { height: Height, got: Hash, expected: Hash },
    #[error("the member state offered is the one after height {applied}, not after {expected}")]
    StateHeight { applied: Height, expected: Height },
    #[error(
        "the member state offered says height {height} runs protocol {version}: blocks before protocol 4 do not \
         commit to a member state, so none can be verified there; choose a checkpoint after the upgrade to 4"
    )]
    NotCommitted { height: Height, version: u16 },
    #[error("the member state offered does not hash to the commitment of block {height}")]
    MembersMismatch { height: Height },
    #[error("the certificate of block {height} does not verify against its member set: {reason}")]
    Certificate { height: Height, reason: CertError },
    #[error(
        "the checkpoint offered at height {height} is signed by {signed} of the {known} members this node knows; \
         more than two thirds ({needed}) must sign one"
    )]
    TooFewKnownSigners { height: Height, signed: usize, known: usize, needed: usize },
}

impl CheckpointError {
    /// Stable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckpointError::WrongHeight { .. } => "wrong_height",
            CheckpointError::WrongHash { .. } => "wrong_hash",
            CheckpointError::StateHeight { .. } => "state_height",
            CheckpointError::NotCommitted { .. } => "not_committed",
            CheckpointError::MembersMismatch { .. } => "members_mismatch",
            CheckpointError::Certificate { .. } => "certificate",
            CheckpointError::TooFewKnownSigners { .. } => "too_few_known_signers",
        }
    }
}

/// Checks `answer` against the trusted checkpoint; the start it gives.
pub fn verify(
    trusted: Checkpoint,
    answer: CheckpointAnswer,
    params: Params,
    network_id: &[u8; 32],
) -> Result<Verified, CheckpointError> {
    let CheckpointAnswer { parent, committed, before } = answer;
    let block = &committed.block;
    let height = block.height();
    if height != trusted.height {
        return Err(CheckpointError::WrongHeight { got: height, expected: trusted.height });
    }
    let id = block.hash();
    if id != trusted.hash {
        return Err(CheckpointError::WrongHash { height, got: id, expected: trusted.hash });
    }
    if before.applied + 1 != height {
        return Err(CheckpointError::StateHeight { applied: before.applied, expected: height - 1 });
    }
    let mut membership = Membership::restore(params, before);
    let version = membership.version_at(height);
    if !Rules::of(version).members_link {
        return Err(CheckpointError::NotCommitted { height, version });
    }
    if block.header.prev_hash != parent_link(parent, members_digest(membership.state()), true) {
        return Err(CheckpointError::MembersMismatch { height });
    }
    committed
        .cert
        .verify(block, &membership.current().ids(), network_id)
        .map_err(|reason| CheckpointError::Certificate { height, reason })?;
    let before = membership.state().clone();
    membership.apply(&block.header.changes, network_id);
    Ok(Verified { committed, before, after: membership.state().clone() })
}

/// Checks a checkpoint a peer offered unasked: trusted only if more than two
/// thirds of `known` (the member set this node knows) precommitted its block,
/// each signature verified; then as [`verify`].
pub fn verify_offered(
    answer: CheckpointAnswer,
    known: &MemberSet,
    params: Params,
    network_id: &[u8; 32],
) -> Result<Verified, CheckpointError> {
    let c = &answer.committed;
    let height = c.block.height();
    let needed = known.quorum();
    let known_signers: Vec<_> = c.cert.precommits.iter().filter(|pc| known.contains(&pc.vote.voter)).collect();
    let mut signed = std::collections::BTreeSet::new();
    let id = c.block.hash();
    for pc in known_signers {
        let v = &pc.vote;
        let counts = v.height == height && v.block == Some(id) && v.kind == super::vote::VoteKind::Precommit;
        if counts && pc.verify(network_id).is_ok() {
            signed.insert(v.voter);
        }
    }
    if signed.len() < needed {
        return Err(CheckpointError::TooFewKnownSigners { height, signed: signed.len(), known: known.len(), needed });
    }
    verify(Checkpoint { height, hash: id }, answer, params, network_id)
}

/// How often a node starting from a checkpoint asks its peers again while
/// none gave one that verifies.
pub const RETRY_MS: u64 = 500;

/// The choice among peers' answers while a node on an empty data dir starts
/// from a checkpoint. The shell asks its connected peers one at a time for
/// [`Fetch::height`] (0: the peer's tip, for [`CheckpointSource::Peers`]),
/// hands each answer in, and asks the next peer, every [`RETRY_MS`] again,
/// until a decision is [`Decision::Start`] or [`Decision::Contradicted`].
///
/// * An answer is checked against the source: [`verify`] against the
///   operator's checkpoint, [`verify_offered`] against the set this node knows
///   for an offered one. The first that verifies is the start: any answer
///   that verifies is the one block the checkpoint (or the known set's
///   quorum) names, so which peer gave it does not matter.
/// * A refused answer is reported once per peer and cause
///   ([`Fetch::first_report`]); the node keeps asking (a liar among the peers
///   never stops it, an honest answer or a later one does).
/// * Members of the known set holding more than two thirds of it that answer
///   the operator's height with another block contradict the checkpoint: the
///   hash named is wrong, and no peer will give it.
#[derive(Debug, Clone)]
pub struct Fetch {
    source: CheckpointSource,
    known: MemberSet,
    params: Params,
    network_id: [u8; 32],
    /// Known members that answered the trusted height with another block.
    other_block: std::collections::BTreeMap<NodeId, Hash>,
    /// (peer, cause) already reported.
    reported: std::collections::BTreeSet<(NodeId, &'static str)>,
}

/// What the node does with an answer ([`Fetch::handle_answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start from this block and member state.
    Start(Box<Verified>),
    /// Refused; `report`: the first time for this peer and cause (log it at
    /// warn, later ones at debug).
    Refused { error: CheckpointError, report: bool },
    /// The operator's checkpoint is contradicted by more than two thirds of
    /// the known set: stop.
    Contradicted(Contradiction),
}

/// Members holding more than two thirds of the known set hold `got` at the
/// checkpoint's height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contradiction {
    pub checkpoint: Checkpoint,
    pub got: Hash,
    pub peers: usize,
    pub known: usize,
}

impl Fetch {
    /// A fetch for `source`, trusting `known` (the set this node knows: the
    /// genesis set on an empty data dir) for an offered checkpoint.
    pub fn new(source: CheckpointSource, known: MemberSet, params: Params, network_id: [u8; 32]) -> Fetch {
        Fetch { source, known, params, network_id, other_block: Default::default(), reported: Default::default() }
    }

    pub fn source(&self) -> CheckpointSource {
        self.source
    }

    /// The height to ask for: the operator's, or 0 (the peer's tip).
    pub fn height(&self) -> Height {
        match self.source {
            CheckpointSource::Trusted(c) => c.height,
            CheckpointSource::Peers => 0,
        }
    }

    /// Whether `cause` from `peer` is reported for the first time (causes the
    /// shell finds itself: an answer of another kind, one that does not decode).
    pub(crate) fn first_report(&mut self, peer: NodeId, cause: &'static str) -> bool {
        self.reported.insert((peer, cause))
    }

    /// `peer`'s answer: the start, a refusal, or the end of the fetch.
    pub fn handle_answer(&mut self, peer: NodeId, answer: CheckpointAnswer) -> Decision {
        let verified = match self.source {
            CheckpointSource::Trusted(c) => verify(c, answer, self.params, &self.network_id),
            CheckpointSource::Peers => verify_offered(answer, &self.known, self.params, &self.network_id),
        };
        let error = match verified {
            Ok(v) => return Decision::Start(Box::new(v)),
            Err(e) => e,
        };
        if let (CheckpointSource::Trusted(c), CheckpointError::WrongHash { got, .. }) = (self.source, &error) {
            if self.known.contains(&peer) {
                self.other_block.insert(peer, *got);
            }
            if self.other_block.len() >= self.known.quorum() {
                return Decision::Contradicted(Contradiction {
                    checkpoint: c,
                    got: *got,
                    peers: self.other_block.len(),
                    known: self.known.len(),
                });
            }
        }
        let report = self.reported.insert((peer, error.kind()));
        Decision::Refused { error, report }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::{tx_root, Block, Header};
    use crate::chain::members::Plan;
    use crate::chain::vote::{Certificate, SignedVote, Vote, VoteKind};
    use crate::identity::{Identity, NodeId};

    const NET: [u8; 32] = [9; 32];
    const H: Height = 50;

    fn identities(seed: u8) -> Vec<Identity> {
        let mut ids: Vec<_> = (0..4u8)
            .map(|i| Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[seed + i; 32])).unwrap())
            .collect();
        ids.sort_by_key(|i| i.id());
        ids
    }

    /// The member state after height `H - 1` of a chain of `ids` that runs
    /// protocol `version` from height 1.
    fn state_before(ids: &[Identity], version: u16) -> MembershipState {
        let who: Vec<NodeId> = ids.iter().map(|i| i.id()).collect();
        let mut state = Membership::of_ids(&who, 1).state().clone();
        state.applied = H - 1;
        if version > 3 {
            state.schedule.push(Plan { version, height: 1 });
        }
        state
    }

    fn params() -> Params {
        Params { min_active: 1, ttl: 1_000 }
    }

    /// Block `H` linked to `parent` and `before`, certified by `signers`.
    fn answer(parent: Hash, before: MembershipState, signers: &[Identity]) -> CheckpointAnswer {
        let txs = vec![b"tx".to_vec()];
        let header = Header {
            height: H,
            round: 0,
            prev_hash: parent_link(parent, members_digest(&before), true),
            timestamp_ms: 1_000,
            proposer: signers[0].id(),
            tx_root: tx_root(&txs),
            changes: vec![],
        };
        let block = Block { header, txs: txs.into_iter().map(Into::into).collect() };
        let precommits: Vec<SignedVote> = signers
            .iter()
            .map(|who| {
                let vote =
                    Vote { kind: VoteKind::Precommit, height: H, round: 0, block: Some(block.hash()), voter: who.id() };
                vote.sign(&NET, who)
            })
            .collect();
        let cert = Certificate { height: H, round: 0, block: block.hash(), precommits };
        CheckpointAnswer { parent, committed: Committed { block, cert }, before }
    }

    fn trusted(a: &CheckpointAnswer) -> Checkpoint {
        Checkpoint { height: H, hash: a.committed.block.hash() }
    }

    #[test]
    fn a_checkpoint_is_height_colon_hash_or_peers() {
        let hex = "ab".repeat(32);
        assert_eq!(
            format!("7:{hex}").parse::<CheckpointSource>(),
            Ok(CheckpointSource::Trusted(Checkpoint { height: 7, hash: Hash([0xab; 32]) }))
        );
        assert_eq!("peers".parse::<CheckpointSource>(), Ok(CheckpointSource::Peers));
        for bad in [
            format!("1:{hex}"),
            format!("0:{hex}"),
            format!("x:{hex}"),
            "7:abcd".into(),
            hex.clone(),
            format!("7:{}zz", "ab".repeat(31)),
        ] {
            assert!(bad.parse::<CheckpointSource>().is_err(), "{bad:?} is refused");
        }
        let c = Checkpoint { height: 7, hash: Hash([0xab; 32]) };
        assert_eq!(c.to_string().parse::<Checkpoint>(), Ok(c), "Display and FromStr agree");
    }

    #[test]
    fn an_honest_answer_gives_the_block_and_the_state_after_it() {
        let ids = identities(1);
        let before = state_before(&ids, 4);
        let a = answer(Hash([7; 32]), before.clone(), &ids[..3]);
        let v = verify(trusted(&a), a.clone(), params(), &NET).unwrap();
        assert_eq!(v.committed, a.committed);
        assert_eq!(v.before, before);
        assert_eq!(v.after.applied, H, "the state after the checkpoint's block");
        assert_eq!(v.after.current, before.next);
    }

    #[test]
    fn a_block_of_another_id_is_refused() {
        let ids = identities(1);
        let a = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..3]);
        let other = Checkpoint { height: H, hash: Hash([1; 32]) };
        assert!(matches!(verify(other, a.clone(), params(), &NET), Err(CheckpointError::WrongHash { .. })));
        let higher = Checkpoint { height: H + 1, hash: trusted(&a).hash };
        assert!(matches!(verify(higher, a, params(), &NET), Err(CheckpointError::WrongHeight { .. })));
    }

    #[test]
    fn a_member_state_that_does_not_hash_to_the_commitment_is_refused() {
        let ids = identities(1);
        let a = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..3]);
        let t = trusted(&a);
        // A liar's own keys in place of the set: its certificate would verify
        // against them, but the state is not the one the block commits to.
        let liars = identities(100);
        let mut forged = a.clone();
        forged.before = state_before(&liars, 4);
        assert_eq!(verify(t, forged, params(), &NET), Err(CheckpointError::MembersMismatch { height: H }));
        // The right state with another parent does not link either.
        let mut moved = a.clone();
        moved.parent = Hash([8; 32]);
        assert_eq!(verify(t, moved, params(), &NET), Err(CheckpointError::MembersMismatch { height: H }));
        // A state of another height.
        let mut later = a;
        later.before.applied = H;
        assert!(matches!(verify(t, later, params(), &NET), Err(CheckpointError::StateHeight { .. })));
    }

    #[test]
    fn before_protocol_4_nothing_commits_to_a_state_and_no_checkpoint_is_taken() {
        let ids = identities(1);
        let a = answer(Hash([7; 32]), state_before(&ids, 3), &ids[..3]);
        assert_eq!(
            verify(trusted(&a), a, params(), &NET),
            Err(CheckpointError::NotCommitted { height: H, version: 3 })
        );
    }

    #[test]
    fn a_forged_certificate_is_refused() {
        let ids = identities(1);
        let mut a = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..3]);
        a.committed.cert.precommits[1].signature[0] ^= 1;
        assert!(matches!(verify(trusted(&a), a.clone(), params(), &NET), Err(CheckpointError::Certificate { .. })));
        // Two of four signatures are not a quorum.
        a.committed.cert.precommits.truncate(2);
        assert!(matches!(verify(trusted(&a), a, params(), &NET), Err(CheckpointError::Certificate { .. })));
    }

    #[test]
    fn an_offered_checkpoint_needs_more_than_two_thirds_of_the_known_set() {
        let ids = identities(1);
        let known = Membership::of_ids(&ids.iter().map(|i| i.id()).collect::<Vec<_>>(), 1).current().clone();
        let three = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..3]);
        assert!(verify_offered(three, &known, params(), &NET).is_ok(), "3 of 4 is more than two thirds");
        let two = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..2]);
        assert_eq!(
            verify_offered(two, &known, params(), &NET),
            Err(CheckpointError::TooFewKnownSigners { height: H, signed: 2, known: 4, needed: 3 })
        );
        // A chain of strangers, however well it verifies against itself.
        let liars = identities(100);
        let theirs = answer(Hash([7; 32]), state_before(&liars, 4), &liars[..4]);
        assert!(verify(trusted(&theirs), theirs.clone(), params(), &NET).is_ok(), "consistent in itself");
        assert!(matches!(
            verify_offered(theirs, &known, params(), &NET),
            Err(CheckpointError::TooFewKnownSigners { signed: 0, .. })
        ));
        // Known members' signatures that do not verify do not count.
        let mut bad = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..3]);
        bad.committed.cert.precommits[0].signature[0] ^= 1;
        assert!(matches!(
            verify_offered(bad, &known, params(), &NET),
            Err(CheckpointError::TooFewKnownSigners { signed: 2, .. })
        ));
    }

    fn known(ids: &[Identity]) -> MemberSet {
        Membership::of_ids(&ids.iter().map(|i| i.id()).collect::<Vec<_>>(), 1).current().clone()
    }

    #[test]
    fn a_fetch_starts_from_the_first_answer_that_verifies_whoever_lied_before() {
        let ids = identities(1);
        let good = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..3]);
        let mut forged = good.clone();
        forged.before = state_before(&identities(100), 4);
        for source in [CheckpointSource::Trusted(trusted(&good)), CheckpointSource::Peers] {
            let mut fetch = Fetch::new(source, known(&ids), params(), NET);
            let liar = ids[3].id();
            let first = fetch.handle_answer(liar, forged.clone());
            assert!(matches!(first, Decision::Refused { report: true, .. }), "{source:?}: a liar is refused");
            let again = fetch.handle_answer(liar, forged.clone());
            assert!(matches!(again, Decision::Refused { report: false, .. }), "reported once per peer and cause");
            match fetch.handle_answer(ids[0].id(), good.clone()) {
                Decision::Start(v) => assert_eq!(v.committed, good.committed),
                other => panic!("{source:?}: the honest answer is the start, got {other:?}"),
            }
        }
        assert_eq!(Fetch::new(CheckpointSource::Peers, known(&ids), params(), NET).height(), 0, "the peer's tip");
    }

    #[test]
    fn a_trusted_checkpoint_is_contradicted_only_by_more_than_two_thirds_of_the_known_set() {
        let ids = identities(1);
        let theirs = answer(Hash([7; 32]), state_before(&ids, 4), &ids[..3]);
        let named = Checkpoint { height: H, hash: Hash([1; 32]) };
        let mut fetch = Fetch::new(CheckpointSource::Trusted(named), known(&ids), params(), NET);
        // Strangers and repeats do not count; two of four members are not enough.
        let stranger = identities(100)[0].id();
        for peer in [stranger, ids[0].id(), ids[0].id(), ids[1].id()] {
            let d = fetch.handle_answer(peer, theirs.clone());
            assert!(matches!(d, Decision::Refused { error: CheckpointError::WrongHash { .. }, .. }), "{d:?}");
        }
        let d = fetch.handle_answer(ids[2].id(), theirs.clone());
        assert_eq!(
            d,
            Decision::Contradicted(Contradiction {
                checkpoint: named,
                got: theirs.committed.block.hash(),
                peers: 3,
                known: 4
            })
        );
    }
}
