//! The admin API against what a web page, a careless client or a local flood
//! can send: real sockets, in-process nodes and daemons as processes.
//!
//! Each refusal is checked with its positive control (the same request done
//! right is served), so none of these can pass by the node answering nothing.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::procs::{Net, BIN};
use crate::common::{eventually, fast_transport, Spec};
use masternode::admin::{fetch_members, fetch_status, AdminToken};
use masternode::node::{Node, NodeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// One request exactly as given (`head` without its final blank line), over
/// HTTP/1.0 so the server closes after answering; the status code, the
/// response head and the body.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request = format!("{head}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        request.extend_from_slice(body);
        s.write_all(&request).await.unwrap();
        let mut response = Vec::new();
        s.read_to_end(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(WAIT, exchange).await.expect("an answer");
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (code, head.to_string(), body.to_string())
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    v["error"].as_str().unwrap_or_else(|| panic!("no error field: {body}")).to_string()
}

/// The value of metric `line` (name and labels as exported) in `text`.
fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{line} not exported"))
        .trim()
        .parse()
        .unwrap()
}

/// One node of a four-node network, alone: no quorum, no blocks, so whatever
/// it queues or signs stays in view.
async fn lone_node(token: Option<AdminToken>) -> (Spec, Node) {
    let spec = Spec::new(4);
    let mut cfg = spec.config(0, spec.network(), fast_transport());
    cfg.admin_token = token;
    let node = Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap();
    (spec, node)
}

