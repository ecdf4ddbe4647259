//! Blocks with certificates as sync delivers them: decoding, validation and
//! certificate verification must reject, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masternode::chain::{genesis_hash, Limits, TxCheck};
use masternode::chain::Committed;
use masternode::identity::NodeId;
use masternode::codec::BINCODE;

fuzz_target!(|data: &[u8]| {
    let Ok((c, _)) = bincode::decode_from_slice::<Committed, _>(data, BINCODE) else { return };
    let members = [NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]), NodeId([4; 32])];
    let _ = c.cert.verify(&c.block, &members, &[0; 32]);
    let h = c.block.height();
    let parent = genesis_hash(&[0; 32]);
    let limits = Limits::default();
    let _ = c.block.validate(parent, h.saturating_sub(1), 0, |_| members[0], Some(0), &limits, TxCheck::Needed);
    let _ = c.block.hash();
    let _ = c.cert.signers();
});
