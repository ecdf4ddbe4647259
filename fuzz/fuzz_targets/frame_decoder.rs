//! A byte stream from a peer, read frame by frame as the node's reader does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masternode::codec::FrameReader;
use masternode::chain::Message;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut reader = FrameReader::new(data);
        // Every outcome is a frame, a clean end or a typed error; never a panic.
        while let Ok(Some(_)) = reader.next::<Message>().await {}
    });
    let _ = masternode::codec::decode_all::<Message>(data);
});
