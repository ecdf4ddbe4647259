//! Handshake admission: who may hold one of the bounded slots for handshakes in
//! progress, decided before any cryptography is spent on a stranger.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Who may hold a handshake slot. Slots are bounded in total and per address
/// (an IPv4 address, or an IPv6 /64, which one host usually owns whole). The
/// member set's addresses may use any free slot, strangers at most half, so
/// strangers, however many addresses they send from, cannot keep a restarted
/// member out. Under load
/// a stranger must first prove its address with a QUIC Retry, so a flood of
/// spoofed Initials holds no slot at all.
pub(crate) struct Admission {
    total: usize,
    per_key: usize,
    state: Mutex<AdmissionState>,
}

#[derive(Default)]
struct AdmissionState {
    /// The member set's addresses; replaced when the set changes.
    member_ips: HashSet<IpAddr>,
    per_key: HashMap<AddrKey, usize>,
    strangers: usize,
    members: usize,
    /// Retries answered in the current second, and which second that is.
    retries: (u64, u64),
}

/// Retry packets sent per second, at most; past that, unvalidated strangers' Initials
/// are dropped without an answer (each answer costs a packet and a seal, and a
/// flood must not turn into our own load).
const RETRIES_PER_SEC: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddrKey {
    /// A member set address, exactly.
    Member(IpAddr),
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

fn addr_key(ip: IpAddr) -> AddrKey {
    match ip {
        IpAddr::V4(v4) => AddrKey::V4(v4.into()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => AddrKey::V4(v4.into()),
            None => AddrKey::V6((u128::from(v6) >> 64) as u64),
        },
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Accept,
    /// Ask the client to prove its address first.
    Retry,
    Refuse,
    /// Drop the Initial without an answer.
    Ignore,
}

impl Admission {
    pub(crate) fn new(total: usize, per_key: usize, member_ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let state =
            AdmissionState { member_ips: member_ips.into_iter().map(canonical_ip).collect(), ..Default::default() };
        Admission { total: total.max(2), per_key: per_key.max(1), state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the member set's addresses. Slots already taken stay counted
    /// under what they were taken as, and are released as that.
    pub(crate) fn set_member_ips(&self, member_ips: impl IntoIterator<Item = IpAddr>) {
        self.lock().member_ips = member_ips.into_iter().map(canonical_ip).collect();
    }

    #[cfg(test)]
    fn is_member_ip(&self, ip: IpAddr) -> bool {
        self.lock().member_ips.contains(&canonical_ip(ip))
    }

    /// Decides, and takes a slot when the answer is `Accept` (release it with
    /// [`Admission::release`]).
    #[cfg(test)]
    pub(crate) fn admit(&self, ip: IpAddr, validated: bool) -> Admit {
        self.admit_as(ip, validated).0
    }

    /// [`Admission::admit`], also saying whether `ip` counted as a member's
    /// address: what the slot must be released as, and whether the handshake gets
    /// a member's deadline.
    pub(crate) fn admit_as(&self, ip: IpAddr, validated: bool) -> (Admit, bool) {
        let mut s = self.lock();
        let member = s.member_ips.contains(&canonical_ip(ip));
        (self.decide(&mut s, ip, member, validated), member)
    }

    fn decide(&self, s: &mut AdmissionState, ip: IpAddr, member: bool, validated: bool) -> Admit {
        let key = key(ip, member);
        let stranger_budget = self.total / 2;
        let n = s.per_key.get(&key).copied().unwrap_or(0);
        // An unvalidated attempt proves nothing about its source address, which
        // anyone can forge. A stranger's has to prove it under load; a member
        // address's as soon as another attempt from it is under way, so forged
        // Initials "from a member" cannot hold its slots and keep it out.
        let prove = !validated && if member { n > 0 } else { s.strangers >= stranger_budget / 4 };
        if prove {
            let second = now_secs();
            if s.retries.1 != second {
                s.retries = (0, second);
            }
            if s.retries.0 >= RETRIES_PER_SEC {
                return Admit::Ignore;
            }
            s.retries.0 += 1;
            return Admit::Retry;
        }
        // Members may use any free slot; strangers at most half of them, so at
        // least half always stay free for members.
        let room = if member { s.members + s.strangers < self.total } else { s.strangers < stranger_budget };
        if n >= self.per_key || !room {
            return Admit::Refuse;
        }
        *s.per_key.entry(key).or_insert(0) += 1;
        if member {
            s.members += 1;
        } else {
            s.strangers += 1;
        }
        Admit::Accept
    }

    /// Frees a slot taken by `admit_as` for `ip`, counted then as a member's
    /// address or not.
    fn release(&self, ip: IpAddr, member: bool) {
        let key = key(ip, member);
        let mut s = self.lock();
        if let Some(n) = s.per_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                s.per_key.remove(&key);
            }
        }
        if member {
            s.members = s.members.saturating_sub(1);
        } else {
            s.strangers = s.strangers.saturating_sub(1);
        }
    }
}

/// What an address is counted under: a member's own address exactly (a stranger
/// sharing its /64 must not use up its slots), a stranger's IPv4 address or IPv6
/// /64.
fn key(ip: IpAddr, member: bool) -> AddrKey {
    if member {
        AddrKey::Member(canonical_ip(ip))
    } else {
        addr_key(ip)
    }
}

/// An admitted handshake's slot, released when it ends.
pub(crate) struct AdmissionSlot {
    pub(crate) admission: Arc<Admission>,
    pub(crate) ip: IpAddr,
    /// Whether it was taken as a member's address.
    pub(crate) member: bool,
}

impl Drop for AdmissionSlot {
    fn drop(&mut self) {
        self.admission.release(self.ip, self.member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn strangers_cannot_take_the_slots_reserved_for_members() {
        let a = Admission::new(8, 2, [ip("127.0.0.2")]);
        let mut accepted = 0;
        for i in 0..100 {
            if a.admit(ip(&format!("127.0.1.{i}")), true) == Admit::Accept {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 4, "strangers get half the slots");
        assert_eq!(a.admit(ip("127.0.0.2"), false), Admit::Accept, "a member still gets in, unvalidated");
        assert_eq!(a.admit(ip("127.0.0.2"), true), Admit::Accept);
        assert_eq!(a.admit(ip("127.0.0.2"), true), Admit::Refuse, "up to its per-address cap");
        a.release(ip("127.0.1.0"), false);
        assert_eq!(a.admit(ip("127.0.1.99"), true), Admit::Accept, "a released slot is free again");
    }

    #[test]
    fn members_may_use_every_slot_strangers_leave_free() {
        let members: Vec<IpAddr> = (1..=20).map(|i| ip(&format!("127.0.0.{i}"))).collect();
        let a = Admission::new(16, 8, members.clone());
        let admitted = members.iter().filter(|m| a.admit(**m, false) == Admit::Accept).count();
        assert_eq!(admitted, 16, "a mesh forming at once is not held to half");
    }

    #[test]
    fn unvalidated_strangers_are_asked_to_retry_under_load() {
        let a = Admission::new(64, 8, []);
        for i in 0..8 {
            assert_eq!(a.admit(ip(&format!("10.0.0.{i}")), false), Admit::Accept);
        }
        assert_eq!(a.admit(ip("10.0.0.99"), false), Admit::Retry);
        assert_eq!(a.admit(ip("10.0.0.99"), true), Admit::Accept, "a validated address is admitted");
    }

    #[test]
    fn forged_initials_from_a_member_address_cannot_hold_its_slots() {
        let a = Admission::new(64, 8, [ip("127.0.0.2")]);
        assert_eq!(a.admit(ip("127.0.0.2"), false), Admit::Accept, "the first attempt from it goes straight in");
        for _ in 0..100 {
            assert_eq!(a.admit(ip("127.0.0.2"), false), Admit::Retry, "the others prove their address first");
        }
        for _ in 0..7 {
            assert_eq!(a.admit(ip("127.0.0.2"), true), Admit::Accept, "the member itself proves it");
        }
    }

    #[test]
    fn a_stranger_in_a_members_64_does_not_use_up_its_slots() {
        let a = Admission::new(64, 2, [ip("2001:db8::2")]);
        assert_eq!(a.admit(ip("2001:db8::99"), true), Admit::Accept);
        assert_eq!(a.admit(ip("2001:db8::98"), true), Admit::Accept);
        assert_eq!(a.admit(ip("2001:db8::97"), true), Admit::Refuse, "the strangers' /64 is full");
        assert_eq!(a.admit(ip("2001:db8::2"), true), Admit::Accept, "the member is counted apart");
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a = Admission::new(64, 2, []);
        assert_eq!(a.admit(ip("2001:db8:1:2::1"), true), Admit::Accept);
        assert_eq!(a.admit(ip("2001:db8:1:2::ffff"), true), Admit::Accept);
        assert_eq!(a.admit(ip("2001:db8:1:2:abcd::7"), true), Admit::Refuse, "same /64");
        assert_eq!(a.admit(ip("2001:db8:1:3::1"), true), Admit::Accept, "another /64");
    }

    #[test]
    fn a_changed_member_set_counts_new_attempts_and_releases_old_ones_as_taken() {
        let a = Admission::new(4, 1, [ip("127.0.0.2")]);
        assert_eq!(a.admit_as(ip("127.0.0.2"), true), (Admit::Accept, true));
        assert_eq!(a.admit_as(ip("127.0.0.3"), true), (Admit::Accept, false));
        assert_eq!(a.admit_as(ip("127.0.0.5"), true), (Admit::Accept, false));
        assert_eq!(a.admit(ip("127.0.0.4"), true), Admit::Refuse, "strangers hold their half");
        a.set_member_ips([ip("127.0.0.3"), ip("127.0.0.4")]);
        assert!(!a.is_member_ip(ip("127.0.0.2")), "a removed member's address is a stranger's");
        assert_eq!(a.admit_as(ip("127.0.0.4"), true), (Admit::Accept, true), "an added member's is a member's");
        // Released as what they were taken as: the counts return to zero.
        a.release(ip("127.0.0.2"), true);
        a.release(ip("127.0.0.3"), false);
        a.release(ip("127.0.0.5"), false);
        a.release(ip("127.0.0.4"), true);
        let s = a.lock();
        assert_eq!((s.members, s.strangers, s.per_key.len()), (0, 0, 0));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let a = Admission::new(64, 1, [ip("127.0.0.2")]);
        assert!(a.is_member_ip(ip("::ffff:127.0.0.2")));
        assert_eq!(a.admit(ip("::ffff:10.0.0.1"), true), Admit::Accept);
        assert_eq!(a.admit(ip("10.0.0.1"), true), Admit::Refuse);
    }
}
