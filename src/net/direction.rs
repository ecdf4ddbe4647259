//! Who dials whom, and which connection survives when a pair has two.
//!
//! For two masternodes the one with the lower *configured* address (its entry in the
//! network file, never its bind address) dials; the other waits. Addresses compare
//! numerically: IPv4 (also when written IPv4-mapped) before IPv6, then the port,
//! then the `NodeId`, so two nodes behind one address still have an order. A node
//! never dials itself.
//!
//! If a pair ever holds two connections, both ends keep the same one:
//! a connection from a newer incarnation of the peer beats one from an older
//! incarnation (the old one is a leftover of a restart); otherwise the connection
//! dialled by the rule's dialer beats one dialled the other way; otherwise (same
//! direction twice: the dialer lost the first and dialled again) the newer one wins.
//! Every fact used is known identically at both ends, so no message is needed to
//! agree.

use std::cmp::Ordering;
use std::net::{IpAddr, SocketAddr};

use crate::identity::NodeId;

/// Which side opened a connection, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// This node's part for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// We rank lower: we dial.
    Dial,
    /// We rank higher: we wait for the peer, and dial only after the passive wait.
    Wait,
}

impl Role {
    /// The direction a connection dialled by the rule's dialer has at this node.
    pub(super) fn preferred(self) -> Direction {
        match self {
            Role::Dial => Direction::Outbound,
            Role::Wait => Direction::Inbound,
        }
    }
}

/// An IPv4-mapped IPv6 address becomes the IPv4 address it carries.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The total order of the rule, as a sortable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    family: u8,
    ip: u128,
    port: u16,
    id: NodeId,
}

pub fn rank(addr: SocketAddr, id: NodeId) -> Rank {
    let addr = canonical(addr);
    let (family, ip) = match addr.ip() {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (6, u128::from(v6)),
    };
    Rank { family, ip, port: addr.port(), id }
}

/// Our role towards `peer`, or `None` when `peer` is ourselves.
pub(super) fn role(me: (SocketAddr, NodeId), peer: (SocketAddr, NodeId)) -> Option<Role> {
    if me.1 == peer.1 {
        return None;
    }
    match rank(me.0, me.1).cmp(&rank(peer.0, peer.1)) {
        Ordering::Less => Some(Role::Dial),
        Ordering::Greater => Some(Role::Wait),
        // Distinct ids never rank equal: the id is part of the key.
        Ordering::Equal => None,
    }
}

/// What both ends know about one of a pair's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnFacts {
    pub direction: Direction,
    /// Random number the peer picked at start-up, carried in its Hello/Welcome.
    pub peer_incarnation: u64,
}

