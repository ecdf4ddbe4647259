//! Checkpoint start on daemons as processes: four members run a chain past
//! the upgrade to protocol 4 (whose block ids commit to the member state);
//! one member loses its data dir and starts from `--checkpoint HEIGHT:HASH`.
//! It holds nothing below the checkpoint, follows the chain and signs again
//! within seconds, and keeps its earliest height over a restart. A wrong hash
//! stops the node with one clear line; `--checkpoint peers` takes the tip the
//! members offer, whose certificate more than two thirds of the genesis set
//! signed (the refusal of fewer is `src/chain/checkpoint.rs`'s
//! `an_offered_checkpoint_needs_more_than_two_thirds_of_the_known_set`, and
//! the liars' answers are refused there too, each with its typed error).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::procs::{Net, BIN};
use masternode::admin::{http_get, BlockInfo};

const INTERVAL_MS: u64 = 300;
/// The member that loses its data dir.
const WIPED: usize = 3;

async fn block(net: &Net, i: usize, h: u64) -> Option<BlockInfo> {
    let body = http_get(net.admins[i], &format!("/blocks/{h}"), Duration::from_secs(2)).await.ok()?;
    serde_json::from_str(&body).ok()
}

fn node_id(net: &Net, i: usize) -> String {
    let out = Command::new(BIN).args(["id", "--dir"]).arg(net.configs[i].parent().unwrap()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cli(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Schedules protocol 4 a few heights ahead with the CLI (three approvals of
/// four) and waits until the chain runs it; the plan's height.
async fn upgrade_to_4(net: &Net) -> u64 {
    let plan_height = net.height(0).await + 25;
    let h = plan_height.to_string();
    for i in 0..3 {
        let config = net.configs[i].display().to_string();
        let verb = if i == 0 { "propose" } else { "approve" };
        if i > 0 {
            net.until("the plan reaches the approver", Duration::from_secs(20), || async {
                masternode::admin::fetch_upgrade(net.admins[i], Duration::from_secs(2))
                    .await
                    .is_ok_and(|u| u.pending.iter().any(|p| p.version == 4))
            })
            .await;
        }
        let (code, out) = cli(&["upgrade", verb, "--version", "4", "--height", &h, "--config", &config]);
        assert_eq!(code, Some(0), "{out}");
    }
    net.until("protocol 4 in force", Duration::from_secs(60), || async { net.height(0).await > plan_height + 3 }).await;
    plan_height
}

/// Four members on protocol 4, past its activation, and then node 4 loses its
/// data dir (stopped, its directory removed); the height the plan activated at.
async fn four_at_protocol_4_with_a_wiped_member() -> (Net, u64) {
    let mut net = Net::new(4);
    net.set_block_interval(INTERVAL_MS);
    for i in 0..4 {
        net.start(i);
    }
    net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(30), "the mesh").await;
    net.until("blocks", Duration::from_secs(30), || async { net.height(0).await >= 3 }).await;
    let plan_height = upgrade_to_4(&net).await;
    net.stop(WIPED, Duration::from_secs(10)).await;
    std::fs::remove_dir_all(net.data_dir(WIPED)).unwrap();
    (net, plan_height)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_starts_from_a_checkpoint_signs_within_seconds_and_holds_nothing_below_it() {
    let (mut net, plan_height) = four_at_protocol_4_with_a_wiped_member().await;
    net.until("the chain goes on without it", Duration::from_secs(30), || async {
        net.height(0).await > plan_height + 10
    })
    .await;

    // A wrong hash: refused, the node stops with one line naming it.
    let cp_height = net.height(0).await - 2;
    let real = block(&net, 0, cp_height).await.expect("the checkpoint's block");
    let wrong = format!("{cp_height}:{}", "ab".repeat(32));
    net.start_with_env(WIPED, &[("MASTERNODE_CHECKPOINT", &wrong)]);
    let code = net.exited(WIPED, Duration::from_secs(60)).await;
    assert_ne!(code, Some(0));
    let log = net.log(WIPED);
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("checkpoint") && l.contains("refused")).collect();
    assert!(
        refused.iter().any(|l| l.contains(&real.hash) && l.contains("check the hash")),
        "the refusal names the block the members hold: {refused:?}\n{log}"
    );
    assert!(net.status(WIPED).await.is_none());
    std::fs::remove_dir_all(net.data_dir(WIPED)).ok();

    // The right hash: follows and signs within seconds, from the checkpoint.
    let checkpoint = format!("{cp_height}:{}", real.hash);
    let started = Instant::now();
    net.start_with_env(WIPED, &[("MASTERNODE_CHECKPOINT", &checkpoint)]);
    let tip = net.height(0).await;
    net.until("the checkpointed node follows the chain", Duration::from_secs(30), || async {
        net.height(WIPED).await >= tip
    })
    .await;
    let followed = started.elapsed();
    let me = node_id(&net, WIPED);
    let mut next = cp_height + 1;
    let signed_at = loop {
        if block(&net, 0, next).await.is_some_and(|b| b.signers.contains(&me)) {
            break next;
        }
        if next < net.height(0).await {
            next += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the checkpointed node signs\n{}", net.logs());
    };
    let signed = started.elapsed();
    eprintln!("checkpoint start: following after {followed:?}, block {signed_at} signed after {signed:?}");
    let s = net.status(WIPED).await.unwrap();
    assert_eq!(s.earliest_height, cp_height, "the checkpoint is its earliest height");
    assert!(block(&net, WIPED, cp_height - 1).await.is_none(), "nothing below the checkpoint");
    assert_eq!(block(&net, WIPED, cp_height).await.map(|b| b.hash), Some(real.hash.clone()));
    let log = net.log(WIPED);
    assert!(log.contains("checkpoint verified"), "{log}");

    // After a restart: the same earliest height, no replay asked.
    net.stop(WIPED, Duration::from_secs(10)).await;
    net.start(WIPED);
    let tip = net.height(0).await;
    net.until("the restarted node catches up", Duration::from_secs(30), || async { net.height(WIPED).await >= tip })
        .await;
    assert_eq!(net.status(WIPED).await.unwrap().earliest_height, cp_height, "kept over a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_offered_by_peers_is_taken_with_the_known_sets_signatures() {
    let (mut net, plan_height) = four_at_protocol_4_with_a_wiped_member().await;
    net.until("past the upgrade", Duration::from_secs(30), || async { net.height(0).await > plan_height + 5 }).await;
    net.start_with_env(WIPED, &[("MASTERNODE_CHECKPOINT", "peers")]);
    let tip = net.height(0).await;
    net.until("the node follows from the offered checkpoint", Duration::from_secs(30), || async {
        net.height(WIPED).await >= tip
    })
    .await;
    let s = net.status(WIPED).await.unwrap();
    assert!(
        s.earliest_height > plan_height + 5,
        "started at a tip of protocol 4, not at genesis: {}",
        s.earliest_height
    );
    assert!(block(&net, WIPED, s.earliest_height - 1).await.is_none(), "nothing below it");
    assert!(net.log(WIPED).contains("checkpoint verified"));
}

/// The figures of docs/operating.md, "Starting from a checkpoint": a chain of
/// `MEASURE_BLOCKS` blocks (100,000 unless set) of a network of two members,
/// generated into member A's store (protocol 4 from height 21, each block
/// certified by both); member B starts on an empty data dir from the tip as
/// a checkpoint, then again on an empty data dir replaying from genesis. With
/// two members every block after the tip needs B's precommit: B's first block
/// is its first signature. `cargo test --release --test suite
/// checkpoint::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: generates a long chain and replays it"]
async fn measure_checkpoint_start_against_replay_on_a_long_chain() {
    use crate::common::{fast_transport, Spec};
    use masternode::chain::{
        members_digest, parent_link, tx_root, Approval, Block, Certificate, Change, Checkpoint, CheckpointSource,
        Committed, Header, Membership, Store, Vote, VoteKind,
    };
    use masternode::node::{Node, NodeOptions};
    use tokio_util::sync::CancellationToken;

    let blocks: u64 = std::env::var("MEASURE_BLOCKS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let replay_cap =
        Duration::from_secs(std::env::var("MEASURE_REPLAY_CAP_S").ok().and_then(|v| v.parse().ok()).unwrap_or(3_600));
    let spec = Spec::new(2);
    let network = spec.network_paced("checkpoint", &spec.members, 200);
    let mut ids: Vec<_> = spec.ids.clone();
    ids.sort_by_key(|i| i.id());
    let generated = Instant::now();
    {
        let store = Store::open(&spec.data_dir(0)).unwrap();
        let mut m = Membership::genesis(&network);
        let mut prev = masternode::chain::genesis_hash(&network.id);
        let mut chain = Vec::new();
        for h in 1..=blocks {
            let changes = if h == 1 {
                let plan = Change::Upgrade { version: 4, height: 21 };
                ids.iter()
                    .map(|i| Approval { change: plan.clone(), approver: i.id(), signed_at: 0 }.sign(&network.id, i))
                    .collect()
            } else {
                vec![]
            };
            let link = m.version_at(h) >= 4;
            let header = Header {
                height: h,
                round: 0,
                prev_hash: parent_link(prev, members_digest(m.state()), link),
                timestamp_ms: network.genesis_time_ms + h,
                proposer: m.current().ids()[(h % 2) as usize],
                tx_root: tx_root::<Vec<u8>>(&[]),
                changes,
            };
            let block = Block { header, txs: vec![] };
            let id = block.hash();
            let precommits = ids
                .iter()
                .map(|i| {
                    Vote { kind: VoteKind::Precommit, height: h, round: 0, block: Some(id), voter: i.id() }
                        .sign(&network.id, i)
                })
                .collect();
            let cert = Certificate { height: h, round: 0, block: id, precommits };
            m.apply(&block.header.changes, &network.id);
            prev = id;
            chain.push((Committed { block, cert }, m.state().clone()));
            if chain.len() == 1_000 || h == blocks {
                store.commit_batch(&chain).unwrap();
                chain.clear();
            }
        }
        assert_eq!(m.version_at(blocks), 4);
    }
    let generated = generated.elapsed();
    let a_dir_bytes = |dir: &std::path::Path| -> u64 {
        let out = Command::new("du").args(["-s", "-B1"]).arg(dir).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
    };
    eprintln!("generated {blocks} blocks in {generated:?}; A's data dir {} bytes", a_dir_bytes(&spec.data_dir(0)));
    let tip = Store::open(&spec.data_dir(0)).unwrap().tip().unwrap().unwrap();
    let a = Node::start(
        spec.config(0, network.clone(), fast_transport()),
        NodeOptions::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap();

    // B from the checkpoint.
    let mut cfg = spec.config(1, network.clone(), fast_transport());
    cfg.checkpoint = Some(CheckpointSource::Trusted(Checkpoint { height: tip.height, hash: tip.hash }));
    let started = Instant::now();
    let b = Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap();
    let running = started.elapsed();
    while b.height() <= tip.height {
        assert!(started.elapsed() < Duration::from_secs(120), "B signs after the checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signed = started.elapsed();
    let b_bytes = a_dir_bytes(&spec.data_dir(1));
    eprintln!(
        "checkpoint at {}: B verified it and runs after {running:?}, its first signed block after {signed:?}; \
         B's data dir {b_bytes} bytes",
        tip.height
    );
    b.stop().await;
    std::fs::remove_dir_all(spec.data_dir(1)).unwrap();

    // B replaying from genesis.
    let target = a.height();
    let started = Instant::now();
    let b = Node::start(
        spec.config(1, network.clone(), fast_transport()),
        NodeOptions::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut last_report = Instant::now();
    while b.height() < target && started.elapsed() < replay_cap {
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!("replay: height {} after {:?}", b.height(), started.elapsed());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replayed = b.height();
    let took = started.elapsed();
    eprintln!(
        "replay from genesis: {replayed} of {target} blocks in {took:?} ({:.0} blocks/s){}",
        replayed as f64 / took.as_secs_f64(),
        if replayed < target { " (capped)" } else { "" }
    );
    b.stop().await;
    a.stop().await;
}

/// A member that lies about a checkpoint, over real sockets to a daemon that
/// starts from it: it answers with a member state of its own keys (which
/// would verify its own certificate, but does not hash to the block's
/// commitment), then with a forged precommit, then with another block, each
/// three times. The daemon refuses each with its cause and one warn line,
/// keeps asking, serves nothing meanwhile, and starts once the answer is
/// true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_lying_about_a_checkpoint_is_refused_once_per_cause_and_a_true_answer_is_taken() {
    use crate::common::{Hostile, Spec};
    use masternode::chain::{
        members_digest, parent_link, tx_root, Block, Certificate, CheckpointAnswer, Committed, Header, Membership,
        Message, Plan, Vote, VoteKind,
    };
    use masternode::codec;
    use masternode::identity::Identity;
    use std::sync::Arc;

    const H: u64 = 500;
    let spec = Spec::new(4);
    let network = spec.network();
    // The state after H - 1 of a chain of the spec's members at protocol 4.
    let state_of = |members: &[masternode::config::Member]| {
        let mut m = Membership::genesis(&spec.network_with(&spec.name, members)).state().clone();
        m.applied = H - 1;
        m.schedule.push(Plan { version: 4, height: 1 });
        m
    };
    let answer = |before: masternode::chain::MembershipState, signers: &[Arc<Identity>], tag: &str| {
        let parent = masternode::chain::Hash([7; 32]);
        let txs = vec![tag.as_bytes().to_vec()];
        let header = Header {
            height: H,
            round: 0,
            prev_hash: parent_link(parent, members_digest(&before), true),
            timestamp_ms: network.genesis_time_ms + H,
            proposer: signers[0].id(),
            tx_root: tx_root(&txs),
            changes: vec![],
        };
        let block = Block { header, txs: txs.into_iter().map(Into::into).collect() };
        let precommits = signers
            .iter()
            .map(|i| {
                Vote { kind: VoteKind::Precommit, height: H, round: 0, block: Some(block.hash()), voter: i.id() }
                    .sign(&network.id, i)
            })
            .collect();
        let cert = Certificate { height: H, round: 0, block: block.hash(), precommits };
        CheckpointAnswer { parent, committed: Committed { block, cert }, before }
    };
    let honest = answer(state_of(&spec.members), &spec.ids[..3], "true");
    let checkpoint = format!("{H}:{}", honest.committed.block.hash());
    let liars = Spec::new(4);
    // The true block with the liars' member set: their certificate would
    // verify against it, but the block commits to another state.
    let mut forged_state = honest.clone();
    forged_state.before = state_of(&liars.members);
    let ids = liars.ids.clone();
    forged_state.committed.cert.precommits = ids
        .iter()
        .map(|i| {
            let id = forged_state.committed.block.hash();
            Vote { kind: VoteKind::Precommit, height: H, round: 0, block: Some(id), voter: i.id() }.sign(&network.id, i)
        })
        .collect();
    let mut forged_cert = honest.clone();
    forged_cert.committed.cert.precommits[1].signature[0] ^= 1;
    let other_block = answer(state_of(&spec.members), &spec.ids[..3], "another");
    let script = [forged_state, forged_cert, other_block, honest];

    let mut net = Net::of_spec(&spec, crate::common::procs::TRANSPORT);
    net.start_with_env(0, &[("MASTERNODE_CHECKPOINT", &checkpoint)]);
    let hostile = Hostile::new(&spec, 1);
    let conn = loop {
        if let Some(c) = hostile.try_connect(&spec, 0).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = {
        let asked = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let Ok(bytes) = recv.read_to_end(1024).await else { continue };
                let Ok(Message::GetCheckpoint { height: H }) = codec::decode_single::<Message>(&bytes) else {
                    continue;
                };
                let n = asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply = script[(n / 3).min(3)].clone();
                let _ = send.write_all(&codec::encode(&Message::Checkpoint(Box::new(reply)))).await;
                let _ = send.finish();
            }
        })
    };
    net.until("the true answer is taken", Duration::from_secs(60), || async {
        net.log(0).contains("checkpoint verified")
    })
    .await;
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 10, "asked again after each refusal");
    let log = net.log(0);
    for cause in ["members_mismatch", "certificate", "wrong_hash"] {
        let lines = log.lines().filter(|l| l.contains("checkpoint from a peer refused") && l.contains(cause)).count();
        assert_eq!(lines, 1, "one warn line for {cause}, refused three times:\n{log}");
    }
    let started = log.lines().position(|l| l.contains("admin API listening"));
    let verified = log.lines().position(|l| l.contains("checkpoint verified"));
    assert!(started > verified, "nothing served before the checkpoint verified:\n{log}");
    server.abort();
}
