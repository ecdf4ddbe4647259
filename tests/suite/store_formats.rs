//! Data dirs of each released store format, written by that release's own
//! binary (tests/fixtures/README.md says how), opened by this one: format 2
//! (0.1.0) is migrated in place with its tip, blocks and membership, and the
//! node extends the chain from it; format 1 is refused with the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use masternode::chain::{genesis_hash, Hash};
use masternode::chain::{Change, Membership, Params};
use masternode::chain::{Store, StoreError};
use masternode::config::{Network, NodeConfig, Overrides};
use masternode::node::Node;

/// The tip of the format-2 fixture, as 0.1.0 served it over `/blocks/23`.
const TIP_HEIGHT: u64 = 23;
const TIP_HASH: &str = "80225be3a74e7bcd6c975eeb990513df1fc164f56068aad463c3f3ecf3a7269b";

/// Unpacks `tests/fixtures/NAME` (a tar.gz: fjall preallocates its journal, and
/// tar keeps the file sparse) into a fresh directory.
fn unpack(name: &str) -> tempfile::TempDir {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar -xzf {}", archive.display());
    dir
}

fn network_of(dir: &Path) -> Network {
    let path = dir.join("network.toml");
    Network::parse(&path, &std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("node1/data")
}

#[test]
fn a_format_2_data_dir_of_0_1_0_is_migrated_with_its_tip_blocks_and_membership() {
    let dir = unpack("format2-0.1.0.tar.gz");
    let network = network_of(dir.path());
    for open in ["the migrating open", "the next open"] {
        let store = Store::open(&data_dir(dir.path())).unwrap();
        let tip = store.tip().unwrap().unwrap();
        assert_eq!((tip.height, tip.hash.to_hex()), (TIP_HEIGHT, TIP_HASH.to_string()), "{open}");
        // Every block links to the one before, from the genesis: with the tip's
        // hash fixed, every block hash is the one 0.1.0 wrote.
        let mut prev = genesis_hash(&network.id);
        let mut members = Membership::genesis(&network);
        for h in 1..=TIP_HEIGHT {
            let c = store.block(h).unwrap().unwrap_or_else(|| panic!("{open}: block {h}"));
            assert_eq!(c.block.header.prev_hash, prev, "{open}: block {h} links to its parent");
            c.cert.verify(&c.block, &members.current().ids(), &network.id).unwrap();
            members.apply(&c.block.header.changes, &network.id);
            prev = c.block.hash();
        }
        assert_eq!(prev, Hash(hex32(TIP_HASH)));
        assert_eq!(store.block(21).unwrap().unwrap().block.txs.len(), 3, "{open}: the transactions of block 21");
        let moved = &store.block(9).unwrap().unwrap().block.header.changes;
        assert!(matches!(moved[..], [ref sa] if matches!(sa.approval.change, Change::SetAddr { seq: 1, .. })));
        // The membership the store kept is the one the blocks give, with an
        // empty schedule.
        let kept = Membership::restore(Params::for_network(&network), store.membership().unwrap().unwrap());
        assert_eq!(&kept, &members, "{open}");
        let (id, info) = kept.current().iter().next().unwrap();
        assert_eq!((info.addr.to_string(), info.addr_seq), ("127.0.99.1:24200".to_string(), 1), "{open}: {id}");
        assert!(kept.schedule().is_empty());
        assert_eq!(kept.version_at(u64::MAX), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_format_2_data_dir_extends_the_chain() {
    let dir = unpack("format2-0.1.0.tar.gz");
    let [a, b] = subnet();
    let listen = format!("127.{a}.{b}.1:{PORT}");
    let overrides =
        Overrides { listen: Some(listen.clone()), admin: Some(format!("127.{a}.{b}.1:0")), ..Default::default() };
    let cfg = NodeConfig::load_with(&dir.path().join("node1/masternode.toml"), &overrides).unwrap();
    let node = Node::start(cfg, Default::default(), tokio_util::sync::CancellationToken::new()).await.unwrap();
    eventually("the node extends the chain", Duration::from_secs(30), || node.height() >= TIP_HEIGHT + 3).await;
    let store = node.store();
    assert_eq!(store.block(TIP_HEIGHT).unwrap().unwrap().block.hash().to_hex(), TIP_HASH, "history unchanged");
    let next = store.block(TIP_HEIGHT + 1).unwrap().unwrap();
    assert_eq!(next.block.header.prev_hash.to_hex(), TIP_HASH, "the first new block builds on 0.1.0's tip");
    node.stop().await;
}

#[test]
fn a_format_1_data_dir_is_refused_saying_why_and_what_to_do() {
    let dir = unpack("format1.tar.gz");
    for open in ["the first open", "the next open"] {
        let err = Store::open(&data_dir(dir.path())).err().expect("format 1 is refused");
        assert!(matches!(err, StoreError::Format1), "{open}: {err}");
        let text = err.to_string();
        assert!(text.contains("without changing every block hash"), "{text}");
        assert!(text.contains("start on an empty one"), "{text}");
    }
    // The binary says so in one line and exits as for a bad configuration, so
    // systemd does not restart it in a loop.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_masternode"))
        .args(["run", "--config"])
        .arg(dir.path().join("node1/masternode.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("format 1") && errors[0].contains("start on an empty one"), "{}", errors[0]);
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}