/// Whether `new` replaces `existing` for a peer towards which we have `role`.
/// `new` is the connection whose handshake completed later at this node.
pub(super) fn new_wins(role: Role, existing: ConnFacts, new: ConnFacts) -> bool {
    if existing.peer_incarnation != new.peer_incarnation {
        return true;
    }
    let preferred = role.preferred();
    match (existing.direction == preferred, new.direction == preferred) {
        (true, false) => false,
        (false, true) => true,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A small deterministic generator, enough to sweep the input space.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 11
        }
        fn addr(&mut self) -> SocketAddr {
            let port = (self.next() % 4) as u16 + 1;
            match self.next() % 3 {
                0 => SocketAddr::new(IpAddr::V4((self.next() as u32 % 8).into()), port),
                1 => {
                    SocketAddr::new(IpAddr::V6(std::net::Ipv4Addr::from(self.next() as u32 % 8).to_ipv6_mapped()), port)
                }
                _ => SocketAddr::new(IpAddr::V6((self.next() as u128 % 8).into()), port),
            }
        }
    }

    #[test]
    fn for_every_pair_exactly_one_side_dials() {
        let mut g = Lcg(7);
        for _ in 0..20_000 {
            let a = (g.addr(), id((g.next() % 4) as u8));
            let b = (g.addr(), id((g.next() % 4) as u8));
            match (role(a, b), role(b, a)) {
                (None, None) => assert_eq!(a.1, b.1, "only a node and itself have no role"),
                (Some(x), Some(y)) => assert_ne!(x, y, "{a:?} vs {b:?}: one dials, one waits"),
                other => panic!("asymmetric roles {other:?} for {a:?} {b:?}"),
            }
        }
    }

    #[test]
    fn order_is_total_and_transitive() {
        let mut g = Lcg(11);
        let mut v: Vec<Rank> = (0..500).map(|_| rank(g.addr(), id((g.next() % 200) as u8))).collect();
        v.sort();
        for w in v.windows(2) {
            assert!(w[0] <= w[1]);
        }
    }

    #[test]
    fn addresses_compare_as_numbers_not_text() {
        // As text "69.0.0.1" > "165.0.0.1"; as numbers 69 < 165.
        assert_eq!(role((sa("69.0.0.1:9"), id(9)), (sa("165.0.0.1:9"), id(1))), Some(Role::Dial));
        assert_eq!(role((sa("10.0.0.9:1"), id(1)), (sa("10.0.0.10:1"), id(2))), Some(Role::Dial));
        assert_eq!(role((sa("127.0.0.2:24100"), id(1)), (sa("127.0.0.10:24100"), id(2))), Some(Role::Dial));
    }

    #[test]
    fn port_then_id_break_ties() {
        assert_eq!(role((sa("127.0.0.1:9000"), id(9)), (sa("127.0.0.1:10000"), id(1))), Some(Role::Dial));
        assert_eq!(role((sa("127.0.0.1:9000"), id(1)), (sa("127.0.0.1:9000"), id(2))), Some(Role::Dial));
        assert_eq!(role((sa("127.0.0.1:9000"), id(2)), (sa("127.0.0.1:9000"), id(1))), Some(Role::Wait));
    }

    #[test]
    fn ipv4_mapped_is_ipv4_and_ipv4_precedes_ipv6() {
        assert_eq!(rank(sa("[::ffff:10.0.0.1]:5"), id(1)), rank(sa("10.0.0.1:5"), id(1)));
        assert_eq!(role((sa("255.255.255.255:1"), id(1)), (sa("[::1]:1"), id(2))), Some(Role::Dial));
        assert_eq!(role((sa("[::ffff:200.0.0.1]:1"), id(1)), (sa("[::1]:1"), id(2))), Some(Role::Dial));
    }

    #[test]
    fn a_node_bound_to_any_ranks_by_its_configured_address() {
        // The rule is only ever fed network-file addresses; 0.0.0.0 would rank lowest
        // of all and make the node dial everyone.
        let configured = sa("165.0.0.1:24100");
        assert_eq!(role((configured, id(1)), (sa("69.0.0.1:24100"), id(2))), Some(Role::Wait));
        assert_eq!(role((sa("0.0.0.0:24100"), id(1)), (sa("69.0.0.1:24100"), id(2))), Some(Role::Dial));
    }

    #[test]
    fn never_dials_itself() {
        assert_eq!(role((sa("127.0.0.1:1"), id(1)), (sa("127.0.0.2:1"), id(1))), None);
    }

    #[test]
    fn duplicate_choice_agrees_at_both_ends() {
        use Direction::*;
        // Every combination of (existing, new) directions and incarnations; the far end
        // sees the same connections with directions flipped and the opposite role.
        let flip = |d: Direction| if d == Inbound { Outbound } else { Inbound };
        for e_dir in [Inbound, Outbound] {
            for n_dir in [Inbound, Outbound] {
                for same_life in [true, false] {
                    let e = ConnFacts { direction: e_dir, peer_incarnation: 1 };
                    let n = ConnFacts { direction: n_dir, peer_incarnation: if same_life { 1 } else { 2 } };
                    let here = new_wins(Role::Dial, e, n);
                    let e2 = ConnFacts { direction: flip(e_dir), peer_incarnation: 5 };
                    let n2 = ConnFacts { direction: flip(n_dir), peer_incarnation: 5 };
                    if same_life && e_dir != n_dir {
                        assert_eq!(here, new_wins(Role::Wait, e2, n2), "{e_dir:?}/{n_dir:?}");
                        assert_eq!(here, n_dir == Outbound, "the dialer's connection is kept");
                    }
                    if !same_life {
                        assert!(here, "a connection from a newer life of the peer wins");
                    }
                }
            }
        }
    }
}
