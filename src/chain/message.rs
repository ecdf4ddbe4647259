//! The chain's messages, as they cross the wire.
//!
//! The transport carries frames of bytes and knows nothing of blocks; this module
//! says what the chain sends and which stream carries each kind ([`PROTOCOL`]).
//! Proposals, votes, tips and transactions travel on the long-lived gossip stream
//! (each in its outbox class, see [`Message::outgoing`]); each sync request gets a
//! bidirectional stream of its own with one request frame and one response frame.
//! A node sends its proposals compact (header and transaction ids,
//! [`super::compact`]) and answers `GetTxs` for what a peer misses on a request
//! stream; full proposals are still accepted, and sync sends full blocks.
//! Each kind has a size limit, checked from the frame header before its body is
//! read; the variant order is the wire's kind byte, so new kinds are appended,
//! never inserted.

use bincode::de::Decoder;
use bincode::error::{AllowedEnumVariants, DecodeError};
use bincode::Decode;
use bytes::Bytes;

use super::block::{Hash, Height, Round, MAX_BLOCK_TXS};
use super::checkpoint::CheckpointAnswer;
use super::compact::CompactProposal;
use super::limits::MAX_SYNC_BATCH_BLOCKS;
use super::members::{SignedApproval, UPGRADE_WIRE};
use super::vote::{Committed, SignedProposal, SignedVote};
use crate::codec::{self, Frame, FrameError, MAX_FRAME};
use crate::net::handshake::WIRE;
use crate::net::{Class, Outgoing, Protocol};

/// Encoded as derived; decoded by hand ([`Message`]'s `Decode`) to bound each
/// sequence's length before it is allocated.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode)]
pub enum Message {
    /// Opaque payload: the request/response probe (echoed).
    Data(Vec<u8>),
    /// A transaction gossiped between mempools.
    Tx(Vec<u8>),
    Proposal(SignedProposal),
    Vote(SignedVote),
    /// The sender committed this block; `time_ms` is what its wall clock read
    /// when it sent this (see [`super::clock`]).
    Tip {
        height: Height,
        hash: Hash,
        time_ms: u64,
    },
    /// Request: up to `count` committed blocks from `from`.
    GetBlocks {
        from: Height,
        count: u32,
    },
    /// Response to `GetBlocks`.
    Blocks(Vec<Committed>),
    /// A member's approval of a membership change, gossiped to proposers.
    Approval(SignedApproval),
    /// A proposal as its header and transaction ids ([`super::compact`]).
    CompactProposal(CompactProposal),
    /// Request: the transactions with these ids, for the compact proposal of
    /// this height and round.
    GetTxs {
        height: Height,
        round: Round,
        ids: Vec<Hash>,
    },
    /// Response to `GetTxs`: the transactions the answerer holds, in the order
    /// asked, those it lacks left out.
    Txs(Vec<Vec<u8>>),
    /// The sender holds the blocks from `earliest` to `height`, its tip: what
    /// it can serve to sync (`retain_blocks` prunes older ones). Wire 4 only;
    /// sent on connecting and after each block, beside the `Tip`.
    Holds {
        earliest: Height,
        height: Height,
    },
    /// Request: the checkpoint at `height` (0: one of the answerer's choice,
    /// its tip), for a node that starts from it ([`super::checkpoint`]). Wire 4
    /// only.
    GetCheckpoint {
        height: Height,
    },
    /// Response to `GetCheckpoint`: the block with its certificate, its
    /// parent's id, and the member state the parent left. Wire 4 only.
    Checkpoint(Box<CheckpointAnswer>),
}

