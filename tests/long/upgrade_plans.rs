//! An upgrade plan through the command line, on daemons as processes: refused
//! with one line before signing when the chain would refuse it, proposed and
//! approved with `masternode upgrade`, scheduled everywhere, in force at its
//! height. One node runs a binary that lacks the planned version (the
//! rehearsal knob `MASTERNODE_TEST_MAX_PROTOCOL=3` of test builds): it warns,
//! stops before the height with exit code 3 and Cosmovisor's
//! `upgrade-info.json`, having signed nothing there, stops again at once when
//! restarted as it was, and catches up and signs again with a binary that runs
//! the version; the three others keep the chain going meanwhile.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::procs::{Net, BIN};
use masternode::admin::{fetch_upgrade, http_get, UpgradeStatus};
use masternode::chain::Store;

const INTERVAL_MS: u64 = 300;
/// The capped node, and what it runs.
const CAPPED: usize = 3;
const CAP: (&str, &str) = ("MASTERNODE_TEST_MAX_PROTOCOL", "3");

/// Runs `masternode ARGS`; exit code, stdout, stderr.
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

async fn upgrade(net: &Net, i: usize) -> Option<UpgradeStatus> {
    fetch_upgrade(net.admins[i], Duration::from_secs(2)).await.ok()
}

/// The signers of block `h` as node `i` serves it.
async fn signers(net: &Net, i: usize, h: u64) -> Vec<String> {
    let Ok(body) = http_get(net.admins[i], &format!("/blocks/{h}"), Duration::from_secs(2)).await else {
        return Vec::new();
    };
    let block: serde_json::Value = serde_json::from_str(&body).unwrap();
    block["signers"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn node_id(net: &Net, i: usize) -> String {
    let out = Command::new(BIN).args(["id", "--dir"]).arg(net.configs[i].parent().unwrap()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_scheduled_with_the_cli_applies_at_its_height_and_a_node_that_lacks_its_version_stops_there() {
    let mut net = Net::new(4);
    net.set_block_interval(INTERVAL_MS);
    for i in 0..4 {
        if i == CAPPED {
            net.start_with_env(i, &[CAP]);
        } else {
            net.start(i);
        }
    }
    net.until_peers(&[0, 1, 2, 3], 3, Duration::from_secs(30), "the mesh").await;
    net.until("blocks", Duration::from_secs(30), || async { net.height(0).await >= 3 }).await;
    let config = |i: usize| net.configs[i].display().to_string();

    // Refused before signing, one line each.
    let tip = net.height(0).await;
    let near = (tip + 5).to_string();
    let far = (tip + 400).to_string();
    let table: [(&str, Vec<&str>, &str); 3] = [
        ("too near", vec!["propose", "--version", "4", "--height", &near], "is too near"),
        (
            "the genesis version",
            vec!["propose", "--version", "3", "--height", &far],
            "protocol 3 is not above protocol 3",
        ),
        (
            "approving a plan nobody proposed",
            vec!["approve", "--version", "4", "--height", &far],
            "no plan for protocol 4",
        ),
    ];
    for (what, args, says) in table {
        let c0 = config(0);
        let mut full = vec!["upgrade"];
        full.extend(args);
        full.extend(["--config", &c0]);
        let (code, out, err) = cli(&full);
        assert_eq!(code, Some(1), "{what}: {out} {err}");
        assert!(err.starts_with("refused: ") && err.contains(says) && err.lines().count() == 1, "{what}: {err}");
    }
    // The admin API's guards hold for POST /upgrade: no content type, 415.
    let body = format!("{{\"version\": 4, \"height\": {far}}}");
    let (code, _) =
        masternode::admin::http_request(net.admins[0], "POST", "/upgrade", body.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap();
    assert_eq!(code, 415, "POST /upgrade takes application/json only");
    assert!(upgrade(&net, 0).await.unwrap().pending.is_empty(), "nothing was signed");

    // Proposed on node 1, approved on nodes 2 and 3.
    let plan_height = net.height(0).await + 40;
    let h = plan_height.to_string();
    let (code, out, err) = cli(&["upgrade", "propose", "--version", "4", "--height", &h, "--config", &config(0)]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(
        out.starts_with(&format!("proposed upgrade to protocol 4 at height {h}: 1 of 3 approvals so far")),
        "{out}"
    );
    for i in 1..3 {
        net.until("the proposal reaches the approver", Duration::from_secs(10), || async {
            upgrade(&net, i).await.is_some_and(|u| u.pending.iter().any(|p| p.version == 4 && p.height == plan_height))
        })
        .await;
        let (code, out, err) = cli(&["upgrade", "approve", "--version", "4", "--height", &h, "--config", &config(i)]);
        assert_eq!(code, Some(0), "{out} {err}");
        assert!(out.starts_with(&format!("approved upgrade to protocol 4 at height {h}: {} of 3", i + 1)), "{out}");
    }
    net.until("the plan is scheduled at every node", Duration::from_secs(20), || async {
        let mut all = true;
        for i in 0..4 {
            all &= upgrade(&net, i).await.is_some_and(|u| {
                u.schedule.len() == 1 && u.schedule[0].version == 4 && u.schedule[0].height == plan_height
            });
        }
        all
    })
    .await;
    let scheduled_at = net.height(0).await;
    let u = upgrade(&net, CAPPED).await.unwrap();
    assert_eq!((u.max_version, u.schedule[0].can_run), (3, false), "{u:?}");
    assert!(upgrade(&net, 0).await.unwrap().schedule[0].can_run);
    let (code, out, _) = cli(&["upgrade", "status", "--config", &config(CAPPED)]);
    assert_eq!(code, Some(1), "a version this binary does not run is scheduled: {out}");
    assert!(out.contains(&format!("scheduled protocol 4 from height {h}")) && out.contains("cannot run it"), "{out}");
    let warned = net.status(CAPPED).await.unwrap().warnings;
    assert!(warned.iter().any(|w| w.contains(&format!("switches to protocol 4 at height {h}"))), "{warned:?}");

    // The capped node stops before the height; the others go on.
    let stop_started = Instant::now();
    let code = net.exited(CAPPED, Duration::from_secs(60)).await;
    let stop_took = stop_started.elapsed();
    assert_eq!(code, Some(3), "exit code 3\n{}", net.log(CAPPED));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(net.data_dir(CAPPED).join("upgrade-info.json")).unwrap())
            .unwrap();
    assert_eq!((info["name"].as_str(), info["height"].as_u64()), (Some("protocol-4"), Some(plan_height)), "{info}");
    {
        let store = Store::open(&net.data_dir(CAPPED)).unwrap();
        assert_eq!(store.tip().unwrap().map(|t| t.height), Some(plan_height - 1), "it stored the block before");
        let signed = store.last_signed().unwrap().expect("it signed before");
        assert!(signed.height < plan_height, "nothing signed at {plan_height}: {signed:?}");
    }
    let log = net.log(CAPPED);
    let count = |level: &str, needle: &str| {
        log.lines().filter(|l| l.contains(&format!("\"level\":\"{level}\"")) && l.contains(needle)).count()
    };
    let first = format!("the chain switches to protocol 4 at height {h}; this binary runs up to protocol 3");
    assert_eq!(count("WARN", &first), 1, "warned once:\n{log}");
    assert_eq!(count("WARN", &format!("blocks left before height {h}")), 1, "reminded once:\n{log}");
    assert_eq!(count("ERROR", ""), 1, "one error line:\n{log}");
    assert_eq!(count("ERROR", &format!("stopping before height {h}")), 1, "{log}");
    net.until("the three others past the height", Duration::from_secs(30), || async {
        let mut all = true;
        for i in 0..3 {
            all &= net.height(i).await >= plan_height + 5;
        }
        all
    })
    .await;
    let u = upgrade(&net, 0).await.unwrap();
    assert_eq!((u.version, u.next_version), (4, 4), "protocol 4 in force: {u:?}");

    // Restarted as it was: it stops again at once, where it stopped.
    let again = Instant::now();
    net.start_with_env(CAPPED, &[CAP]);
    assert_eq!(net.exited(CAPPED, Duration::from_secs(20)).await, Some(3));
    let again_took = again.elapsed();
    let store = Store::open(&net.data_dir(CAPPED)).unwrap();
    assert_eq!(store.tip().unwrap().map(|t| t.height), Some(plan_height - 1), "no block taken before stopping");
    assert!(store.last_signed().unwrap().unwrap().height < plan_height);
    drop(store);

    // With a binary that runs protocol 4: it catches up and signs again.
    net.start(CAPPED);
    let me = node_id(&net, CAPPED);
    let back_at = net.height(0).await;
    net.until("the restarted node catches up and signs", Duration::from_secs(60), || async {
        let top = net.height(0).await;
        let caught_up = net.height(CAPPED).await + 2 >= top;
        caught_up && signers(&net, 0, top).await.contains(&me)
    })
    .await;
    println!(
        "upgrade plan: scheduled by block {scheduled_at} for height {plan_height}; the capped node exited 3 {} ms \
         after the plan was seen everywhere, again {} ms after a restart; back from height {back_at}",
        stop_took.as_millis(),
        again_took.as_millis()
    );
}
