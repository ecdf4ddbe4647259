//! What the chain accepts and keeps beyond the transport's limits (`[limits]` in
//! `masternode.toml`, which `config` reads into these).

/// Blocks one sync response carries, at most: the largest `sync_batch_blocks`
/// (the previous release's too). A `Blocks` frame naming more does not decode.
pub(crate) const MAX_SYNC_BATCH_BLOCKS: usize = 1024;

/// Limits of what the node accepts and keeps, beyond the transport's; every one
/// has a default and can be set in `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    pub mempool: super::mempool::MempoolLimits,
    /// Blocks per sync response, at most, and their encoded bytes.
    pub sync_batch_blocks: u32,
    pub sync_response_bytes: usize,
    /// Sync requests one peer may make per second (a burst of twice that).
    pub sync_requests_per_sec: u32,
    /// Bytes of answers (`Blocks`, `Txs`) one peer may be served per second
    /// (a burst of twice that, at least one full answer); see
    /// [`crate::chain::sync::ServeBudget`].
    pub sync_serve_bytes_per_sec: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            mempool: Default::default(),
            sync_batch_blocks: 64,
            sync_response_bytes: 3 * 1024 * 1024,
            sync_requests_per_sec: 20,
            sync_serve_bytes_per_sec: 8 * 1024 * 1024,
        }
    }
}

pub use super::usage::Usage;

impl NodeLimits {
    /// These limits on a network whose blocks obey `block`: a transaction
    /// larger than a block's bytes could never be proposed, and would hold
    /// back its share of the mempool until it expired, so `tx_max_bytes` is
    /// at most `max_block_bytes` and larger ones are refused where they enter.
    pub(crate) fn within_blocks(mut self, block: &super::block::Limits) -> NodeLimits {
        self.mempool.max_tx_bytes = self.mempool.max_tx_bytes.min(block.max_block_bytes);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::Limits;

    #[test]
    fn a_transaction_is_never_larger_than_the_networks_block() {
        let defaults = NodeLimits::default();
        assert_eq!(defaults.within_blocks(&Limits::default()), defaults, "3 MiB blocks take any 64 KiB transaction");
        let small = Limits { max_block_bytes: 1000, ..Limits::default() };
        assert_eq!(defaults.within_blocks(&small).mempool.max_tx_bytes, 1000);
        assert_eq!(defaults.within_blocks(&small).mempool.max_txs, defaults.mempool.max_txs, "nothing else moves");
    }
}
