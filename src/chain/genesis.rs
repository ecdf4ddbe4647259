//! The genesis: the network file's values as the chain uses them (its name,
//! genesis time, block interval, `min_active` and first member set) and the
//! network id they hash to. `config` reads the file into these types.

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
    /// Hash of the network's identity; see [`Network::compute_id`].
    pub id: [u8; 32],
}

impl Network {
    /// The network id is SHA-256 over the name, genesis time, block interval,
    /// `min_active` and the sorted member keys. Addresses are left out on purpose: a
    /// node may move to a new IP without forking the network.
    pub(crate) fn compute_id(
        name: &str,
        genesis: u64,
        interval: u64,
        min_active: usize,
        members: &[Member],
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
        let mut id = [0u8; 32];
        id.copy_from_slice(ctx.finish().as_ref());
        id
    }

    /// Number of masternodes that must be connected (this node included) for the
    /// network to make progress: `max(min_active, floor(2n/3) + 1)`.
    pub fn required(&self) -> usize {
        crate::chain::quorum::required_active(self.members.len(), self.min_active)
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|m| &m.id == id)
    }

    pub fn is_member(&self, id: &NodeId) -> bool {
        self.member(id).is_some()
    }
}
