//! Bad input: every malformed cluster file or command line gives exit code 2
//! and a message that names the problem, for both `run` and `check`. A valid
//! file passes `check` with a summary.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_no_panic, free_addr, run_bin, Finished};

/// A config error must be reported at once; this only bounds a hang.
const FAST: Duration = Duration::from_secs(10);

/// A valid 3-node file on free ports, with `[cluster]`, `[raft]` and node
/// sections that each test edits one line of.
fn valid_toml(data_dir: &Path) -> String {
    let mut s = format!(
        "[cluster]\n\
         name = \"cfg\"\n\
         quorum_wait_timeout = \"1s\"\n\
         heartbeat_interval = \"100ms\"\n\
         peer_timeout = \"500ms\"\n\
         data_dir = \"{}\"\n\
         \n\
         [raft]\n\
         tick_interval = \"25ms\"\n\
         election_ticks = 10\n\
         heartbeat_ticks = 2\n",
        data_dir.display()
    );
    for id in 1..=3 {
        s.push_str(&format!(
            "\n[[node]]\nid = {id}\naddr = \"{}\"\nadmin = \"{}\"\n",
            free_addr(),
            free_addr()
        ));
    }
    s
}

struct Case {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl Case {
    /// Writes `edit(valid file)` into a fresh temp dir.
    fn new(edit: impl FnOnce(String) -> String) -> Case {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cluster.toml");
        let text = edit(valid_toml(&dir.path().join("data")));
        std::fs::write(&file, text).expect("write file");
        Case { _dir: dir, file }
    }

    fn path(&self) -> &str {
        self.file.to_str().expect("utf-8 path")
    }

    fn check(&self) -> Finished {
        run_bin(&["check", self.path()], FAST)
    }

    fn run(&self, node_id: &str) -> Finished {
        run_bin(
            &["run", "--cluster", self.path(), "--node-id", node_id],
            FAST,
        )
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.file).expect("read file")
    }
}

/// Replaces the first occurrence of `from`, insisting it is there.
fn replace(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test bug: {from:?} not in file");
    text.replacen(from, to, 1)
}

/// Asserts exit 2 and that stderr mentions every word of `words`
/// (case-insensitive), and nothing panicked.
fn assert_usage_error(what: &str, f: &Finished, words: &[&str]) {
    assert_eq!(
        f.code, 2,
        "{what}: exit code\nstdout:\n{}\nstderr:\n{}",
        f.stdout, f.stderr
    );
    let lower = f.stderr.to_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_lowercase()),
            "{what}: stderr must mention {w:?}:\n{}",
            f.stderr
        );
    }
    assert_no_panic(what, &f.stderr);
}

/// Runs both `check FILE` and `run --cluster FILE --node-id 1` on a bad file.
fn assert_rejected(what: &str, case: &Case, words: &[&str]) {
    assert_usage_error(&format!("check with {what}"), &case.check(), words);
    assert_usage_error(&format!("run with {what}"), &case.run("1"), words);
}

#[test]
fn valid_file_passes_check_with_a_summary() {
    // Ids and ports chosen so that the digit 4 can only come from the count.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ok.toml");
    let mut text = String::from(
        "[cluster]\nname = \"checkme\"\nquorum_wait_timeout = \"30s\"\n\
         heartbeat_interval = \"1s\"\npeer_timeout = \"3s\"\ndata_dir = \"/tmp/checkme\"\n",
    );
    for (id, port) in [(10, 9001), (20, 9002), (30, 9003), (50, 9005)] {
        text.push_str(&format!(
            "\n[[node]]\nid = {id}\naddr = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{}\"\n",
            port + 1000
        ));
    }
    std::fs::write(&file, text).expect("write");
    let f = run_bin(&["check", file.to_str().expect("utf-8")], FAST);
    assert_eq!(
        f.code, 0,
        "check exit code\nstdout:\n{}\nstderr:\n{}",
        f.stdout, f.stderr
    );
    let out = format!("{}{}", f.stdout, f.stderr);
    assert!(
        out.contains("checkme"),
        "summary must name the cluster:\n{out}"
    );
    let numbers: Vec<&str> = out
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .collect();
    assert!(
        numbers.contains(&"4"),
        "summary must give the node count 4:\n{out}"
    );
}

