//! The genesis: the network file's values as the chain uses them (its name,
//! genesis time, block interval, `min_active`, first member set and the block
//! limits) and the network id they hash to. `config` reads the file into these
//! types.
//!
//! The block limits (`max_block_bytes`, `max_block_txs`) are validity rules
//! every member applies to every block from the genesis on: agreed through the
//! genesis, hashed into the network id when the file sets them, so members
//! whose files disagree never connect. A file that leaves them out has the
//! limits and the network id it had before the keys existed.

use std::net::SocketAddr;

use crate::identity::NodeId;

/// One member of the masternode set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// The network file, validated. Members are sorted by `NodeId`, which is also the
/// proposer order.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub genesis_time_ms: u64,
    pub block_interval_ms: u64,
    pub min_active: usize,
    pub members: Vec<Member>,
    /// `max_block_bytes` as the file sets it; `None` for today's 3 MiB.
    pub max_block_bytes: Option<usize>,
    /// `max_block_txs` as the file sets it; `None` for today's 20,000.
    pub max_block_txs: Option<usize>,
    /// Hash of the network's identity; see [`Network::compute_id`].
    pub id: [u8; 32],
}

impl Network {
    /// The network id is SHA-256 over the name, genesis time, block interval,
    /// `min_active`, the sorted member keys and then each block limit the file
    /// sets, as its key's name and value. Addresses are left out on purpose: a
    /// node may move to a new IP without forking the network. A limit the file
    /// leaves out adds nothing, so every network (and 0.1.0's chain) keeps the
    /// id it had; each limit's bytes have a length of their own (24 and 22, the
    /// member keys 32 each), so no two files' inputs read alike.
    pub(crate) fn compute_id(
        name: &str,
        genesis: u64,
        interval: u64,
        min_active: usize,
        members: &[Member],
        max_block_bytes: Option<usize>,
        max_block_txs: Option<usize>,
    ) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"masternode-network-v1\0");
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&genesis.to_be_bytes());
        ctx.update(&interval.to_be_bytes());
        ctx.update(&(min_active as u64).to_be_bytes());
        for m in members {
            ctx.update(&m.id.0);
        }
        if let Some(n) = max_block_bytes {
            ctx.update(b"max_block_bytes\0");
            ctx.update(&(n as u64).to_be_bytes());
        }
        if let Some(n) = max_block_txs {
            ctx.update(b"max_block_txs\0");
            ctx.update(&(n as u64).to_be_bytes());
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(ctx.finish().as_ref());
        id
    }

    /// The rules every block of this network obeys: the file's block limits,
    /// today's values where it sets none.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_block_bytes: self.max_block_bytes.unwrap_or(d.max_block_bytes),
            max_block_txs: self.max_block_txs.unwrap_or(d.max_block_txs),
            ..d
        }
    }

    /// Number of masternodes that must be connected (this node included) for the
    /// network to make progress: `max(min_active, floor(2n/3) + 1)`.
    #[cfg(test)]
    pub(crate) fn required(&self) -> usize {
        crate::chain::quorum::required_active(self.members.len(), self.min_active)
    }

    pub(crate) fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|m| &m.id == id)
    }
}

/// Transaction bytes in one block, at most, on a network whose file does not
/// set `max_block_bytes`. A network may set up to
/// [`super::message::max_block_bytes_ceiling`]: a proposal carrying a full
/// block (plus a length prefix per transaction and the header) stays within its
/// frame limit.
pub const MAX_BLOCK_BYTES: usize = 3 * 1024 * 1024;

/// Rules every block obeys: the network's block limits
/// ([`Network::limits`]) and the clock's tolerance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_block_bytes: usize,
    pub max_block_txs: usize,
    /// How far ahead of our clock a proposer's timestamp may be. Members' clocks
    /// may disagree by up to 30 s (an operator's NTP gone wrong) without their
    /// blocks being refused; the node warns when its own clock is off.
    pub max_clock_drift_ms: u64,
}

/// Transactions in one block, at most, on a network whose file does not set
/// `max_block_txs`; also the most a network may set, and the bound every
/// sequence of a block's transactions or ids is decoded with.
pub const MAX_BLOCK_TXS: usize = 20_000;

impl Default for Limits {
    fn default() -> Self {
        Limits { max_block_bytes: MAX_BLOCK_BYTES, max_block_txs: MAX_BLOCK_TXS, max_clock_drift_ms: 31_000 }
    }
}
