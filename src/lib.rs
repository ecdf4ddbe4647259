//! masternode: a daemon with which a fixed set of masternodes connect over QUIC,
//! exactly one connection per pair, and produce blocks together while a quorum of
//! them is connected.
//!
//! # Layout
//!
//! * [`config`]: `masternode.toml` and `network.toml`, validated.
//! * [`identity`]: the node's ed25519 key, its `NodeId`, key and certificate files.
//! * [`codec`]: the one codec: length-prefixed bincode frames with a limit per kind.
//! * [`net`]: the transport: pinned mutual TLS, the direction rule, the handshake,
//!   the connection rules, outboxes and inbox, the [`net::Peers`] handle. It carries
//!   frames of bytes and knows nothing of blocks.
//! * [`chain`]: quorum-gated block production: blocks, signed votes, Tendermint as
//!   a pure state machine, the fjall store, the mempool, the producer's rules as
//!   a pure driver ([`chain::Driver`]) and the task that carries them out.
//! * [`node`]: one running node: transport, producer, admin API, shutdown.
//! * [`admin`]: `/status`, `/blocks`, `/tx`, `/members`, `/upgrade` over local HTTP behind
//!   the Host rule, content types and the optional token, a bounded accept loop,
//!   `/metrics`, and the client the CLI uses.
//! * [`probe`]: readiness (`/ready`) and whether stopping a node keeps the
//!   quorum (`status --can-stop`), as pure rules over a status.
//! * [`status`]: what a node reports about itself (status, quorum, the build's
//!   version), read by the admin API, metrics and the service alike.
//! * `service`: systemd readiness, status, watchdog (run through [`node`]).
//! * [`devnet`]: N nodes on 127.0.0.1..N in one process.

// The crate's surface is what each module re-exports: its submodules are
// private to it, and a `pub` item that nothing re-exports is a warning.
#![warn(unreachable_pub)]

pub mod admin;
pub mod chain;
pub mod codec;
pub mod config;
pub mod devnet;
pub mod identity;
pub mod net;
pub mod node;
pub mod probe;
pub(crate) mod service;
pub mod status;

/// Sets the C allocator up for a long-running node (glibc on Linux; elsewhere it
/// does nothing). Frames of up to a few MiB are allocated and freed all the time;
/// glibc's default raises its mmap threshold to the largest size freed, after
/// which such buffers come from per-thread arenas that keep what they once held,
/// and resident memory grows with every arena a burst touched. A fixed threshold
/// of 256 KiB returns every large buffer to the system when it is freed, and
/// four arenas bound what small allocations can spread over. Call it before any
/// thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        const M_ARENA_MAX: std::ffi::c_int = -8;
        // SAFETY: mallopt only changes glibc's tuning parameters; it takes plain
        // integers and is safe to call at any time.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 * 1024);
            mallopt(M_ARENA_MAX, 4);
        }
    }
}