/// The derived decoding (the variant index as a varint, then the fields in
/// order), with `Blocks`, `GetTxs` and `Txs` bounded by what a response or a
/// block may hold ([`codec::decode_seq`]); the sequences inside blocks and
/// compact proposals are bounded by their own types. The golden encodings of
/// every kind (`every_kind_encodes_and_decodes_as_before_the_bounds`) hold
/// this to the derived form.
impl<C> Decode<C> for Message {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        let index = u32::decode(d)?;
        Ok(match u8::try_from(index).unwrap_or(u8::MAX) {
            Kind::DATA => Message::Data(Decode::decode(d)?),
            Kind::TX => Message::Tx(Decode::decode(d)?),
            Kind::PROPOSAL => Message::Proposal(Decode::decode(d)?),
            Kind::VOTE => Message::Vote(Decode::decode(d)?),
            Kind::TIP => {
                Message::Tip { height: Decode::decode(d)?, hash: Decode::decode(d)?, time_ms: Decode::decode(d)? }
            }
            Kind::GET_BLOCKS => Message::GetBlocks { from: Decode::decode(d)?, count: Decode::decode(d)? },
            Kind::BLOCKS => Message::Blocks(codec::decode_seq(d, MAX_SYNC_BATCH_BLOCKS, "blocks in a response")?),
            Kind::APPROVAL => Message::Approval(Decode::decode(d)?),
            Kind::COMPACT_PROPOSAL => Message::CompactProposal(Decode::decode(d)?),
            Kind::GET_TXS => Message::GetTxs {
                height: Decode::decode(d)?,
                round: Decode::decode(d)?,
                ids: codec::decode_seq(d, MAX_BLOCK_TXS, "transaction ids in a request")?,
            },
            Kind::TXS => Message::Txs(codec::decode_seq(d, MAX_BLOCK_TXS, "transactions in an answer")?),
            Kind::HOLDS => Message::Holds { earliest: Decode::decode(d)?, height: Decode::decode(d)? },
            Kind::GET_CHECKPOINT => Message::GetCheckpoint { height: Decode::decode(d)? },
            Kind::CHECKPOINT => Message::Checkpoint(Decode::decode(d)?),
            _ => {
                return Err(DecodeError::UnexpectedVariant {
                    type_name: "Message",
                    allowed: &AllowedEnumVariants::Range { min: 0, max: Kind::CHECKPOINT as u32 },
                    found: index,
                })
            }
        })
    }
}
bincode::impl_borrow_decode!(Message);

/// Kind bytes, equal to the variant indexes above (a frame's fifth byte).
pub struct Kind;

impl Kind {
    pub const DATA: u8 = 0;
    pub const TX: u8 = 1;
    pub const PROPOSAL: u8 = 2;
    pub const VOTE: u8 = 3;
    pub(crate) const TIP: u8 = 4;
    pub(crate) const GET_BLOCKS: u8 = 5;
    pub const BLOCKS: u8 = 6;
    pub(crate) const APPROVAL: u8 = 7;
    pub(crate) const COMPACT_PROPOSAL: u8 = 8;
    pub(crate) const GET_TXS: u8 = 9;
    pub(crate) const TXS: u8 = 10;
    pub(crate) const HOLDS: u8 = 11;
    pub(crate) const GET_CHECKPOINT: u8 = 12;
    pub(crate) const CHECKPOINT: u8 = 13;
}

/// Limits per kind, bytes of body.
pub const DATA_LIMIT: usize = 1024 * 1024;
/// A `Data` probe on a request or response stream (an echo of a few bytes):
/// a request is read as soon as it holds an answer slot, so requests are small.
pub(crate) const DATA_PROBE_LIMIT: usize = 1024;
pub(crate) const TX_LIMIT: usize = 64 * 1024 + 16;
/// A full block (`MAX_BLOCK_BYTES` of transactions), a length prefix of up to 3
/// bytes for each of its at most 20,000 transactions, and the header.
pub const PROPOSAL_LIMIT: usize = crate::chain::block::MAX_BLOCK_BYTES + 128 * 1024;

/// What a proposal holds besides its transactions and their length prefixes,
/// at most: the header with its most approvals (64 of at most 512 bytes, 32 KiB),
/// the proposal's heights, rounds, key and signature, with room to spare.
const PROPOSAL_ENVELOPE: usize = 64 * 1024;

/// The most transaction bytes a network file may set (`max_block_bytes`) for
/// blocks of at most `max_block_txs` transactions: a proposal of a full block
/// must fit its frame ([`PROPOSAL_LIMIT`]), with the envelope, a length prefix
/// of 3 bytes for each transaction and 2 more for each one of 64 KiB (the most
/// that fit). 3,151,166 for 20,000 transactions, above today's 3 MiB.
pub(crate) const fn max_block_bytes_ceiling(max_block_txs: usize) -> usize {
    let room = PROPOSAL_LIMIT - PROPOSAL_ENVELOPE;
    let prefixes = 3 * max_block_txs;
    if prefixes >= room {
        return 0;
    }
    // The largest b with b + 2 * (b / 65536 + 1) <= left, near enough: b <= left.
    let left = room - prefixes;
    left - 2 * (left / 65536 + 1)
}

/// The most transactions a network file may set (`max_block_txs`): the bound
/// every sequence of transactions or ids is decoded with, from which the
/// `CompactProposal` and `GetTxs` frame limits are computed.
pub(crate) const MAX_BLOCK_TXS_CEILING: usize = MAX_BLOCK_TXS;