fn write_token(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("admin.token");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn set_addr_body(addr: &str) -> String {
    format!("{{\"change\":\"set-addr\",\"addr\":\"{addr}\"}}")
}

async fn pending(node: &Node) -> usize {
    fetch_members(node.admin_addr(), Duration::from_secs(5)).await.unwrap().pending.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_host_cannot_make_the_node_sign_a_set_addr() {
    let (_spec, node) = lone_node(None).await;
    let admin = node.admin_addr();
    let body = set_addr_body("127.0.0.77:24100");
    for host in ["evil.example", "evil.example:24101", "127.0.0.1.nip.io"] {
        let head = format!("POST /members HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json");
        let (code, _, answer) = raw(admin, &head, body.as_bytes()).await;
        assert_eq!(code, 421, "Host {host}: {answer}");
        assert!(error_of(&answer).contains("localhost"), "{answer}");
    }
    assert_eq!(pending(&node).await, 0, "nothing signed for a rebinding page");
    assert!(node.members().pending().is_empty());
    let metrics = node.metrics();
    assert_eq!(metric(&metrics, "masternode_admin_refused_total{reason=\"host_name\"}"), 3.0);

    // The same request naming the node is signed.
    let head = format!("POST /members HTTP/1.0\r\nHost: localhost:{}\r\nContent-Type: application/json", admin.port());
    let (code, _, answer) = raw(admin, &head, body.as_bytes()).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(pending(&node).await, 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_localhost_and_the_address_reached_may_read_status_and_metrics() {
    let (_spec, node) = lone_node(None).await;
    let admin = node.admin_addr();
    let ip = admin.ip();
    let port = admin.port();
    let refused = [
        format!("GET /status HTTP/1.0\r\nHost: evil.example:{port}"),
        format!("GET /metrics HTTP/1.0\r\nHost: evil.example:{port}"),
        "GET /members HTTP/1.0\r\nHost: evil.example".to_string(),
        "GET /status HTTP/1.0".to_string(),
        format!("GET /status HTTP/1.0\r\nHost: 127.0.0.99:{port}"),
        format!("GET /status HTTP/1.0\r\nHost: [::1]:{port}"),
        "GET /status HTTP/1.0\r\nHost: localhost:".to_string(),
        // An absolute target names the host too.
        format!("GET http://evil.example:{port}/status HTTP/1.0\r\nHost: {admin}"),
    ];
    for head in &refused {
        let (code, _, body) = raw(admin, head, b"").await;
        assert_eq!(code, 421, "{head:?}: {body}");
        assert!(!body.contains("node_id") && !body.contains("masternode_height"), "nothing leaks: {body}");
        error_of(&body);
    }
    let accepted = [
        format!("GET /status HTTP/1.0\r\nHost: localhost:{port}"),
        "GET /status HTTP/1.0\r\nHost: localhost".to_string(),
        format!("GET /status HTTP/1.0\r\nHost: {ip}:{port}"),
        format!("GET /status HTTP/1.0\r\nHost: {ip}"),
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close"),
    ];
    for head in &accepted {
        let (code, _, body) = raw(admin, head, b"").await;
        assert_eq!(code, 200, "{head:?}: {body}");
    }
    let metrics = node.metrics();
    for (reason, n) in [("host_name", 4.0), ("host_missing", 1.0), ("host_address", 2.0), ("host_malformed", 1.0)] {
        assert_eq!(metric(&metrics, &format!("masternode_admin_refused_total{{reason=\"{reason}\"}}")), n, "{reason}");
    }
    node.stop().await;
}

/// Bound to every address, the API answers to the one a connection reached,
/// which is what a Prometheus scraping it by IP sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_bound_admin_answers_to_the_ip_it_was_reached_on() {
    let spec = Spec::new(4);
    let mut cfg = spec.config(0, spec.network(), fast_transport());
    cfg.admin = "0.0.0.0:0".parse().unwrap();
    let node = Node::start(cfg, NodeOptions::default(), CancellationToken::new()).await.unwrap();
    let port = node.admin_addr().port();
    let one = SocketAddr::new(spec.addr(0).ip(), port);
    let two = SocketAddr::new(spec.addr(1).ip(), port);
    for at in [one, two] {
        let (code, _, body) = raw(at, &format!("GET /status HTTP/1.0\r\nHost: {at}"), b"").await;
        assert_eq!(code, 200, "{at}: {body}");
    }
    let (code, _, body) = raw(one, &format!("GET /status HTTP/1.0\r\nHost: {two}"), b"").await;
    assert_eq!(code, 421, "another of our addresses is still not the one reached: {body}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tx_that_is_not_octet_stream_is_refused_before_the_mempool() {
    let (_spec, node) = lone_node(None).await;
    let admin = node.admin_addr();
    for typed in [
        "\r\nContent-Type: text/plain",
        "\r\nContent-Type: application/x-www-form-urlencoded",
        "\r\nContent-Type: multipart/form-data; boundary=x",
        "",
    ] {
        let head = format!("POST /tx HTTP/1.0\r\nHost: {admin}{typed}");
        let (code, _, body) = raw(admin, &head, b"a transaction from a web page").await;
        assert_eq!(code, 415, "{typed:?}: {body}");
        assert!(error_of(&body).contains("application/octet-stream"), "{body}");
    }
    assert_eq!(node.mempool_len(), 0, "nothing queued");
    assert_eq!(metric(&node.metrics(), "masternode_admin_refused_total{reason=\"content_type\"}"), 4.0);
    // A set-addr in a form is not signed either.
    let head = format!("POST /members HTTP/1.0\r\nHost: {admin}\r\nContent-Type: text/plain");
    let (code, _, _) = raw(admin, &head, set_addr_body("127.0.0.77:24100").as_bytes()).await;
    assert_eq!(code, 415);
    assert_eq!(pending(&node).await, 0);

    let (code, body) = masternode::admin::post_tx(admin, b"a transaction", None, WAIT).await.unwrap();
    assert_eq!(code, 202, "{body}");
    assert_eq!(node.mempool_len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admin_token_a_post_without_the_token_queues_and_signs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = AdminToken::load(&write_token(dir.path(), "0123456789abcdef-right\n", 0o600)).unwrap();
    let (_spec, node) = lone_node(Some(token.clone())).await;
    let admin = node.admin_addr();
    let change = set_addr_body("127.0.0.77:24100");
    let authorizations = ["", "\r\nAuthorization: Bearer 0123456789abcdef-wrong", "\r\nAuthorization: Basic abc"];
    for auth in authorizations {
        let head = format!("POST /tx HTTP/1.0\r\nHost: {admin}\r\nContent-Type: application/octet-stream{auth}");
        let (code, head_back, body) = raw(admin, &head, b"tx").await;
        assert_eq!(code, 401, "{auth:?}: {body}");
        assert!(head_back.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head_back}");
        error_of(&body);
        let head = format!("POST /members HTTP/1.0\r\nHost: {admin}\r\nContent-Type: application/json{auth}");
        let (code, _, body) = raw(admin, &head, change.as_bytes()).await;
        assert_eq!(code, 401, "{auth:?}: {body}");
    }
    assert_eq!(node.mempool_len(), 0, "nothing queued");
    assert_eq!(pending(&node).await, 0, "nothing signed");
    let metrics = node.metrics();
    assert_eq!(metric(&metrics, "masternode_admin_refused_total{reason=\"token_missing\"}"), 4.0);
    assert_eq!(metric(&metrics, "masternode_admin_refused_total{reason=\"token_wrong\"}"), 2.0);

    // Reads need no token.
    fetch_status(admin, WAIT).await.unwrap();
    // The right token, as the library client sends it.
    let (code, body) = masternode::admin::post_tx(admin, b"tx", Some(&token), WAIT).await.unwrap();
    assert_eq!(code, 202, "{body}");
    assert_eq!(node.mempool_len(), 1);
    let body =
        masternode::admin::ChangeBody { change: "set-addr".into(), id: None, addr: Some("127.0.0.77:24100".into()) };
    masternode::admin::post_change(admin, &body, Some(&token), WAIT).await.unwrap();
    assert_eq!(pending(&node).await, 1);
    let err = masternode::admin::post_change(admin, &body, None, WAIT).await.unwrap_err();
    assert!(matches!(err, masternode::admin::ClientError::Http { code: 401, .. }), "{err}");
    node.stop().await;
}

/// Past the bound, connections wait in the kernel's backlog; once the held ones
/// close, a request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_bound_wait_and_one_closing_lets_a_request_through() {
    let (_spec, node) = lone_node(None).await;
    let admin = node.admin_addr();
    let mut idle = Vec::new();
    for _ in 0..masternode::admin::MAX_CONNECTIONS + 8 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    let open = |m: &str| metric(m, "masternode_admin_connections");
    eventually("the bound reached", WAIT, || {
        let m = node.metrics();
        open(&m) == masternode::admin::MAX_CONNECTIONS as f64
            && metric(&m, "masternode_admin_connection_waits_total") >= 1.0
    })
    .await;
    // Held to the bound: a further request is not served meanwhile.
    let late = fetch_status(admin, Duration::from_secs(1)).await;
    assert!(late.is_err(), "served past the bound: {late:?}");
    assert_eq!(open(&node.metrics()), masternode::admin::MAX_CONNECTIONS as f64, "never past the bound");
    drop(idle);
    let start = Instant::now();
    while fetch_status(admin, Duration::from_secs(2)).await.is_err() {
        assert!(start.elapsed() < WAIT, "not served after the idle connections closed");
    }
    eventually("every connection closed", WAIT, || open(&node.metrics()) == 0.0).await;
    node.stop().await;
}

/// A connection that never finishes its request's headers is closed at the
/// header deadline, so a slowloris frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let (_spec, node) = lone_node(None).await;
    let admin = node.admin_addr();
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET /status HTTP/1.1\r\nHost: {admin}\r\n").as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(masternode::admin::HEADER_TIMEOUT * 3, s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after {:?}", start.elapsed());
    assert!(
        start.elapsed() >= masternode::admin::HEADER_TIMEOUT - Duration::from_secs(1),
        "closed early: {:?}",
        start.elapsed()
    );
    assert!(!String::from_utf8_lossy(&rest).contains("node_id"), "no status for half a request");
    eventually("the slot freed", WAIT, || metric(&node.metrics(), "masternode_admin_connections") == 0.0).await;
    node.stop().await;
}

/// Environment variables naming files.
type Env<'a> = &'a [(&'a str, &'a Path)];

/// Runs `masternode ARGS` with `env`; exit code, stdout, stderr.
fn cli(args: &[&str], env: Env) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).envs(env.iter().map(|(k, v)| (*k, *v))).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn with_token_line(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("admin_token = \"admin.token\"\n{text}")).unwrap();
}

