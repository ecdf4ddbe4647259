//! A handshake message of either generation and the acceptor's check of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masternode::codec::decode_all;
use masternode::identity::NodeId;
use masternode::net::{check_intro, Expect, HandshakeMsg, Intro, LegacyMsg, WIRE};

fn check(intro: &Intro) {
    let member = |id: &NodeId| id.0[0] % 2 == 0;
    let expect = Expect { network_id: [1; 32], versions: WIRE, tls_key: intro.node_id, is_member: &member };
    if let Ok(wire) = check_intro(intro, &expect) {
        assert!(WIRE.contains(wire) && intro.versions.contains(wire));
    }
}

fuzz_target!(|data: &[u8]| {
    for m in decode_all::<HandshakeMsg>(data).unwrap_or_default() {
        if let HandshakeMsg::Hello(intro) | HandshakeMsg::Welcome(intro) = m {
            check(&intro);
        }
    }
    for m in decode_all::<LegacyMsg>(data).unwrap_or_default() {
        if let LegacyMsg::Hello(intro) | LegacyMsg::Welcome(intro) = m {
            check(&intro.into_intro());
        }
    }
});