const _: () = assert!(crate::chain::block::MAX_BLOCK_BYTES <= max_block_bytes_ceiling(MAX_BLOCK_TXS));
pub const VOTE_LIMIT: usize = 256;
pub(crate) const TIP_LIMIT: usize = 64;
/// Two heights as varints of at most 9 bytes each.
pub(crate) const HOLDS_LIMIT: usize = 32;
/// The first wire version that carries `Holds` (0.1.0 does not know the kind).
pub(crate) const HOLDS_WIRE: u16 = 4;
pub(crate) const GET_BLOCKS_LIMIT: usize = 32;
/// One height as a varint of at most 9 bytes, with room to spare.
pub(crate) const GET_CHECKPOINT_LIMIT: usize = 16;
/// A block (within `BLOCKS_LIMIT` less the member state), its certificate and
/// the member state: one frame of the codec's largest size.
pub(crate) const CHECKPOINT_LIMIT: usize = MAX_FRAME;
/// The first wire version that carries `GetCheckpoint` and `Checkpoint`.
pub(crate) const CHECKPOINT_WIRE: u16 = 4;
pub const BLOCKS_LIMIT: usize = MAX_FRAME;
pub(crate) const APPROVAL_LIMIT: usize = 512;
/// A header with its most approvals (64 of at most 512 bytes), and an id of 32
/// bytes for each of a block's at most 20,000 transactions.
pub(crate) const COMPACT_PROPOSAL_LIMIT: usize = MAX_BLOCK_TXS * 32 + 64 * 1024;
pub const GET_TXS_LIMIT: usize = MAX_BLOCK_TXS * 32 + 64;
pub const TXS_LIMIT: usize = MAX_FRAME;
/// Transaction bytes in one `Txs` answer, at most: with a length prefix of up to
/// 3 bytes for each of at most 20,000 transactions it stays within `TXS_LIMIT`.
pub(crate) const TXS_ANSWER_BYTES: usize = TXS_LIMIT - 128 * 1024;

impl Frame for Message {
    fn limit(kind: u8) -> Option<usize> {
        match kind {
            Kind::DATA => Some(DATA_LIMIT),
            Kind::TX => Some(TX_LIMIT),
            Kind::PROPOSAL => Some(PROPOSAL_LIMIT),
            Kind::VOTE => Some(VOTE_LIMIT),
            Kind::TIP => Some(TIP_LIMIT),
            Kind::GET_BLOCKS => Some(GET_BLOCKS_LIMIT),
            Kind::BLOCKS => Some(BLOCKS_LIMIT),
            Kind::APPROVAL => Some(APPROVAL_LIMIT),
            Kind::COMPACT_PROPOSAL => Some(COMPACT_PROPOSAL_LIMIT),
            Kind::GET_TXS => Some(GET_TXS_LIMIT),
            Kind::TXS => Some(TXS_LIMIT),
            Kind::HOLDS => Some(HOLDS_LIMIT),
            Kind::GET_CHECKPOINT => Some(GET_CHECKPOINT_LIMIT),
            Kind::CHECKPOINT => Some(CHECKPOINT_LIMIT),
            _ => None,
        }
    }
}

impl Message {
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Message::Data(_) => Kind::DATA,
            Message::Tx(_) => Kind::TX,
            Message::Proposal(_) => Kind::PROPOSAL,
            Message::Vote(_) => Kind::VOTE,
            Message::Tip { .. } => Kind::TIP,
            Message::GetBlocks { .. } => Kind::GET_BLOCKS,
            Message::Blocks(_) => Kind::BLOCKS,
            Message::Approval(_) => Kind::APPROVAL,
            Message::CompactProposal(_) => Kind::COMPACT_PROPOSAL,
            Message::GetTxs { .. } => Kind::GET_TXS,
            Message::Txs(_) => Kind::TXS,
            Message::Holds { .. } => Kind::HOLDS,
            Message::GetCheckpoint { .. } => Kind::GET_CHECKPOINT,
            Message::Checkpoint(_) => Kind::CHECKPOINT,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Data(_) => "data",
            Message::Tx(_) => "tx",
            Message::Proposal(_) => "proposal",
            Message::Vote(_) => "vote",
            Message::Tip { .. } => "tip",
            Message::GetBlocks { .. } => "get_blocks",
            Message::Blocks(_) => "blocks",
            Message::Approval(_) => "approval",
            Message::CompactProposal(_) => "compact_proposal",
            Message::GetTxs { .. } => "get_txs",
            Message::Txs(_) => "txs",
            Message::Holds { .. } => "holds",
            Message::GetCheckpoint { .. } => "get_checkpoint",
            Message::Checkpoint(_) => "checkpoint",
        }
    }
}

/// The height a proposal's body names, full or compact, read from its first bytes
/// without decoding the block (`None` for other kinds, or a body too short to
/// say). The encoding starts with the kind byte and then the proposal's height as
/// a varint.
pub(crate) fn proposal_height(body: &[u8]) -> Option<Height> {
    if !matches!(body.first(), Some(&Kind::PROPOSAL | &Kind::COMPACT_PROPOSAL)) {
        return None;
    }
    let (height, _): (Height, usize) = bincode::decode_from_slice(&body[1..], codec::BINCODE).ok()?;
    Some(height)
}

