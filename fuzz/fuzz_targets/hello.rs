//! A handshake message and the acceptor's check of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masternode::identity::NodeId;
use masternode::codec::decode_all;
use masternode::net::handshake::{check_intro, Expect, HandshakeMsg, PROTOCOL_VERSION};

fuzz_target!(|data: &[u8]| {
    if let Ok(msgs) = decode_all::<HandshakeMsg>(data) {
        for m in msgs {
            if let HandshakeMsg::Hello(intro) | HandshakeMsg::Welcome(intro) = m {
                let member = |id: &NodeId| id.0[0] % 2 == 0;
                let expect = Expect {
                    network_id: [1; 32],
                    version: PROTOCOL_VERSION,
                    tls_key: intro.node_id,
                    is_member: &member,
                };
                let _ = check_intro(&intro, &expect);
            }
        }
    }
});