#[test]
fn an_admin_token_file_missing_empty_or_readable_by_others_stops_the_daemon_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = crate::common::subnet();
    let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
    let configs = masternode::devnet::lay_out(tmp.path(), 1, ip).unwrap();
    with_token_line(&configs[0]);
    let dir = configs[0].parent().unwrap();
    let cases: [(Option<(&str, u32)>, &str); 4] = [
        (None, "cannot read"),
        (Some(("", 0o600)), "is empty"),
        (Some(("0123456789abcdef\n", 0o644)), "readable by group or others (mode 644)"),
        (Some(("0123456789abcdef\n", 0o604)), "readable by group or others (mode 604)"),
    ];
    for (file, says) in cases {
        let _ = std::fs::remove_file(dir.join("admin.token"));
        if let Some((text, mode)) = file {
            write_token(dir, text, mode);
        }
        let out = Command::new(BIN).args(["run", "--config"]).arg(&configs[0]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(out.status.code(), Some(78), "{says}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(says) && err.contains("admin_token") && err.contains("admin.token"), "{err}");
        assert!(!err.contains("0123456789abcdef"), "the token is never printed: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_cli_sends_the_token_from_its_flag_its_variable_or_the_config() {
    let mut net = Net::new(4);
    with_token_line(&net.configs[0]);
    let token_file = write_token(net.configs[0].parent().unwrap(), "0123456789abcdef-cli\n", 0o600);
    net.start(0);
    let start = Instant::now();
    while net.status(0).await.is_none() {
        assert!(start.elapsed() < WAIT, "node not serving\n{}", net.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = net.admins[0].to_string();
    let config = net.configs[0].to_str().unwrap().to_string();
    let token = token_file.to_str().unwrap().to_string();
    let moved = |i: u8| SocketAddr::new(std::net::Ipv4Addr::new(127, 0, 0, 70 + i).into(), 24100).to_string();

    let (code, out, err) = cli(&["member", "set-addr", "--addr", &moved(0), "--admin", &admin], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("401") && err.contains("--admin-token"), "{err}");
    let wrong = write_token(net.dir.path(), "not-the-token", 0o600);
    let wrong = wrong.to_str().unwrap();
    let (code, _, err) =
        cli(&["member", "set-addr", "--addr", &moved(0), "--admin", &admin, "--admin-token", wrong], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("401"), "{err}");
    assert_eq!(fetch_members(net.admins[0], WAIT).await.unwrap().pending.len(), 0, "nothing signed");

    let by_variable = [("MASTERNODE_ADMIN_TOKEN_FILE", token_file.as_path())];
    let runs: [(Vec<&str>, Env); 3] = [
        (vec!["--admin", &admin, "--admin-token", &token], &[]),
        (vec!["--admin", &admin], &by_variable),
        (vec!["--config", &config], &[]),
    ];
    for (i, (target, env)) in runs.iter().enumerate() {
        let addr = moved(i as u8 + 1);
        let mut args = vec!["member", "set-addr", "--addr", &addr];
        args.extend(target.iter().copied());
        let (code, out, err) = cli(&args, env);
        assert_eq!(code, Some(0), "{target:?} {env:?}: {err}\n{}", net.logs());
        assert!(out.contains("announced set-addr"), "{out}");
    }
    let pending = fetch_members(net.admins[0], WAIT).await.unwrap().pending;
    assert!(pending.iter().all(|p| p.change == "set-addr"), "{pending:?}");
    assert!(!pending.is_empty());
    // A token file others can read is refused by the CLI as by the daemon.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) =
        cli(&["member", "set-addr", "--addr", &moved(9), "--admin", &admin, "--admin-token", &token], &[]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("mode 644"), "{err}");
}

/// What a browser sends for a page that names the node's own address (an
/// `<img>` or a `fetch` from any site): refused with 403 before any block is
/// read, the connection closed, nothing queued; the same request from a
/// client (no `Origin`, no `Sec-Fetch-Site`, or `none` for an address the
/// user typed) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_browser_makes_for_a_page_are_refused_and_close_their_connection() {
    let (_spec, node) = lone_node(None).await;
    let addr = node.admin_addr();
    let host = format!("Host: {addr}");
    for extra in
        ["Origin: http://evil.example", "Origin: null", "Sec-Fetch-Site: cross-site", "Sec-Fetch-Site: same-origin"]
    {
        let (code, head, body) = raw(addr, &format!("GET /status HTTP/1.1\r\n{host}\r\n{extra}"), b"").await;
        assert_eq!(code, 403, "{extra}: {head}");
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{extra}: {head}");
        assert!(error_of(&body).contains("web page") || error_of(&body).contains("page"), "{body}");
        let (code, _, _) = raw(
            addr,
            &format!("POST /tx HTTP/1.1\r\n{host}\r\n{extra}\r\nContent-Type: application/octet-stream"),
            b"a page's transaction",
        )
        .await;
        assert_eq!(code, 403, "{extra} on POST /tx");
    }
    assert_eq!(node.mempool_len(), 0, "nothing queued");
    for extra in ["Sec-Fetch-Site: none", "User-Agent: curl/8"] {
        let (code, head, _) = raw(addr, &format!("GET /status HTTP/1.0\r\n{host}\r\n{extra}"), b"").await;
        assert_eq!(code, 200, "{extra}: {head}");
    }
    let metrics = masternode::admin::http_get(addr, "/metrics", WAIT).await.unwrap();
    assert_eq!(metric(&metrics, "masternode_admin_refused_total{reason=\"browser\"}"), 8.0);
    node.stop().await;
}
