//! The docs are checked against the tree and the binary. The README and every
//! page of `docs/` are read as Markdown, and each test fails, naming the file and
//! line, when
//!
//! * a relative link (a file, or a `#anchor` of a heading) or a repository path
//!   in code (`src/...`, `tests/...`) points nowhere;
//! * the docs name a subcommand or a flag the binary does not have, or the
//!   binary has one no doc names (the binary's set is read from its own `--help`,
//!   which clap renders from the command definition);
//! * the docs name a configuration key `masternode.toml` or `network.toml` does
//!   not take, or one of those keys is named nowhere (the files' keys are read
//!   from what the binary answers to an unknown key: the deserializer's list of
//!   the fields it expects);
//! * the docs name a `masternode_*` metric that `/metrics` does not export;
//! * `docs/architecture.md`'s table of imports or its list of pure cores is no
//!   longer what `src/` does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{eventually, fast_transport, stop_all, Spec};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_masternode");

/// One Markdown file, split into what a reader sees as prose and as code.
struct Doc {
    rel: String,
    path: PathBuf,
    /// Paragraphs outside code, with their inline code removed: (first line, text).
    prose: Vec<(usize, String)>,
    /// Inline code spans: (line of their paragraph, text).
    spans: Vec<(usize, String)>,
    /// Lines of fenced or indented code blocks, with the fence's language.
    code: Vec<(usize, String, String)>,
    headings: Vec<String>,
}

fn docs() -> Vec<Doc> {
    let mut paths = vec![Path::new(ROOT).join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    paths.extend(pages);
    paths.iter().map(|p| parse_doc(p)).collect()
}

fn parse_doc(path: &Path) -> Doc {
    let text = std::fs::read_to_string(path).unwrap();
    let rel = path.strip_prefix(ROOT).unwrap().display().to_string();
    let mut doc = Doc { rel, path: path.into(), prose: vec![], spans: vec![], code: vec![], headings: vec![] };
    let mut fence: Option<String> = None;
    let mut paragraph: Option<(usize, String)> = None;
    let mut last_blank = true;
    let mut in_indented = false;
    let flush = |doc: &mut Doc, paragraph: &mut Option<(usize, String)>| {
        if let Some((line, text)) = paragraph.take() {
            let mut prose = String::new();
            for (i, part) in text.split('`').enumerate() {
                if i % 2 == 1 {
                    doc.spans.push((line, part.to_string()));
                } else {
                    prose.push_str(part);
                }
            }
            doc.prose.push((line, prose));
        }
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        if let Some(lang) = &fence {
            if trimmed.starts_with("```") {
                fence = None;
            } else {
                doc.code.push((n, lang.clone(), line.to_string()));
            }
            continue;
        }
        if let Some(lang) = trimmed.strip_prefix("```") {
            flush(&mut doc, &mut paragraph);
            fence = Some(lang.trim().to_string());
            continue;
        }
        if line.starts_with("    ") && (last_blank || in_indented) && !trimmed.starts_with("- ") {
            flush(&mut doc, &mut paragraph);
            in_indented = true;
            doc.code.push((n, String::new(), line.to_string()));
            continue;
        }
        in_indented = false;
        last_blank = trimmed.is_empty();
        if trimmed.is_empty() {
            flush(&mut doc, &mut paragraph);
            continue;
        }
        if trimmed.starts_with('#') {
            flush(&mut doc, &mut paragraph);
            doc.headings.push(trimmed.trim_start_matches('#').trim().to_string());
            paragraph = Some((n, trimmed.trim_start_matches('#').to_string()));
            flush(&mut doc, &mut paragraph);
            continue;
        }
        // A table row or a list item starts a paragraph of its own.
        if trimmed.starts_with('|') || trimmed.starts_with("- ") {
            flush(&mut doc, &mut paragraph);
        }
        match &mut paragraph {
            Some((_, text)) => {
                text.push(' ');
                text.push_str(trimmed);
            }
            None => paragraph = Some((n, trimmed.to_string())),
        }
        if trimmed.starts_with('|') {
            flush(&mut doc, &mut paragraph);
        }
    }
    flush(&mut doc, &mut paragraph);
    doc
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as
/// hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(doc: &Doc) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for h in &doc.headings {
        let s = slug(h);
        let k = seen.entry(s.clone()).or_default();
        out.insert(if *k == 0 { s.clone() } else { format!("{s}-{k}") });
        *k += 1;
    }
    out
}

