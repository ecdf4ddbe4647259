//! The network file and the node config file: clear errors, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use masternode::config::{Network, NodeFileValues, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Network::parse(Path::new("network.toml"), text) {
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }
    if let Err(e) = NodeFileValues::parse(Path::new("masternode.toml"), text, &Overrides::default()) {
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }
});
