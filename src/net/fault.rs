//! Fault injection for tests: a wrapper around quinn's UDP socket that drops
//! datagrams between partitioned groups of addresses or at random, and delays
//! them. The kernel here has no netem, so faults live in the process. Built only
//! with the `fault-injection` feature, which the tests enable.
//!
//! One [`Faults`] value is shared by every node of a test: each node's socket knows
//! its own address and drops what it would send across a partition, so no packet
//! crosses in either direction.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

#[derive(Default)]
pub struct Faults {
    /// Group of each address; addresses in different groups cannot talk. Empty:
    /// no partition.
    groups: RwLock<HashMap<IpAddr, usize>>,
    loss_ppm: AtomicU32,
    delay_us: AtomicU64,
    rng: AtomicU64,
    dropped: AtomicU64,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults").field("dropped", &self.dropped()).finish()
    }
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults { rng: AtomicU64::new(0x2545_f491_4f6c_dd1d), ..Default::default() })
    }

    /// Splits the network: only addresses of the same group reach each other.
    /// Addresses not listed reach everyone.
    pub fn partition(&self, groups: &[&[IpAddr]]) {
        let mut map = self.groups.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        for (g, ips) in groups.iter().enumerate() {
            for ip in *ips {
                map.insert(*ip, g);
            }
        }
    }

    pub fn heal(&self) {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Drops this fraction of datagrams (0.0 to 1.0) on every link.
    pub fn set_loss(&self, fraction: f64) {
        self.loss_ppm.store((fraction.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }

    /// Delays every datagram by this much before it is sent.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drops(&self, from: IpAddr, to: IpAddr) -> bool {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        if let (Some(a), Some(b)) = (groups.get(&from), groups.get(&to)) {
            if a != b {
                return true;
            }
        }
        drop(groups);
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return false;
        }
        // xorshift; a data race between threads only mixes the stream further.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1_000_000) < ppm as u64
    }

    /// Wraps a socket bound at `local`.
    pub fn wrap(self: &Arc<Self>, inner: Arc<dyn AsyncUdpSocket>, local: SocketAddr) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(FaultySocket { inner, faults: self.clone(), local: local.ip() })
    }
}

struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: Arc<Faults>,
    local: IpAddr,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket").field("local", &self.local).finish()
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.faults.drops(self.local, transmit.destination.ip()) {
            self.faults.dropped.fetch_add(1, Ordering::Relaxed);
            // A lost datagram looks sent to the sender.
            return Ok(());
        }
        let delay = self.faults.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            // Sent later from a task of its own, with a copy of the datagram; if
            // the socket is busy then, the datagram is lost, as on a real link.
            let inner = self.inner.clone();
            let contents = transmit.contents.to_vec();
            let (destination, ecn, segment_size, src_ip) =
                (transmit.destination, transmit.ecn, transmit.segment_size, transmit.src_ip);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_micros(delay)).await;
                let t = Transmit { destination, ecn, contents: &contents, segment_size, src_ip };
                let _ = inner.try_send(&t);
            });
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