/// The targets of `[text](target)` links in prose.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        out.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    out
}

/// Every relative link of the README and docs/ names a file that exists, and
/// an anchor a heading of that file has; every repository path named in code
/// exists.
fn broken_links(docs: &[Doc]) -> Vec<String> {
    let by_path: BTreeMap<PathBuf, &Doc> = docs.iter().map(|d| (d.path.clone(), d)).collect();
    let mut broken = Vec::new();
    for doc in docs {
        let dir = doc.path.parent().unwrap();
        for (line, text) in &doc.prose {
            for target in links(text) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let path = if file.is_empty() { doc.path.clone() } else { dir.join(file) };
                if !path.exists() {
                    broken.push(format!("{}:{line}: link to {target}: no file {}", doc.rel, path.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                let canonical = path.canonicalize().unwrap();
                let target_doc = by_path.iter().find(|(p, _)| p.canonicalize().ok().as_ref() == Some(&canonical));
                match target_doc {
                    Some((_, d)) if anchors(d).contains(anchor) => {}
                    Some((_, d)) => {
                        broken.push(format!("{}:{line}: link to {target}: {} has no heading #{anchor}", doc.rel, d.rel))
                    }
                    None => {
                        broken.push(format!("{}:{line}: link to {target}: an anchor in a file not checked", doc.rel))
                    }
                }
            }
        }
        for (line, span) in &doc.spans {
            let s = span.trim();
            let top = ["src/", "tests/", "benches/", "certs/", "systemd/", "monitoring/", "fuzz/", "docs/", ".ci/"];
            if top.iter().any(|t| s.starts_with(t)) && !s.contains([' ', '{', '*', '<']) {
                // `path::item` names an item in a file (a test): the file must exist.
                let path = s.split("::").next().unwrap_or(s).trim_end_matches([':', ',', '.']);
                if !Path::new(ROOT).join(path).exists() {
                    broken.push(format!("{}:{line}: `{s}`: no such path in the repository", doc.rel));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_path_resolves() {
    let docs = docs();
    assert!(docs.len() >= 6, "README and docs/: {}", docs.len());
    let broken = broken_links(&docs);
    assert!(broken.is_empty(), "links that point nowhere:\n{}", broken.join("\n"));
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug("Install and start (systemd)"), "install-and-start-systemd");
    assert_eq!(slug("Membership: add, remove, move, rotate"), "membership-add-remove-move-rotate");
    assert_eq!(
        slug("Changing the rules at a height: `masternode upgrade`"),
        "changing-the-rules-at-a-height-masternode-upgrade"
    );
    assert_eq!(links("see [a](b.md#c) and [d](#e)."), ["b.md#c", "#e"]);
}

// ---- the command line ----

/// The binary's commands: each path of subcommands (the empty path is the
/// binary itself) with the long flags it takes, read from `--help`.
fn binary_commands() -> BTreeMap<Vec<String>, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let help = Command::new(BIN).args(&path).arg("--help").output().expect("the binary runs");
        assert!(help.status.success(), "{path:?} --help: {}", String::from_utf8_lossy(&help.stderr));
        let text = String::from_utf8(help.stdout).unwrap();
        let mut section = "";
        let mut flags = BTreeSet::new();
        for line in text.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line.trim_end_matches(':');
                continue;
            }
            let entry = line.trim_start();
            let head = entry.split("  ").next().unwrap_or_default();
            match section {
                "Commands" if !entry.is_empty() => {
                    let name = head.split_whitespace().next().unwrap().trim_end_matches(',');
                    if name != "help" {
                        let mut sub = path.clone();
                        sub.push(name.to_string());
                        todo.push(sub);
                    }
                }
                "Options" if entry.starts_with('-') => {
                    for word in head.split([' ', ',']) {
                        if let Some(f) = word.strip_prefix("--") {
                            flags.insert(format!("--{f}"));
                        }
                    }
                }
                _ => {}
            }
        }
        out.insert(path, flags);
    }
    out
}

fn is_word(token: &str) -> bool {
    token.split('|').all(|w| {
        let mut chars = w.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_lowercase() || c == '-')
    })
}

/// A `masternode ...` (or `cargo run ... -- ...`) command named in the docs: the
/// subcommand path it names, with alternatives (`member add|remove`), and the
/// long flags after it.
#[derive(Debug)]
struct Invocation {
    paths: Vec<Vec<String>>,
    flags: Vec<String>,
}

fn flag_of(token: &str) -> Option<String> {
    let t = token.trim_start_matches(['(', '[', '`']);
    let name: String = t.strip_prefix("--")?.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    (!name.is_empty()).then(|| format!("--{name}"))
}

/// The invocations in one line of code or one inline span.
fn invocations(text: &str) -> Vec<Invocation> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        let t = tokens[i].trim_start_matches(['(', '`', '$']);
        let start = if t == "masternode" || (t.ends_with("/masternode") && !t.starts_with('/')) {
            i + 1
        } else if t == "cargo" && tokens.get(i + 1) == Some(&"run") {
            match tokens[i..].iter().position(|t| *t == "--") {
                Some(p) => i + p + 1,
                None => continue,
            }
        } else {
            continue;
        };
        let mut args = Vec::new();
        for (k, tok) in tokens.iter().enumerate().skip(start) {
            let stop = ["#", "&&", "||", ";", ">", "2>", "<"].contains(tok)
                || (*tok == "|" && !tokens.get(k + 1).is_some_and(|n| n.starts_with("--")));
            if stop {
                break;
            }
            let ends = tok.ends_with('`');
            args.push(tok.trim_end_matches(['`', ',', '.', ':', ';']));
            if ends {
                break;
            }
        }
        let mut paths: Vec<Vec<String>> = vec![vec![]];
        let mut rest = args.as_slice();
        // At most two levels of subcommands (`member add`, `upgrade status`).
        for _ in 0..2 {
            match rest.first() {
                Some(w) if is_word(w) => {
                    paths = paths
                        .iter()
                        .flat_map(|p| {
                            w.split('|').map(move |alt| {
                                let mut q = p.clone();
                                q.push(alt.to_string());
                                q
                            })
                        })
                        .collect();
                    rest = &rest[1..];
                }
                _ => break,
            }
        }
        let flags: Vec<String> = rest.iter().filter_map(|a| flag_of(a)).collect();
        if paths == vec![Vec::<String>::new()] && flags.is_empty() {
            continue; // `masternode` as a name: the user, the unit, a path
        }
        out.push(Invocation { paths, flags });
    }
    out
}

