//! One frame body of any kind; what decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masternode::codec::{decode_body, encode};
use masternode::chain::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_body::<Message>(data) {
        let again = encode(&msg);
        assert_eq!(&again[4..], data, "canonical encoding");
    }
});
