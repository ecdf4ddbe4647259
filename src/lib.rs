//! masternode: a daemon with which a fixed set of masternodes connect over QUIC,
//! exactly one connection per pair, and produce blocks together while a quorum of
//! them is connected.
//!
//! # Layout
//!
//! * [`config`]: `masternode.toml` and `network.toml`, validated.
//! * [`identity`]: the node's ed25519 key, its `NodeId`, key and certificate files.
//! * [`net`]: the transport: pinned mutual TLS, the direction rule, the handshake,
//!   frames, the connection manager and the [`net::Peers`] handle.
//! * [`chain`]: quorum-gated block production: blocks, signed votes, Tendermint as
//!   a pure state machine, the fjall store, the mempool, the producer task.
//! * [`node`]: one running node: transport, producer, admin API, shutdown.
//! * [`admin`]: `/status`, `/blocks`, `/tx` over local HTTP, and the client that
//!   `masternode status` uses.
//! * [`metrics`]: `/metrics` in Prometheus text.
//! * [`service`]: systemd readiness, status, watchdog.
//! * [`devnet`]: N nodes on 127.0.0.1..N in one process.

pub mod admin;
pub mod chain;
pub mod config;
pub mod devnet;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod node;
pub mod service;