/// Where each text a command may be named in sits: code lines and inline spans.
fn command_texts(doc: &Doc) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = doc
        .code
        .iter()
        .filter(|(_, lang, _)| !["toml", "json", "yaml"].contains(&lang.as_str()))
        .map(|(n, _, l)| (*n, l.clone()))
        .collect();
    out.extend(doc.spans.iter().cloned());
    out
}

/// What the docs name that the binary lacks, and what the binary has that no
/// doc names.
fn command_mismatches(docs: &[Doc], binary: &BTreeMap<Vec<String>, BTreeSet<String>>) -> Vec<String> {
    let all_flags: BTreeSet<&String> = binary.values().flatten().collect();
    let mut wrong = Vec::new();
    let mut named: BTreeSet<(Vec<String>, Option<String>)> = BTreeSet::new();
    for doc in docs {
        for (line, text) in command_texts(doc) {
            for inv in invocations(&text) {
                for path in &inv.paths {
                    // A path names its prefixes too: `member add` names `member`.
                    let known = (0..=path.len()).all(|k| binary.contains_key(&path[..k]));
                    // With a subcommand still to come (`masternode member`), the
                    // deepest known prefix is what the flags belong to.
                    if !known {
                        wrong.push(format!("{}:{line}: `masternode {}`: no such subcommand", doc.rel, path.join(" ")));
                        continue;
                    }
                    for k in 0..=path.len() {
                        named.insert((path[..k].to_vec(), None));
                    }
                    let flags = &binary[path];
                    for f in &inv.flags {
                        if flags.contains(f) {
                            named.insert((path.clone(), Some(f.clone())));
                        } else {
                            wrong.push(format!(
                                "{}:{line}: `masternode {} {f}`: no such flag",
                                doc.rel,
                                path.join(" ")
                            ));
                        }
                    }
                }
            }
            // A flag alone (`--can-stop`) must be one of the binary's.
            let t = text.trim();
            if t.starts_with("--") && !t.starts_with("-- ") && invocations(t).is_empty() {
                if let Some(f) = flag_of(t) {
                    if !all_flags.contains(&f) {
                        wrong.push(format!(
                            "{}:{line}: `{t}`: the binary has no flag {f} (another program's flag goes with its \
                             command: `cargo test -- --ignored`)",
                            doc.rel
                        ));
                    }
                }
            }
        }
    }
    for (path, flags) in binary {
        if !named.contains(&(path.clone(), None)) {
            wrong.push(format!("`masternode {}` is named in no doc", path.join(" ")));
        }
        for f in flags {
            let implicit = f == "--help" || (f == "--version" && !path.is_empty());
            if !implicit && !named.contains(&(path.clone(), Some(f.clone()))) {
                wrong.push(format!("`masternode {} {f}` is named in no doc", path.join(" ")));
            }
        }
    }
    wrong
}