#[test]
fn the_shipped_cluster_files_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for n in [1, 3, 5] {
        let file = root.join(format!("clusters/cluster{n}.toml"));
        let f = run_bin(&["check", file.to_str().expect("utf-8")], FAST);
        assert_eq!(
            f.code,
            0,
            "check {}:\n{}{}",
            file.display(),
            f.stdout,
            f.stderr
        );
        assert!(f.stdout.contains(&format!("cluster{n}")), "{}", f.stdout);
        // data_dir is relative to the file: under the repository's target/.
        assert!(
            f.stdout.contains(&format!(
                "data_dir={}/clusters/../target/clusters/cluster{n}\n",
                root.display()
            )),
            "{}",
            f.stdout
        );
        // A plaintext file says what it lacks.
        assert!(
            f.stdout.contains("peers are not authenticated"),
            "{}",
            f.stdout
        );
    }
}

#[test]
fn malformed_toml() {
    let case = Case::new(|t| replace(t, "[raft]", "[raft"));
    // The problem is the syntax; the message names the file.
    let file_name = "cluster.toml";
    assert_rejected("malformed TOML", &case, &[file_name]);
    let f = case.check();
    let lower = f.stderr.to_lowercase();
    assert!(
        ["parse", "syntax", "expected", "invalid"]
            .iter()
            .any(|w| lower.contains(w)),
        "malformed TOML: stderr must say it cannot be parsed:\n{}",
        f.stderr
    );
}

#[test]
fn unknown_key_in_cluster_section() {
    let case = Case::new(|t| replace(t, "[raft]", "colour = \"red\"\n\n[raft]"));
    assert_rejected("unknown key", &case, &["colour"]);
}

#[test]
fn unknown_key_in_node_section() {
    let case = Case::new(|t| replace(t, "id = 2\n", "id = 2\nweight = 3\n"));
    assert_rejected("unknown node key", &case, &["weight"]);
}

#[test]
fn unknown_key_in_raft_section() {
    let case = Case::new(|t| {
        replace(
            t,
            "election_ticks = 10",
            "election_ticks = 10\npre_vote = false",
        )
    });
    assert_rejected("unknown raft key", &case, &["pre_vote"]);
}

#[test]
fn duplicate_id() {
    let case = Case::new(|t| replace(t, "id = 3\n", "id = 2\n"));
    assert_rejected("duplicate id", &case, &["duplicate", "id"]);
}

#[test]
fn duplicate_peer_address() {
    let case = Case::new(|t| t);
    let text = case.text();
    let addr_of = |id: u64| -> String {
        let key = format!("id = {id}\naddr = \"");
        let at = text.find(&key).expect("node") + key.len();
        text[at..].split('"').next().expect("addr").to_string()
    };
    let (a1, a3) = (addr_of(1), addr_of(3));
    std::fs::write(&case.file, text.replacen(&a3, &a1, 1)).expect("write");
    assert_rejected("duplicate addr", &case, &["duplicate", &a1]);
}

