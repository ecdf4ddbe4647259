//! The fuzz targets' checks over their committed corpora, on stable, in the normal
//! test run: whatever the fuzzers found interesting once stays handled.

use std::path::{Path, PathBuf};

use masternode::chain::Committed;
use masternode::chain::Message;
use masternode::chain::{genesis_hash, Limits, TxCheck};
use masternode::codec::{decode_all, decode_body, encode, FrameReader, BINCODE};
use masternode::config::{Network, NodeFileValues, Overrides};
use masternode::identity::NodeId;
use masternode::net::{check_intro, Expect, HandshakeMsg, Intro, LegacyMsg, WIRE};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "current_thread")]
async fn frame_decoder_corpus() {
    let inputs = corpus("frame_decoder");
    assert!(!inputs.is_empty(), "corpus committed");
    for (_, data) in inputs {
        let mut reader = FrameReader::new(&data[..]);
        while let Ok(Some(_)) = reader.next::<Message>().await {}
        let _ = decode_all::<Message>(&data);
    }
}

#[test]
fn message_corpus_decodes_canonically() {
    let inputs = corpus("message");
    assert!(!inputs.is_empty());
    for (path, data) in inputs {
        if let Ok(msg) = decode_body::<Message>(&data) {
            assert_eq!(&encode(&msg)[4..], &data[..], "{}", path.display());
        }
    }
}

/// Both generations of the handshake: the corpus holds `masternode/1` hellos
/// (0.1.0's) and `masternode/2` ones.
#[test]
fn hello_corpus() {
    let inputs = corpus("hello");
    assert!(!inputs.is_empty());
    let check = |intro: &Intro| {
        let member = |id: &NodeId| id.0[0] % 2 == 0;
        let expect = Expect { network_id: [1; 32], versions: WIRE, tls_key: intro.node_id, is_member: &member };
        if let Ok(wire) = check_intro(intro, &expect) {
            assert!(WIRE.contains(wire) && intro.versions.contains(wire), "a version both speak");
        }
    };
    for (_, data) in inputs {
        for m in decode_all::<HandshakeMsg>(&data).unwrap_or_default() {
            if let HandshakeMsg::Hello(intro) | HandshakeMsg::Welcome(intro) = m {
                check(&intro);
            }
        }
        for m in decode_all::<LegacyMsg>(&data).unwrap_or_default() {
            if let LegacyMsg::Hello(intro) | LegacyMsg::Welcome(intro) = m {
                check(&intro.into_intro());
            }
        }
    }
}

#[test]
fn committed_corpus() {
    let inputs = corpus("committed");
    assert!(!inputs.is_empty());
    let members = [NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]), NodeId([4; 32])];
    for (_, data) in inputs {
        let Ok((c, _)) = bincode::decode_from_slice::<Committed, _>(&data, BINCODE) else { continue };
        assert!(c.cert.verify(&c.block, &members, &[0; 32]).is_err(), "nothing random carries a valid certificate");
        let h = c.block.height();
        let _ = c.block.validate(
            genesis_hash(&[0; 32]),
            h.saturating_sub(1),
            0,
            |_| members[0],
            Some(0),
            &Limits::default(),
            TxCheck::Needed,
        );
    }
}

#[test]
fn config_corpus_gives_one_line_errors() {
    let inputs = corpus("config");
    assert!(!inputs.is_empty());
    for (_, data) in inputs {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        if let Err(e) = Network::parse(Path::new("network.toml"), text) {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        if let Err(e) = NodeFileValues::parse(Path::new("masternode.toml"), text, &Overrides::default()) {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

/// Every corpus input decodes as it did before the decoding was bounded (the
/// outcomes of main at 560825a, in `tests/fixtures/corpus-560825a.txt`): what
/// decoded decodes to the same value, what was refused is still refused
/// (perhaps for another reason: a claim of too many elements is now refused
/// as such).
#[tokio::test(flavor = "current_thread")]
async fn corpora_decode_as_before_the_bounds() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus-560825a.txt");
    let expected = std::fs::read_to_string(fixture).unwrap();
    let digest = |bytes: &[u8]| masternode::chain::Hash::of(&[bytes]).short();
    let variant =
        |e: &masternode::codec::FrameError| format!("{e:?}").split(['(', ' ', '{']).next().unwrap().to_string();
    let mut checked = 0;
    for line in expected.lines() {
        let mut parts = line.splitn(3, ' ');
        let (target, name, before) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target).join(name))
            .unwrap_or_else(|e| panic!("{target}/{name}: {e}"));
        let now = match target {
            "message" => match decode_body::<Message>(&data) {
                Ok(m) => format!("ok {}", digest(&encode(&m)[4..])),
                Err(e) => format!("err {}", variant(&e)),
            },
            "committed" => match bincode::decode_from_slice::<Committed, _>(&data, BINCODE) {
                Ok((c, n)) => format!("ok {} {n}", c.block.hash().short()),
                Err(_) => "err ".to_string(),
            },
            _ => match decode_all::<Message>(&data) {
                Ok(v) => format!("ok {}", v.len()),
                Err(e) => format!("err {}", variant(&e)),
            },
        };
        let same = if before.starts_with("ok") { now == before } else { now.starts_with("err") };
        assert!(same, "{target}/{name}: {before} before, {now} now");
        checked += 1;
    }
    assert!(checked > 1000, "{checked} inputs");
}