#[test]
fn the_docs_name_the_binarys_commands_and_flags_exactly() {
    let binary = binary_commands();
    assert!(binary.len() >= 10 && binary[&vec!["run".to_string()]].contains("--config"), "{binary:?}");
    let wrong = command_mismatches(&docs(), &binary);
    assert!(wrong.is_empty(), "docs and the binary's commands disagree:\n{}", wrong.join("\n"));
}

#[test]
fn invocations_are_read_as_a_shell_reads_them() {
    let one = |t: &str| {
        let v = invocations(t);
        assert_eq!(v.len(), 1, "{t}: {v:?}");
        (v[0].paths.iter().map(|p| p.join(" ")).collect::<Vec<_>>(), v[0].flags.clone())
    };
    assert_eq!(
        one("masternode status --can-stop --config F && systemctl restart masternode"),
        (vec!["status".into()], vec!["--can-stop".into(), "--config".into()])
    );
    assert_eq!(
        one("masternode member add|remove (--config FILE | --admin ADDR) [--json]").0,
        ["member add", "member remove"]
    );
    assert_eq!(one("cargo run --release -- devnet --duration 20").1, ["--duration"]);
    assert_eq!(one("masternode --version     # masternode 0.2.0").0, [""]);
    assert!(invocations("useradd --system --shell /usr/sbin/nologin masternode").is_empty());
    assert!(invocations("install -m 0755 masternode /usr/local/bin/masternode").is_empty());
}

// ---- configuration keys ----

