//! The measure every bounded structure of the chain reports: what it holds for
//! peers, in items and bytes. Imports nothing of the chain, so any module may
//! report its holdings.

/// What a structure holds for what peers sent: its items and about their bytes
/// in memory (`masternode_held_bytes{what}` reports the bytes; the simulation
/// holds both to their budgets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub items: usize,
    pub bytes: usize,
}

impl Usage {
    pub fn new(items: usize, bytes: usize) -> Usage {
        Usage { items, bytes }
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage { items: self.items + other.items, bytes: self.bytes + other.bytes }
    }
}
