//! The QUIC endpoint: one UDP socket, serving and dialling.

use std::net::SocketAddr;
use std::sync::Arc;

use super::TransportConfig as Transport;
use crate::identity::{Identity, NodeId};

use super::handshake::Generation;
use super::tls::{self, MemberKeys, RefusalLog, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("transport setting out of range: {0}")]
    Setting(String),
}

/// Wraps the endpoint's UDP socket; tests use it to inject faults.
pub type SocketWrapper =
    Arc<dyn Fn(Arc<dyn quinn::AsyncUdpSocket>, SocketAddr) -> Arc<dyn quinn::AsyncUdpSocket> + Send + Sync>;

/// Bytes a peer may have in flight to us, unread, per connection: two of the
/// largest frames, so a 4 MiB frame always has room beside what is queued.
pub(crate) const RECEIVE_WINDOW: usize = 2 * crate::codec::MAX_FRAME;

/// quinn transport settings from the node's config. Stream limits are small on
/// purpose: one unidirectional stream per direction is all the protocol uses, and
/// each allowed stream costs memory per idle connection.
pub fn transport_config(t: &Transport) -> Result<Arc<quinn::TransportConfig>, EndpointError> {
    let mut cfg = quinn::TransportConfig::default();
    cfg.keep_alive_interval(Some(t.keepalive));
    let idle = quinn::IdleTimeout::try_from(t.idle_timeout).map_err(|e| EndpointError::Setting(e.to_string()))?;
    cfg.max_idle_timeout(Some(idle));
    cfg.max_concurrent_uni_streams(1u32.into());
    cfg.max_concurrent_bidi_streams(t.max_request_streams.into());
    // What a peer may have sent that we have not read yet, over all its
    // streams (quinn's default is unbounded; each stream's own window is
    // 1.25 MB): a member whose frames wait behind its inbox budget, or whose
    // requests wait for an answer slot, parks at most this much here.
    cfg.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW as u32));
    // The protocol sends no datagrams; quinn would otherwise keep a receive buffer
    // for them on every connection.
    cfg.datagram_receive_buffer_size(None);
    Ok(Arc::new(cfg))
}

/// Binds the endpoint. The stateless-reset key is derived from the node key, so a
/// restarted node answers packets of its previous life's connections with a reset
/// the peer accepts: peers drop those connections within a round trip instead of
/// waiting for the idle timeout. The server side accepts clients whose key is in
/// `members` at the time of their handshake (see [`MemberKeys::replace`]), in one
/// of `generations` (the first the client offers, in this order).
pub fn bind(
    listen: SocketAddr,
    identity: &Identity,
    members: impl Into<MemberKeys>,
    transport: Arc<quinn::TransportConfig>,
    refusals: Arc<RefusalLog>,
    wrap: Option<SocketWrapper>,
    generations: &[Generation],
) -> Result<quinn::Endpoint, EndpointError> {
    let reset_key =
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &identity.derive_secret(b"masternode quic stateless reset"));
    let endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(identity, members, refusals, generations)?));
    server.transport_config(transport);
    let bind_error = |source| EndpointError::Bind { addr: listen, source };
    let socket = udp_socket(listen).map_err(bind_error)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    match wrap {
        None => quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind_error),
        Some(wrap) => {
            use quinn::Runtime;
            let local = socket.local_addr().map_err(bind_error)?;
            let socket = wrap(runtime.wrap_udp_socket(socket).map_err(bind_error)?, local);
            quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket, runtime)
                .map_err(bind_error)
        }
    }
}

/// UDP socket buffers we ask for. Linux's default receive buffer (208 KiB) drops
/// datagrams on loopback when a node is busy (many handshakes at once, bulk
/// blocks); a dropped Initial costs a dial a full retransmission timeout. The
/// kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

fn udp_socket(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(listen), Type::DGRAM, Some(Protocol::UDP))?;
    if is_dual_stack(listen) {
        // `[::]` is the documented way to reach IPv4 and IPv6 members with one
        // socket. Whether an IPv6 socket also carries IPv4 is otherwise the
        // system's choice (`net.ipv6.bindv6only`, 1 on some systems and the BSDs),
        // and a node that believes it reaches both families while it reaches one
        // never dials, and is never reached by, the members of the other.
        socket.set_only_v6(false)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!("cannot raise the UDP receive buffer: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!("cannot raise the UDP send buffer: {e}");
    }
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

/// A socket bound to the IPv6 wildcard serves both families.
fn is_dual_stack(listen: SocketAddr) -> bool {
    matches!(listen.ip(), std::net::IpAddr::V6(v6) if v6.is_unspecified())
}

/// Client configuration for dialling `peer`, pinned to its key, offering
/// `generations` in this order.
pub fn client_config(
    identity: &Identity,
    peer: NodeId,
    transport: Arc<quinn::TransportConfig>,
    generations: &[Generation],
) -> Result<quinn::ClientConfig, EndpointError> {
    let mut cfg = quinn::ClientConfig::new(Arc::new(tls::client_crypto(identity, peer, generations)?));
    cfg.transport_config(transport);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket asks for dual stack itself, whatever `net.ipv6.bindv6only`
    /// says (the namespace suite runs with it set to 1).
    #[test]
    fn an_ipv6_wildcard_socket_carries_ipv4_too() {
        let socket = udp_socket("[::]:0".parse().unwrap()).unwrap();
        assert!(!socket2::SockRef::from(&socket).only_v6().unwrap());
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        v4.send_to(b"ping", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 8];
        socket.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(crate::net::canonical(from), v4.local_addr().unwrap(), "an IPv4 sender, IPv4-mapped");
        assert!(is_dual_stack("[::]:1".parse().unwrap()));
        assert!(!is_dual_stack("[::1]:1".parse().unwrap()) && !is_dual_stack("0.0.0.0:1".parse().unwrap()));
    }
}