/// The keys each table of the two files takes, as the binary's deserializer
/// lists them when it meets an unknown key: "" and "transport", "limits" of
/// `masternode.toml`, "network" and "masternode" (its `[[masternode]]`) of
/// `network.toml`.
fn binary_keys() -> BTreeMap<&'static str, BTreeSet<String>> {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("masternode.toml");
    let network = dir.path().join("network.toml");
    let valid_node = "network = \"network.toml\"\nkey = \"node.key\"\ncert = \"node.crt\"\nlisten = \"127.0.0.1:1\"\n";
    let cases: [(&str, String, Option<&str>); 5] = [
        ("", "zz_not_a_key = 1\n".into(), None),
        ("transport", "[transport]\nzz_not_a_key = 1\n".into(), None),
        ("limits", "[limits]\nzz_not_a_key = 1\n".into(), None),
        ("network", valid_node.into(), Some("zz_not_a_key = 1\n")),
        ("masternode", valid_node.into(), Some("[[masternode]]\nzz_not_a_key = 1\n")),
    ];
    let mut out = BTreeMap::new();
    for (table, node_text, network_text) in cases {
        std::fs::write(&node, node_text).unwrap();
        std::fs::write(&network, network_text.unwrap_or("")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"]).arg(&node).stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MASTERNODE_") {
                cmd.env_remove(k);
            }
        }
        let run = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr).to_string();
        assert_eq!(run.status.code(), Some(78), "[{table}] with an unknown key: {err}");
        let expected = err.split("expected").nth(1).unwrap_or_else(|| panic!("[{table}]: {err}"));
        let keys: BTreeSet<String> = expected.split('`').skip(1).step_by(2).map(String::from).collect();
        assert!(!keys.is_empty(), "[{table}]: {err}");
        out.insert(table, keys);
    }
    out
}

/// Keys the docs name: in TOML code blocks (under their table), as `[table]
/// key` or `table.key`, and as `key = value` spans that parse as TOML.
fn config_mismatches(docs: &[Doc], keys: &BTreeMap<&'static str, BTreeSet<String>>) -> Vec<String> {
    let all: BTreeSet<&String> = keys.values().flatten().collect();
    let in_table = |table: &str, key: &str| match table {
        "" => keys[""].contains(key) || keys["network"].contains(key),
        t => keys.get(t).is_some_and(|k| k.contains(key)),
    };
    let mut wrong = Vec::new();
    let mut named: BTreeSet<String> = BTreeSet::new();
    for doc in docs {
        let mut table = String::new();
        let mut last_line = 0;
        for (line, lang, text) in &doc.code {
            if lang != "toml" {
                continue;
            }
            if *line != last_line + 1 {
                table.clear(); // a new block
            }
            last_line = *line;
            let t = text.trim();
            if t.starts_with('[') {
                let name = t.trim_start_matches('[').split(']').next().unwrap().trim().to_string();
                if !keys.contains_key(name.as_str()) || name.is_empty() || name == "network" {
                    wrong.push(format!("{}:{line}: table [{name}]: neither file has it", doc.rel));
                }
                named.insert(name.clone());
                table = name;
                continue;
            }
            let t = t.trim_start_matches('#').trim_start();
            let Some((key, _)) = t.split_once('=') else { continue };
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            if in_table(&table, key) {
                named.insert(key.to_string());
            } else {
                wrong.push(format!("{}:{line}: key `{key}` in [{table}]: the binary does not take it", doc.rel));
            }
        }
        for (line, span) in &doc.spans {
            let s = span.trim();
            let named_key = if let Some(rest) = s.strip_prefix('[') {
                rest.split_once(']').map(|(t, k)| (t.to_string(), k.trim().to_string()))
            } else if let Some((t, k)) = s.split_once('.').filter(|(t, _)| ["transport", "limits"].contains(t)) {
                Some((t.to_string(), k.to_string()))
            } else if s.contains(" = ") && toml::from_str::<toml::Table>(s).is_ok() {
                s.split_once('=').map(|(k, _)| (String::from("*"), k.trim().to_string()))
            } else {
                None
            };
            let Some((t, k)) = named_key else { continue };
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            let ok = if t == "*" { all.contains(&k) } else { in_table(&t, &k) };
            if ok {
                named.insert(k);
            } else if t == "*" && !k.contains('_') {
                // `n = 4`: a formula's variable, not a key.
            } else {
                wrong.push(format!("{}:{line}: `{s}`: the binary takes no such key", doc.rel));
            }
        }
    }
    for (table, ks) in keys {
        for k in ks {
            if !named.contains(k) {
                wrong.push(format!("key `{k}` ([{table}]) is named in no doc"));
            }
        }
    }
    wrong
}