/// How many blocks a `Blocks` body says it holds, read from its first bytes
/// without decoding them (`None` for other kinds, or a body too short to say):
/// the kind byte, then the sequence's length as a varint. A node compares it
/// with the count it asked for before it decodes an answer: each transaction
/// decodes to a handle of its own (a `Bytes` of 32 B), so 1,024 blocks of
/// tiny transactions in a 4 MiB frame would be about 130 MB in memory.
pub(crate) fn blocks_count(body: &[u8]) -> Option<u64> {
    if body.first() != Some(&Kind::BLOCKS) {
        return None;
    }
    let (count, _): (u64, usize) = bincode::decode_from_slice(&body[1..], codec::BINCODE).ok()?;
    Some(count)
}

/// Which stream carries which kinds, and their limits.
pub const PROTOCOL: Protocol =
    Protocol { gossip: gossip_limit, request: request_limit, response: response_limit, urgent: is_consensus_kind };

/// The kinds a peer's inbound queue serves ahead of its others: a peer's
/// transactions and tips never hold its proposals and votes back.
pub fn is_consensus_kind(k: u8) -> bool {
    matches!(k, Kind::PROPOSAL | Kind::COMPACT_PROPOSAL | Kind::VOTE)
}

fn gossip_limit(k: u8) -> Option<usize> {
    matches!(
        k,
        Kind::TX | Kind::PROPOSAL | Kind::VOTE | Kind::TIP | Kind::APPROVAL | Kind::COMPACT_PROPOSAL | Kind::HOLDS
    )
    .then(|| Message::limit(k))
    .flatten()
}

fn request_limit(k: u8) -> Option<usize> {
    match k {
        Kind::DATA => Some(DATA_PROBE_LIMIT),
        Kind::GET_BLOCKS | Kind::GET_TXS | Kind::GET_CHECKPOINT => Message::limit(k),
        _ => None,
    }
}

fn response_limit(k: u8) -> Option<usize> {
    match k {
        Kind::DATA => Some(DATA_PROBE_LIMIT),
        Kind::BLOCKS | Kind::TXS | Kind::CHECKPOINT => Message::limit(k),
        _ => None,
    }
}

/// Our own message is over its kind's limit: block limits rule that out, so it is
/// a bug, reported loudly by the caller.
#[derive(Debug, thiserror::Error)]
#[error("{kind} message of {len} bytes is over the {limit}-byte limit of its kind")]
pub struct TooLarge {
    pub kind: &'static str,
    pub len: usize,
    pub limit: usize,
}

impl Message {
    /// One encoded frame (length prefix included), checked against its kind's limit.
    pub fn encode(&self) -> Result<Bytes, TooLarge> {
        let frame = codec::encode(self);
        let limit = Message::limit(self.kind()).unwrap_or(0);
        if frame.len() - 4 > limit {
            return Err(TooLarge { kind: self.kind_name(), len: frame.len() - 4, limit });
        }
        Ok(frame)
    }

    /// The frame queued for peers on the gossip stream, in its outbox class.
    /// Consensus messages and tips are superseded by those of a later height;
    /// a `Holds` travels with the tips, superseded by the next block's.
    pub fn outgoing(&self) -> Result<Outgoing, TooLarge> {
        let (class, epoch) = match self {
            Message::Proposal(p) => (Class::Consensus, p.proposal.height),
            Message::CompactProposal(p) => (Class::Consensus, p.height),
            Message::Vote(v) => (Class::Consensus, v.vote.height),
            Message::Tip { height, .. } | Message::Holds { height, .. } => (Class::Tip, *height),
            _ => (Class::Tx, 0),
        };
        Ok(Outgoing { frame: self.encode()?, class, epoch, wire: self.wire() })
    }

    /// The lowest wire version that carries this message: [`UPGRADE_WIRE`] for
    /// an upgrade plan's approval and for a proposal or blocks that carry one
    /// (a peer of 0.1.0 could not decode them), the lowest this release speaks
    /// for everything else.
    pub(crate) fn wire(&self) -> u16 {
        let plans = |changes: &[SignedApproval]| changes.iter().any(|sa| sa.approval.change.plan().is_some());
        let carries_plan = match self {
            Message::Approval(sa) => plans(std::slice::from_ref(sa)),
            Message::Proposal(p) => plans(&p.proposal.block.header.changes),
            Message::CompactProposal(p) => plans(&p.header.changes),
            Message::Blocks(blocks) => blocks.iter().any(|c| plans(&c.block.header.changes)),
            _ => false,
        };
        if carries_plan {
            UPGRADE_WIRE
        } else if matches!(self, Message::Holds { .. }) {
            HOLDS_WIRE
        } else if matches!(self, Message::GetCheckpoint { .. } | Message::Checkpoint(_)) {
            CHECKPOINT_WIRE
        } else {
            WIRE.min
        }
    }