#[test]
fn duplicate_admin_address() {
    let case = Case::new(|t| t);
    let text = case.text();
    let admins: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("admin = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .collect();
    std::fs::write(&case.file, text.replacen(&admins[2], &admins[0], 1)).expect("write");
    assert_rejected("duplicate admin", &case, &["duplicate", &admins[0]]);
}

#[test]
fn unknown_node_id() {
    let case = Case::new(|t| t);
    assert_eq!(
        case.check().code,
        0,
        "test bug: the base file must be valid"
    );
    let f = case.run("42");
    assert_usage_error("unknown --node-id", &f, &["42"]);
}

#[test]
fn zero_durations() {
    for (field, from, to) in [
        (
            "heartbeat_interval",
            "heartbeat_interval = \"100ms\"",
            "heartbeat_interval = \"0s\"",
        ),
        (
            "quorum_wait_timeout",
            "quorum_wait_timeout = \"1s\"",
            "quorum_wait_timeout = \"0ms\"",
        ),
        (
            "tick_interval",
            "tick_interval = \"25ms\"",
            "tick_interval = \"0ms\"",
        ),
    ] {
        let case = Case::new(|t| replace(t, from, to));
        assert_rejected(&format!("zero {field}"), &case, &[field]);
    }
}

#[test]
fn out_of_range_durations_exit_2_naming_the_field() {
    for (field, from, to) in [
        // A 1 ns tick made a node spin a core and ignore SIGTERM.
        (
            "raft.tick_interval",
            "tick_interval = \"25ms\"",
            "tick_interval = \"1ns\"",
        ),
        (
            "raft.tick_interval",
            "tick_interval = \"25ms\"",
            "tick_interval = \"1min\"",
        ),
        (
            "cluster.peer_timeout",
            "peer_timeout = \"500ms\"",
            "peer_timeout = \"100000000000000s\"",
        ),
        (
            "cluster.quorum_wait_timeout",
            "quorum_wait_timeout = \"1s\"",
            "quorum_wait_timeout = \"2days\"",
        ),
        (
            "cluster.heartbeat_interval",
            "heartbeat_interval = \"100ms\"",
            "heartbeat_interval = \"1ms\"",
        ),
        (
            "raft.election_ticks",
            "election_ticks = 10",
            "election_ticks = 100000",
        ),
    ] {
        let case = Case::new(|t| replace(t, from, to));
        assert_rejected(to, &case, &[field, "out of range"]);
    }
}

#[test]
fn unparsable_durations() {
    for (field, from, to) in [
        (
            "peer_timeout",
            "peer_timeout = \"500ms\"",
            "peer_timeout = \"soon\"",
        ),
        (
            "heartbeat_interval",
            "heartbeat_interval = \"100ms\"",
            "heartbeat_interval = \"-5s\"",
        ),
        // Durations are strings; a bare number is a type error on that key.
        (
            "peer_timeout",
            "peer_timeout = \"500ms\"",
            "peer_timeout = 500",
        ),
    ] {
        let case = Case::new(|t| replace(t, from, to));
        assert_rejected(to, &case, &[field]);
    }
}

#[test]
fn peer_timeout_not_above_heartbeat_interval() {
    for to in ["peer_timeout = \"100ms\"", "peer_timeout = \"50ms\""] {
        let case = Case::new(|t| replace(t, "peer_timeout = \"500ms\"", to));
        assert_rejected(to, &case, &["peer_timeout", "heartbeat_interval"]);
    }
}

#[test]
fn election_ticks_not_above_heartbeat_ticks() {
    let case = Case::new(|t| replace(t, "election_ticks = 10", "election_ticks = 2"));
    assert_rejected("election_ticks = heartbeat_ticks", &case, &["election"]);
}

#[test]
fn missing_cluster_name() {
    let case = Case::new(|t| replace(t, "name = \"cfg\"\n", ""));
    assert_rejected("no name", &case, &["name"]);
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("nope.toml");
    let path = file.to_str().expect("utf-8");
    let f = run_bin(&["check", path], FAST);
    assert_usage_error("check on a missing file", &f, &["nope.toml"]);
    let f = run_bin(&["run", "--cluster", path, "--node-id", "1"], FAST);
    assert_usage_error("run on a missing file", &f, &["nope.toml"]);
}

#[test]
fn command_line_usage_errors() {
    let f = run_bin(&[], FAST);
    assert_eq!(f.code, 2, "no subcommand:\n{}", f.stderr);
    let f = run_bin(&["frobnicate"], FAST);
    assert_eq!(f.code, 2, "unknown subcommand:\n{}", f.stderr);
    let f = run_bin(&["run", "--node-id", "1"], FAST);
    assert_usage_error("run without --cluster", &f, &["--cluster"]);
    let case = Case::new(|t| t);
    let f = run_bin(&["run", "--cluster", case.path()], FAST);
    assert_usage_error("run without --node-id", &f, &["--node-id"]);
    let f = run_bin(&["run", "--cluster", case.path(), "--node-id", "one"], FAST);
    assert_usage_error("non-numeric --node-id", &f, &["one"]);
}

#[test]
fn a_relative_data_dir_is_relative_to_the_cluster_file_not_the_working_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("one.toml");
    let (addr, admin) = (common::free_addr(), common::free_addr());
    std::fs::write(
        &file,
        format!(
            "[cluster]\nname = \"rel\"\nheartbeat_interval = \"100ms\"\npeer_timeout = \"500ms\"\n\
             data_dir = \"state\"\n[[node]]\nid = 1\naddr = \"{addr}\"\nadmin = \"{admin}\"\n"
        ),
    )
    .expect("write cluster file");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let mut node = std::process::Command::new(common::BIN)
        .args(["run", "--node-id", "1", "--cluster"])
        .arg(&file)
        .current_dir(elsewhere.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run quorumd");
    let made = common::wait_until(common::WAIT, || {
        dir.path().join("state/node-1/raft.redb").is_file()
    });
    let _ = node.kill();
    let _ = node.wait();
    assert!(made, "no state under the file's directory");
    assert!(!elsewhere.path().join("state").exists());
}

#[test]
fn limits_are_parsed_and_shown_by_check_with_the_plaintext_warning() {
    let case = Case::new(|t| {
        format!(
            "{t}\n[limits]\nmax_response_bytes = \"2MiB\"\nmax_txn_reads = 500\n\
             max_buffered_bytes = \"8MiB\"\nmax_conns = 100\nmax_conns_per_client = 10\n\
             max_blocking_queries = 50\nanonymous_idle_timeout = \"500ms\"\n\
             peer_handshakes_per_address = 2\n"
        )
    });
    let f = case.check();
    assert_eq!(f.code, 0, "stdout:\n{}\nstderr:\n{}", f.stdout, f.stderr);
    for shown in [
        "max_response_bytes=2097152",
        "max_txn_reads=500",
        "max_buffered_bytes=8388608",
        "max_conns=100",
        "max_conns_per_client=10",
        "max_blocking_queries=50",
        "anonymous_idle_timeout=500ms",
        "peer_handshakes_per_address=2",
    ] {
        assert!(f.stdout.contains(shown), "{shown} not in:\n{}", f.stdout);
    }
    assert!(
        f.stdout
            .contains("the admin API and the KV store are open to anyone"),
        "a file without [tls] must say the API is open:\n{}",
        f.stdout
    );
    // Without the table: the defaults.
    let f = Case::new(|t| t).check();
    assert!(
        f.stdout.contains("max_response_bytes=16777216")
            && f.stdout.contains("max_conns_per_client=64"),
        "{}",
        f.stdout
    );
}

#[test]
fn bad_limits_exit_2_naming_the_field() {
    for (line, field, word) in [
        ("max_conns = 0", "limits.max_conns", "between 1"),
        (
            "max_conns_per_client = 100000",
            "limits.max_conns_per_client",
            "between 1",
        ),
        (
            "max_response_bytes = \"1KiB\"",
            "limits.max_response_bytes",
            "between",
        ),
        (
            "max_buffered_bytes = \"lots\"",
            "limits.max_buffered_bytes",
            "lots",
        ),
        ("max_txn_reads = 0", "limits.max_txn_reads", "between 1"),
        (
            "anonymous_idle_timeout = \"1h\"",
            "limits.anonymous_idle_timeout",
            "out of range",
        ),
        ("max_conns_per_host = 3", "max_conns_per_host", "unknown"),
        (
            "max_response_bytes = \"32MiB\"\nmax_buffered_bytes = \"16MiB\"",
            "limits.max_buffered_bytes",
            "at least",
        ),
    ] {
        let case = Case::new(|t| format!("{t}\n[limits]\n{line}\n"));
        assert_rejected(line, &case, &[field, word]);
    }
}