#[test]
fn the_docs_name_the_configuration_keys_exactly() {
    let keys = binary_keys();
    assert!(keys[""].contains("listen") && keys["transport"].contains("keepalive_ms"), "{keys:?}");
    let wrong = config_mismatches(&docs(), &keys);
    assert!(wrong.is_empty(), "docs and the configuration files disagree:\n{}", wrong.join("\n"));
}

// ---- metrics ----

fn metric_names(text: &str) -> BTreeSet<String> {
    crate::monitoring::names_with(text, &["masternode_"])
}

fn unexported<'a>(named: impl IntoIterator<Item = &'a String>, have: &BTreeSet<String>) -> Vec<String> {
    named.into_iter().filter(|n| !crate::monitoring::is_exported(n, have)).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_docs_name_is_exported() {
    let mut named: BTreeMap<String, String> = BTreeMap::new();
    for doc in docs() {
        let text = std::fs::read_to_string(&doc.path).unwrap();
        for (n, line) in text.lines().enumerate() {
            for name in metric_names(line) {
                named.entry(name).or_insert(format!("{}:{}", doc.rel, n + 1));
            }
        }
    }
    assert!(named.len() >= 20, "{named:?}");
    // Two nodes, connected: some families (the peers' RTT) exist only with a peer.
    let spec = Spec::new(2);
    let nodes = vec![spec.start(0, fast_transport()).await, spec.start(1, fast_transport()).await];
    eventually("the pair connected", Duration::from_secs(30), || nodes.iter().all(|n| n.status().peers.len() == 1))
        .await;
    let scrape = masternode::admin::http_get(nodes[0].admin_addr(), "/metrics", Duration::from_secs(5)).await.unwrap();
    stop_all(nodes).await;
    let missing = unexported(named.keys(), &crate::monitoring::exported(&scrape));
    let at: Vec<String> = missing.iter().map(|m| format!("{}: {m}", named[m])).collect();
    assert!(missing.is_empty(), "named in the docs, not exported by /metrics:\n{}", at.join("\n"));
}

// ---- docs/architecture.md ----

/// Code of a source file as the checks read it: no comments, no test module.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The crate's top-level modules each file of `src/` belongs to, with the
/// other top-level modules it names through `crate::`.
fn actual_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let tops: BTreeSet<String> =
        lib.lines().filter_map(|l| l.trim().strip_suffix(';')?.split("mod ").nth(1).map(String::from)).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if !tops.contains(&top) {
            continue; // lib.rs, main.rs
        }
        let code = code_of(&f);
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let named: Vec<String> = if let Some(group) = after.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                inner.split(',').map(|s| s.trim().split("::").next().unwrap_or_default().to_string()).collect()
            } else {
                vec![after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()]
            };
            for m in named {
                if m != top && tops.contains(&m) {
                    out.get_mut(&top).unwrap().insert(m);
                }
            }
            rest = after;
        }
    }
    out
}

fn architecture() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/architecture.md")).unwrap()
}

/// The rows of the "Modules and imports" table: module -> what it may import.
fn allowed_imports(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let section = doc.split("## Modules and imports").nth(1).expect("the section").split("\n## ").next().unwrap();
    let mut out = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let module = cells[0].trim_matches('`').to_string();
        let may: BTreeSet<String> = cells.last().unwrap().split('`').skip(1).step_by(2).map(String::from).collect();
        out.insert(module, may);
    }
    out
}

fn import_mismatches(
    allowed: &BTreeMap<String, BTreeSet<String>>,
    actual: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (module, imports) in actual {
        let Some(may) = allowed.get(module) else {
            wrong.push(format!("module `{module}` has no row in docs/architecture.md"));
            continue;
        };
        for i in imports.difference(may) {
            wrong.push(format!("`{module}` imports `{i}`, which its row does not allow"));
        }
    }
    for module in allowed.keys().filter(|m| !actual.contains_key(*m)) {
        wrong.push(format!("docs/architecture.md names `{module}`, which src/lib.rs does not declare"));
    }
    wrong
}