    /// The part of a `Blocks` answer (blocks from the height asked, in order) a
    /// peer at wire version `wire` decodes: the blocks before the first that
    /// carries what it cannot decode (an upgrade plan's approval, for wire 3).
    /// A peer of 0.1.0 asking past such a block gets what comes before it; one
    /// asking from it gets nothing, which the caller answers with a refusal.
    pub(crate) fn blocks_for_wire(mut blocks: Vec<Committed>, wire: u16) -> Vec<Committed> {
        let plans = |c: &Committed| c.block.header.changes.iter().any(|sa| sa.approval.change.plan().is_some());
        let needs = |c: &Committed| if plans(c) { UPGRADE_WIRE } else { WIRE.min };
        let decodable = blocks.iter().position(|c| needs(c) > wire).unwrap_or(blocks.len());
        blocks.truncate(decodable);
        blocks
    }

    /// Decodes a frame body the transport delivered.
    pub fn decode(body: &[u8]) -> Result<Message, FrameError> {
        codec::decode_body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proposal of a full block at the ceiling fits its frame, whether its
    /// transactions are many and small or few and as large as a transaction
    /// may be (5-byte length prefixes). The envelope's room for the header's
    /// approvals (32 KiB at most) is left unused here.
    #[test]
    fn a_full_block_at_the_ceiling_fits_the_proposal_frame() {
        use crate::chain::block::{Block, Header};
        use crate::chain::vote::{Proposal, SignedProposal};
        // (max_block_txs, length of each): 1-byte prefixes; 3-byte ones, as
        // many as the bytes allow; 5-byte ones (64 KiB transactions); a few.
        for (txs, tx_len) in [(MAX_BLOCK_TXS, 0), (MAX_BLOCK_TXS, 251), (60, TX_LIMIT - 16), (10, 0)] {
            let bytes = max_block_bytes_ceiling(txs);
            // Every transaction as large as allowed, the last taking the rest.
            let each = if tx_len > 0 { tx_len } else { (TX_LIMIT - 16).min(bytes / txs) };
            let mut body: Vec<Vec<u8>> = Vec::new();
            let mut left = bytes;
            while left > 0 && body.len() < txs {
                let n = if body.len() + 1 == txs { left.min(TX_LIMIT - 16) } else { each.min(left) };
                body.push(vec![0xab; n]);
                left -= n;
            }
            let header = Header {
                height: u64::MAX,
                round: u32::MAX,
                prev_hash: Hash([1; 32]),
                timestamp_ms: u64::MAX,
                proposer: crate::identity::NodeId([2; 32]),
                tx_root: Hash([3; 32]),
                changes: vec![],
            };
            let proposal = Proposal {
                height: u64::MAX,
                round: u32::MAX,
                block: Block { header, txs: body.into_iter().map(Into::into).collect() },
                valid_round: Some(u32::MAX),
                proposer: crate::identity::NodeId([2; 32]),
            };
            let frame = Message::Proposal(SignedProposal { proposal, signature: [9; 64] }).outgoing();
            assert!(frame.is_ok(), "{txs} transactions, {bytes} bytes: {:?}", frame.err());
        }
    }

    /// One message of every kind, with every container of each holding some
    /// elements (an empty transaction among them), built deterministically.
    fn samples() -> Vec<(&'static str, Message)> {
        use crate::chain::block::{tx_root, Block, Header};
        use crate::chain::members::{Approval, Change};
        use crate::chain::vote::{Certificate, Proposal, Vote, VoteKind};
        use crate::identity::Identity;
        let net = [7u8; 32];
        let key = |b: u8| Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[b; 32])).unwrap();
        let (a, b, c) = (key(1), key(2), key(3));
        let approval = Approval {
            change: Change::Add { id: c.id(), addr: "127.0.0.9:24100".parse().unwrap() },
            approver: a.id(),
            signed_at: 4,
        }
        .sign(&net, &a);
        let plan = Approval { change: Change::Upgrade { version: 4, height: 900 }, approver: b.id(), signed_at: 5 }
            .sign(&net, &b);
        let txs = vec![vec![], vec![1], vec![2; 300]];
        let header = Header {
            height: 5,
            round: 1,
            prev_hash: Hash([9; 32]),
            timestamp_ms: 1_764_000_000_123,
            proposer: a.id(),
            tx_root: tx_root(&txs),
            changes: vec![approval.clone(), plan],
        };
        let block = Block { header, txs: txs.into_iter().map(Into::into).collect() };
        let proposal = Proposal { height: 5, round: 1, block: block.clone(), valid_round: Some(0), proposer: a.id() }
            .sign(&net, &a);
        let vote =
            |kind, id: &Identity, block| Vote { kind, height: 5, round: 1, block, voter: id.id() }.sign(&net, id);
        let precommits: Vec<_> =
            [&a, &b, &c].into_iter().map(|id| vote(VoteKind::Precommit, id, Some(block.hash()))).collect();
        let cert = Certificate { height: 5, round: 1, block: block.hash(), precommits };
        let mut bare = block.clone();
        bare.header.changes.clear();
        bare.txs.clear();
        let bare_cert = Certificate { height: 5, round: 0, block: bare.hash(), precommits: vec![] };
        vec![
            ("data", Message::Data(vec![1, 2, 3])),
            ("tx", Message::Tx(vec![0xab; 40])),
            ("proposal", Message::Proposal(proposal.clone())),
            ("vote", Message::Vote(vote(VoteKind::Prevote, &b, Some(block.hash())))),
            ("vote_nil", Message::Vote(vote(VoteKind::Precommit, &c, None))),
            ("tip", Message::Tip { height: 300_000, hash: Hash([3; 32]), time_ms: 1_764_000_000_999 }),
            ("get_blocks", Message::GetBlocks { from: 70_000, count: 64 }),
            ("blocks", Message::Blocks(vec![Committed { block, cert }, Committed { block: bare, cert: bare_cert }])),
            ("approval", Message::Approval(approval)),
            ("compact_proposal", Message::CompactProposal(CompactProposal::of(&proposal))),
            ("get_txs", Message::GetTxs { height: 5, round: 1, ids: vec![Hash([4; 32]), Hash([5; 32])] }),
            ("txs", Message::Txs(vec![vec![], vec![6; 10]])),
        ]
    }

    /// Every kind encodes to the bytes that main at 560825a (derived `Decode`
    /// throughout, before the bounds) wrote for it, and those bytes decode to
    /// the same value: bounding the decoding changed what is accepted, not the
    /// wire.
    #[test]
    fn every_kind_encodes_and_decodes_as_before_the_bounds() {
        let golden = include_str!("../../tests/fixtures/messages-560825a.txt");
        let unhex = |s: &str| -> Vec<u8> {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let samples = samples();
        let mut kinds: Vec<u8> = samples.iter().map(|(_, m)| m.kind()).collect();
        kinds.dedup();
        assert_eq!(kinds, (0..=Kind::TXS).collect::<Vec<_>>(), "a sample of every kind");
        let lines: Vec<(&str, &str)> = golden.lines().map(|l| l.split_once(' ').unwrap()).collect();
        assert_eq!(lines.len(), samples.len());
        for ((name, msg), (golden_name, hex)) in samples.iter().zip(lines) {
            assert_eq!(*name, golden_name);
            let bytes = unhex(hex);
            assert_eq!(&codec::encode(msg)[4..], &bytes[..], "{name}: encoding changed");
            assert_eq!(&Message::decode(&bytes).unwrap(), msg, "{name}: decodes to another value");
        }
    }

    /// `Holds` is a kind of its own, appended: every kind of wire 3 encodes
    /// as before (above), and a peer of wire 3 is never sent one.
    #[test]
    fn holds_travels_on_the_gossip_stream_at_wire_4_only_with_the_tips() {
        let holds = Message::Holds { earliest: 4_901, height: 5_000 };
        let frame = holds.encode().unwrap();
        assert_eq!(frame[4], Kind::HOLDS);
        assert_eq!(Message::decode(&frame[4..]).unwrap(), holds);
        let largest = Message::Holds { earliest: u64::MAX, height: u64::MAX }.encode().unwrap();
        assert!(largest.len() - 4 <= HOLDS_LIMIT);
        assert_eq!(gossip_limit(Kind::HOLDS), Some(HOLDS_LIMIT));
        assert_eq!((request_limit(Kind::HOLDS), response_limit(Kind::HOLDS)), (None, None));
        let out = holds.outgoing().unwrap();
        assert_eq!((out.class, out.epoch, out.wire), (Class::Tip, 5_000, HOLDS_WIRE));
        assert!(WIRE.contains(HOLDS_WIRE) && !WIRE.contains(HOLDS_WIRE - 2));
        let mut trailing = frame[4..].to_vec();
        trailing.push(0);
        assert!(Message::decode(&trailing).is_err(), "trailing bytes are refused");
    }

    #[test]
    fn a_blocks_body_says_how_many_blocks_it_holds_before_it_is_decoded() {
        for (name, msg) in samples() {
            let body = &codec::encode(&msg)[4..];
            let expected = match &msg {
                Message::Blocks(blocks) => Some(blocks.len() as u64),
                _ => None,
            };
            assert_eq!(blocks_count(body), expected, "{name}");
        }
        // A claim of 1,024 blocks and nothing behind it: read, not decoded.
        let mut body = vec![Kind::BLOCKS];
        body.extend_from_slice(&[251, 4, 0]);
        assert_eq!(blocks_count(&body), Some(1024));
        assert!(Message::decode(&body).is_err());
        assert_eq!(blocks_count(&[Kind::BLOCKS]), None, "too short to say");
    }

    #[test]
    fn an_upgrade_plan_travels_only_at_the_wire_version_that_carries_it() {
        use crate::chain::members::{Approval, Change};
        use crate::identity::{Identity, NodeId};
        let identity = Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[1; 32])).unwrap();
        let approval = |change| {
            Message::Approval(Approval { change, approver: identity.id(), signed_at: 1 }.sign(&[0; 32], &identity))
        };
        let plan = approval(Change::Upgrade { version: 4, height: 100 });
        assert_eq!(plan.wire(), UPGRADE_WIRE);
        assert_eq!(plan.outgoing().unwrap().wire, UPGRADE_WIRE);
        assert_eq!(approval(Change::Remove { id: NodeId([2; 32]) }).wire(), 3, "0.1.0 decodes the rest");
        assert_eq!(Message::Tx(vec![1]).wire(), 3);
        assert!(WIRE.contains(UPGRADE_WIRE), "this release speaks the version it needs");
    }

    #[test]
    fn a_peer_of_wire_3_is_sent_the_blocks_before_the_first_that_carries_a_plan() {
        use crate::chain::block::{tx_root, Block, Header};
        use crate::chain::members::{Approval, Change};
        use crate::chain::vote::Certificate;
        use crate::identity::Identity;
        let identity = Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[1; 32])).unwrap();
        let block = |height: Height, change: Option<Change>| {
            let changes: Vec<_> = change
                .into_iter()
                .map(|change| {
                    Approval { change, approver: identity.id(), signed_at: height - 1 }.sign(&[0; 32], &identity)
                })
                .collect();
            let header = Header {
                height,
                round: 0,
                prev_hash: Hash([0; 32]),
                timestamp_ms: height,
                proposer: identity.id(),
                tx_root: tx_root::<Vec<u8>>(&[]),
                changes,
            };
            let block = Block { header, txs: vec![] };
            let cert = Certificate { height, round: 0, block: block.hash(), precommits: vec![] };
            Committed { block, cert }
        };
        let member = Change::Remove { id: crate::identity::NodeId([2; 32]) };
        let plan = Change::Upgrade { version: 4, height: 100 };
        let chain = vec![block(1, None), block(2, Some(member)), block(3, Some(plan)), block(4, None)];
        let heights = |blocks: Vec<Committed>| blocks.iter().map(|c| c.block.height()).collect::<Vec<_>>();
        assert_eq!(heights(Message::blocks_for_wire(chain.clone(), 3)), vec![1, 2], "up to the plan's block");
        assert_eq!(heights(Message::blocks_for_wire(chain[2..].to_vec(), 3)), Vec::<u64>::new(), "from it: none");
        assert_eq!(heights(Message::blocks_for_wire(chain[3..].to_vec(), 3)), vec![4], "after it: harmless");
        assert_eq!(heights(Message::blocks_for_wire(chain.clone(), 4)), vec![1, 2, 3, 4]);
        assert_eq!(Message::Blocks(Message::blocks_for_wire(chain, 3)).wire(), 3, "what is left decodes at 3");
    }

    /// `GetCheckpoint` and `Checkpoint` are kinds of their own, appended, and
    /// travel only to peers of wire 4: 0.1.0 does not know them.
    #[test]
    fn checkpoint_kinds_are_appended_and_wire_4_only() {
        let ask = Message::GetCheckpoint { height: 5_000 };
        assert_eq!(ask.kind(), 12);
        assert_eq!(ask.wire(), CHECKPOINT_WIRE);
        let largest = Message::GetCheckpoint { height: u64::MAX }.encode().unwrap();
        assert!(largest.len() - 4 <= GET_CHECKPOINT_LIMIT);
        assert_eq!(Message::decode(&largest[4..]).unwrap(), Message::GetCheckpoint { height: u64::MAX });
        assert_eq!(Kind::CHECKPOINT, 13);
    }

    #[test]
    fn each_stream_carries_only_its_kinds() {
        let gossip: Vec<u8> = (0..=255).filter(|k| (PROTOCOL.gossip)(*k).is_some()).collect();
        assert_eq!(
            gossip,
            vec![Kind::TX, Kind::PROPOSAL, Kind::VOTE, Kind::TIP, Kind::APPROVAL, Kind::COMPACT_PROPOSAL, Kind::HOLDS]
        );
        let request: Vec<u8> = (0..=255).filter(|k| (PROTOCOL.request)(*k).is_some()).collect();
        assert_eq!(request, vec![Kind::DATA, Kind::GET_BLOCKS, Kind::GET_TXS, Kind::GET_CHECKPOINT]);
        let response: Vec<u8> = (0..=255).filter(|k| (PROTOCOL.response)(*k).is_some()).collect();
        assert_eq!(response, vec![Kind::DATA, Kind::BLOCKS, Kind::TXS, Kind::CHECKPOINT]);
        assert_eq!((PROTOCOL.request)(Kind::GET_BLOCKS), Some(GET_BLOCKS_LIMIT), "a request's limit is its kind's");
        assert_eq!((PROTOCOL.request)(Kind::DATA), Some(DATA_PROBE_LIMIT), "but for the probe's");
        assert_eq!((PROTOCOL.response)(Kind::DATA), Some(DATA_PROBE_LIMIT));
        let urgent: Vec<u8> = (0..=255).filter(|k| (PROTOCOL.urgent)(*k)).collect();
        assert_eq!(urgent, vec![Kind::PROPOSAL, Kind::VOTE, Kind::COMPACT_PROPOSAL]);
    }

    #[test]
    fn a_proposal_height_is_read_from_its_first_bytes() {
        use crate::chain::block::{tx_root, Block, Header};
        use crate::chain::vote::Proposal;
        use crate::identity::Identity;
        let id = Identity::generate().unwrap();
        let txs = vec![vec![1; 100]];
        let block = Block {
            header: Header {
                height: 300_000,
                round: 2,
                prev_hash: Hash([0; 32]),
                timestamp_ms: 1,
                proposer: id.id(),
                tx_root: tx_root(&txs),
                changes: vec![],
            },
            txs: txs.into_iter().map(Into::into).collect(),
        };
        let p = Proposal { height: 300_000, round: 2, block, valid_round: None, proposer: id.id() }.sign(&[0; 32], &id);
        let compact = Message::CompactProposal(CompactProposal::of(&p)).encode().unwrap();
        let frame = Message::Proposal(p).encode().unwrap();
        assert_eq!(proposal_height(&frame[4..]), Some(300_000));
        assert_eq!(proposal_height(&frame[4..10]), Some(300_000), "the kind and the varint suffice");
        assert_eq!(proposal_height(&compact[4..10]), Some(300_000), "a compact proposal's too");
        let tip = Message::Tip { height: 5, hash: Hash([0; 32]), time_ms: 1 }.encode().unwrap();
        assert_eq!(proposal_height(&tip[4..]), None);
    }

    /// The largest compact proposal and `GetTxs` fit their kinds' limits, and a
    /// `Txs` answer within its byte budget fits its frame whatever the sizes.
    #[test]
    fn compact_kinds_fit_their_limits_at_the_block_limits() {
        use crate::chain::block::{tx_root_of_ids, Header};
        use crate::chain::members::MAX_CHANGES_PER_BLOCK;
        let ids = vec![Hash([0xff; 32]); MAX_BLOCK_TXS];
        let header = Header {
            height: u64::MAX,
            round: u32::MAX,
            prev_hash: Hash([0; 32]),
            timestamp_ms: u64::MAX,
            proposer: crate::identity::NodeId([0; 32]),
            tx_root: tx_root_of_ids(ids.len(), ids.iter().copied()),
            changes: vec![],
        };
        let cp = CompactProposal {
            height: u64::MAX,
            round: u32::MAX,
            header,
            ids: ids.clone(),
            valid_round: Some(u32::MAX),
            proposer: crate::identity::NodeId([0; 32]),
            signature: [0; 64],
        };
        let body = codec::body_len(&Message::CompactProposal(cp));
        assert!(body + MAX_CHANGES_PER_BLOCK * APPROVAL_LIMIT <= COMPACT_PROPOSAL_LIMIT, "{body}");
        let get = Message::GetTxs { height: u64::MAX, round: u32::MAX, ids };
        assert!(get.encode().is_ok());
        for size in [1, 40, 256, 64 * 1024] {
            let n = (TXS_ANSWER_BYTES / size).min(MAX_BLOCK_TXS);
            assert!(Message::Txs(vec![vec![0xab; size]; n]).encode().is_ok(), "{n} txs of {size} bytes");
        }
    }

    #[test]
    fn votes_and_tips_are_superseded_by_height_and_txs_are_not() {
        let tip = Message::Tip { height: 7, hash: Hash([0; 32]), time_ms: 1 }.outgoing().unwrap();
        assert_eq!((tip.class, tip.epoch), (Class::Tip, 7));
        let tx = Message::Tx(vec![1; 10]).outgoing().unwrap();
        assert_eq!(tx.class, Class::Tx);
        assert!(Message::Tx(vec![0; TX_LIMIT + 1]).outgoing().is_err());
    }
}
