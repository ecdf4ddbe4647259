//! Where a message belongs in the chain: its height and its round.

/// A block's place in the chain; the genesis is height 0, the first block 1.
pub type Height = u64;
/// A consensus round within a height, from 0.
pub type Round = u32;