#[test]
fn imports_run_as_the_architecture_says() {
    let allowed = allowed_imports(&architecture());
    let actual = actual_imports();
    assert!(actual.len() >= 10 && actual["config"].contains("net"), "{actual:?}");
    let wrong = import_mismatches(&allowed, &actual);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The table is one order: no module may import one that may import it.
    for (m, may) in &allowed {
        for i in may {
            assert!(!allowed.get(i).is_some_and(|back| back.contains(m)), "`{m}` and `{i}` may import each other");
        }
    }
}

/// What a pure core does not reach for.
const IO: [&str; 12] = [
    "tokio::",
    "quinn::",
    "rustls::",
    "fjall::",
    "axum::",
    "hyper::",
    "socket2::",
    "sd_notify::",
    "Instant::now",
    "SystemTime::now",
    "std::fs",
    "UdpSocket",
];

#[test]
fn the_pure_cores_do_no_io() {
    let doc = architecture();
    let section = doc.split("## Pure cores and shells").nth(1).expect("the section").split("\n## ").next().unwrap();
    let list = section.split("The pure cores:").nth(1).unwrap().split("\n\n").nth(1).unwrap();
    let mut cores = Vec::new();
    for item in list.lines().filter(|l| l.starts_with("- ")) {
        let head = item.split(": ").next().unwrap();
        cores.extend(head.split('`').skip(1).step_by(2).map(String::from));
    }
    assert!(cores.len() >= 15, "{cores:?}");
    let mut wrong = Vec::new();
    for core in &cores {
        let path = Path::new(ROOT).join(core);
        assert!(path.exists(), "docs/architecture.md names {core}, which does not exist");
        let code = code_of(&path);
        for io in IO.iter().filter(|io| code.contains(*io)) {
            wrong.push(format!("{core} is listed as a pure core and uses {io}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---- environment variables ----

/// `MASTERNODE_*` names in `text`, whole words only.
fn variable_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("MASTERNODE_").map(|i| from + i) {
        let word_start = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let end = text[at..].find(|c: char| !(c.is_ascii_uppercase() || c == '_')).map_or(text.len(), |i| at + i);
        let name = text[at..end].trim_end_matches('_');
        if word_start && name.len() > "MASTERNODE".len() {
            out.insert(name.to_string());
        }
        from = end.max(at + 1);
    }
    out
}

/// Every `MASTERNODE_*` variable the docs name is one the binary reads (from
/// its `--help`, `[env: ...]`) or one the code or the scripts read, and every
/// variable of the binary's flags is named.
#[test]
fn the_docs_name_the_binarys_variables_exactly() {
    let mut from_flags = BTreeSet::new();
    for path in binary_commands().keys() {
        let help = Command::new(BIN).args(path).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout).to_string();
        for part in text.split("[env: ").skip(1) {
            from_flags.insert(part.split('=').next().unwrap().to_string());
        }
    }
    assert!(from_flags.contains("MASTERNODE_LISTEN"), "{from_flags:?}");
    let mut read_elsewhere = BTreeSet::new();
    let mut files = Vec::new();
    for dir in ["src", "tests", "certs", "systemd"] {
        let mut all = Vec::new();
        collect_files(&Path::new(ROOT).join(dir), &mut all);
        files.extend(all.into_iter().filter(|p| !p.ends_with("docs_check.rs")));
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            read_elsewhere.extend(variable_names(&text));
        }
    }
    let mut named = BTreeMap::new();
    for doc in docs() {
        let text = std::fs::read_to_string(&doc.path).unwrap();
        for (n, line) in text.lines().enumerate() {
            for v in variable_names(line) {
                named.entry(v).or_insert(format!("{}:{}", doc.rel, n + 1));
            }
        }
    }
    let mut wrong: Vec<String> = named
        .iter()
        .filter(|(v, _)| !from_flags.contains(*v) && !read_elsewhere.contains(*v))
        .map(|(v, at)| format!("{at}: {v}: nothing reads it"))
        .collect();
    wrong.extend(from_flags.iter().filter(|v| !named.contains_key(*v)).map(|v| format!("{v} is named in no doc")));
    assert!(wrong.is_empty(), "docs and the variables the binary reads disagree:\n{}", wrong.join("\n"));
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}
