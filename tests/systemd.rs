//! Running under systemd: what a `Type=notify` unit sees on its notify
//! socket, the journal's log format, and the unit file itself.
//!
//! The notify socket is the test's own Unix datagram socket, handed to the
//! node in `NOTIFY_SOCKET` exactly as systemd does. `systemd-analyze verify`
//! and the syscall-filter check run where those tools are installed, and
//! print why they skip otherwise.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The repository's unit file.
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/systemd/quorumd@.service"
);

// ---------------------------------------------------------------------------
// A notify socket of the test's own
// ---------------------------------------------------------------------------

/// A bound Unix datagram socket standing in for systemd's, and every line
/// received on it so far with its arrival time.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    lines: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(POLL_INTERVAL))
            .expect("socket timeout");
        NotifySocket {
            socket,
            path,
            _dir: dir,
            lines: Vec::new(),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    /// Receives until `cond` holds for the lines so far (true) or `timeout`
    /// passes (false).
    fn wait_for(&mut self, timeout: Duration, mut cond: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.texts()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.receive_one();
        }
    }

    /// Receives whatever is queued now.
    fn drain(&mut self) {
        while self.receive_one() {}
    }

    fn receive_one(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                let now = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    self.lines.push((now, line.to_string()));
                }
                true
            }
            Err(_) => false,
        }
    }

    fn texts(&self) -> Vec<String> {
        self.lines.iter().map(|(_, l)| l.clone()).collect()
    }

    fn position(&self, line: &str) -> Option<usize> {
        self.lines.iter().position(|(_, l)| l == line)
    }

    fn statuses(&self) -> Vec<String> {
        self.texts()
            .into_iter()
            .filter(|l| l.starts_with("STATUS="))
            .collect()
    }
}

fn has(lines: &[String], line: &str) -> bool {
    lines.iter().any(|l| l == line)
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

#[test]
fn ready_only_after_bootstrap_status_on_each_change_and_stopping_on_sigterm() {
    let mut cluster = TestCluster::of("notify", 3);
    let mut sock = NotifySocket::new();
    cluster.start_node_env(1, &[], &[("NOTIFY_SOCKET", sock.path())]);

    // Alone, node 1 cannot bootstrap: it reports that it is asking its
    // peers (it has no state yet), and is not ready.
    assert!(
        sock.wait_for(WAIT, |l| l.iter().any(|l| l.starts_with("STATUS="))),
        "no STATUS= from a starting node: {:?}\n{}",
        sock.texts(),
        cluster.diagnostics()
    );
    assert_eq!(
        sock.statuses()[0],
        format!("STATUS={}", quorumd::notify::ASKING_STATUS),
        "first status of a fresh node"
    );
    cluster.wait_for("node 1's admin API", || cluster.try_status(1).is_some());
    sock.wait_for(Duration::from_secs(1), |_| false);
    assert!(
        !has(&sock.texts(), "READY=1"),
        "READY=1 before quorum: {:?}",
        sock.texts()
    );
    assert_eq!(cluster.status(1)["bootstrap_complete"], false);

    cluster.start(&[2, 3]);
    assert!(
        sock.wait_for(WAIT, |l| has(l, "READY=1")),
        "no READY=1 after quorum: {:?}\n{}",
        sock.texts(),
        cluster.diagnostics()
    );
    // READY=1 is sent only once bootstrap is complete and a leader is known.
    let status = cluster.status(1);
    assert_eq!(status["bootstrap_complete"], true, "{status}");
    assert!(status["leader_id"].is_u64(), "{status}");

    // The last STATUS= line is what the node reports.
    let (leader, term) = cluster.wait_agreed_leader(&[1, 2, 3]);
    let role = if leader == 1 { "leader" } else { "follower" };
    let want = format!("STATUS=role={role} term={term} leader={leader}");
    let last_status_is = |lines: &[String], want: &str| {
        lines
            .iter()
            .rev()
            .find(|l| l.starts_with("STATUS="))
            .map(String::as_str)
            == Some(want)
    };
    assert!(
        sock.wait_for(WAIT, |l| last_status_is(l, &want)),
        "last status {:?}, want {want:?}; all: {:?}",
        sock.statuses().last(),
        sock.texts()
    );
    // One line per change, never the same line twice in a row.
    let statuses = sock.statuses();
    assert!(
        statuses.windows(2).all(|w| w[0] != w[1]),
        "repeated STATUS= lines: {statuses:?}"
    );

    cluster.signal(1, libc::SIGTERM);
    assert_eq!(cluster.wait_exit(1, WAIT), 0, "{}", cluster.stderr(1));
    sock.drain();
    let (ready, stopping) = (sock.position("READY=1"), sock.position("STOPPING=1"));
    assert!(
        matches!((ready, stopping), (Some(r), Some(s)) if r < s),
        "want READY=1 then STOPPING=1: {:?}",
        sock.texts()
    );
    assert!(
        !has(&sock.texts(), "WATCHDOG=1"),
        "watchdog pings without WATCHDOG_USEC: {:?}",
        sock.texts()
    );

    // A restarted node is ready once it follows a leader.
    let mut again = NotifySocket::new();
    cluster.start_node_env(1, &[], &[("NOTIFY_SOCKET", again.path())]);
    assert!(
        again.wait_for(WAIT, |l| has(l, "READY=1")),
        "no READY=1 from a restarted node: {:?}\n{}",
        again.texts(),
        cluster.diagnostics()
    );
    let status = cluster.status(1);
    assert!(status["leader_id"].is_u64(), "{status}");
    again.drain();
    let last = again.statuses().last().cloned().unwrap_or_default();
    assert!(
        !last.ends_with("leader=none"),
        "restarted node ready without a leader in its status: {:?}",
        again.texts()
    );
}

#[test]
fn watchdog_pings_every_half_watchdog_usec_of_its_own_pid_only() {
    const WATCHDOG: Duration = Duration::from_secs(1);
    const WINDOW: Duration = Duration::from_secs(4);
    let mut cluster = TestCluster::of("watchdog", 1);
    let mut sock = NotifySocket::new();
    let usec = WATCHDOG.as_micros().to_string();
    cluster.start_node_env(
        1,
        &[],
        &[("NOTIFY_SOCKET", sock.path()), ("WATCHDOG_USEC", &usec)],
    );
    // WATCHDOG_PID names another process: the watchdog is not this node's.
    let mut other = TestCluster::of("watchdog-other", 1);
    let mut other_sock = NotifySocket::new();
    other.start_node_env(
        1,
        &[],
        &[
            ("NOTIFY_SOCKET", other_sock.path()),
            ("WATCHDOG_USEC", &usec),
            ("WATCHDOG_PID", "1"),
        ],
    );

    assert!(
        sock.wait_for(WAIT, |l| has(l, "READY=1")),
        "no READY=1: {:?}\n{}",
        sock.texts(),
        cluster.diagnostics()
    );
    let from = Instant::now();
    sock.wait_for(WINDOW, |_| false);
    let pings: Vec<Instant> = sock
        .lines
        .iter()
        .filter(|(at, l)| l == "WATCHDOG=1" && *at >= from)
        .map(|(at, _)| *at)
        .collect();
    // Every 500 ms: 8 in 4 s. Generous bounds for a busy machine, but never
    // a burst, and never a gap that would let systemd's watchdog expire.
    assert!(
        (5..=10).contains(&pings.len()),
        "{} pings in {WINDOW:?} with WATCHDOG_USEC={usec}",
        pings.len()
    );
    let widest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest < WATCHDOG,
        "a {widest:?} gap between pings would trip a {WATCHDOG:?} watchdog"
    );

    other_sock.drain();
    assert!(
        has(&other_sock.texts(), "READY=1"),
        "{:?}",
        other_sock.texts()
    );
    assert!(
        !has(&other_sock.texts(), "WATCHDOG=1"),
        "pinged a watchdog of WATCHDOG_PID=1: {:?}",
        other_sock.texts()
    );
}

// ---------------------------------------------------------------------------
// Journal-style logs
// ---------------------------------------------------------------------------

/// `JOURNAL_STREAM` naming `path`, which is created if needed: systemd's
/// `<device>:<inode>` of the node's stderr.
fn journal_stream_of(path: &Path) -> String {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("create stderr file");
    let meta = std::fs::metadata(path).expect("stat stderr file");
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Whether `line` starts with env_logger's own timestamp, `[2026-...`.
fn has_timestamp(line: &str) -> bool {
    line.starts_with("[2") && line.get(11..12) == Some("T")
}

#[test]
fn journal_lines_carry_a_syslog_priority_and_no_timestamp() {
    let mut cluster = TestCluster::of("journal", 1);
    let stream = journal_stream_of(&cluster.stderr_path(1));
    cluster.start_node_env(1, &[], &[("JOURNAL_STREAM", &stream)]);
    cluster.wait_agreed_leader(&[1]);
    cluster.signal(1, libc::SIGTERM);
    assert_eq!(cluster.wait_exit(1, WAIT), 0, "{}", cluster.stderr(1));

    let log = cluster.stderr(1);
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let prefixed = line.len() > 3
            && line.starts_with('<')
            && (b'0'..=b'7').contains(&line.as_bytes()[1])
            && line.as_bytes()[2] == b'>';
        assert!(prefixed, "line without a <N> priority: {line:?}\n{log}");
        assert!(
            !has_timestamp(&line[3..]),
            "line with a timestamp: {line:?}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>bootstrap complete: leader=1")),
        "{log}"
    );
}

#[test]
fn journal_fatal_error_is_logged_at_error_priority() {
    let spec = Spec::new("journal-fatal", 2).quorum_wait("1s");
    let mut cluster = TestCluster::new(spec);
    let stream = journal_stream_of(&cluster.stderr_path(1));
    cluster.start_node_env(1, &[], &[("JOURNAL_STREAM", &stream)]);
    assert_eq!(cluster.wait_exit(1, WAIT), 3, "{}", cluster.stderr(1));
    let log = cluster.stderr(1);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("<3>quorumd: error: quorum not reached within 1s"),
        "{log}"
    );
}

#[test]
fn a_journal_stream_naming_another_file_keeps_the_plain_format() {
    let mut cluster = TestCluster::of("not-journal", 1);
    // Inherited from a parent whose stderr was the journal: not ours.
    let elsewhere = journal_stream_of(&cluster.dir.path().join("elsewhere"));
    cluster.start_node_env(1, &[], &[("JOURNAL_STREAM", &elsewhere)]);
    cluster.wait_agreed_leader(&[1]);
    cluster.signal(1, libc::SIGTERM);
    assert_eq!(cluster.wait_exit(1, WAIT), 0, "{}", cluster.stderr(1));
    let log = cluster.stderr(1);
    for line in log.lines() {
        assert!(
            has_timestamp(line),
            "line without a timestamp: {line:?}\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("bootstrap complete: leader=1")),
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// The unit file
// ---------------------------------------------------------------------------

/// The path of `program` on PATH, if it is installed.
fn find_program(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The host's systemd unit directory (the one holding `sysinit.target`).
fn host_unit_dir() -> Option<PathBuf> {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.join("sysinit.target").exists())
}

/// A root for `systemd-analyze verify --root`: the host's units (the
/// targets quorumd@.service depends on), `unit` as quorumd@.service, and
/// this build's binary as /usr/bin/quorumd.
fn unit_root(unit: &str, host_units: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("unit dir");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", host_units.display()))
        .arg(&units)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copying {} failed", host_units.display());
    std::fs::write(units.join("quorumd@.service"), unit).expect("write unit");
    std::fs::create_dir_all(root.path().join("usr/bin")).expect("bin dir");
    std::fs::copy(BIN, root.path().join("usr/bin/quorumd")).expect("copy binary");
    root
}

/// `systemd-analyze verify` of quorumd@1.service in `root`: its exit code
/// and everything it printed (it reports bad keys and values on stderr
/// while still exiting 0).
fn verify(analyze: &Path, root: &Path) -> (i32, String) {
    let out = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.display()))
        .arg("quorumd@1.service")
        .output()
        .expect("run systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (exit_code(out.status), text)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = find_program("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let Some(host_units) = host_unit_dir() else {
        eprintln!("skipped: no systemd unit directory with sysinit.target on this machine");
        return;
    };
    let unit = std::fs::read_to_string(UNIT).expect("read unit");
    let root = unit_root(&unit, &host_units);
    let (code, text) = verify(&analyze, root.path());
    assert!(
        code == 0 && text.trim().is_empty(),
        "systemd-analyze verify (exit {code}):\n{text}"
    );

    // The same check reports a broken copy, so its silence above means
    // something on this systemd version.
    let broken = unit.replace("RestartSec=5s", "RestartSec=soon");
    assert_ne!(broken, unit, "RestartSec=5s no longer in the unit");
    let root = unit_root(&broken, &host_units);
    let (_, text) = verify(&analyze, root.path());
    assert!(
        text.contains("soon"),
        "a bad RestartSec went unreported:\n{text}"
    );
}

#[test]
fn unit_sets_what_an_edge_box_needs() {
    let unit = std::fs::read_to_string(UNIT).expect("read unit");
    let settings: BTreeSet<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect();
    for want in [
        "Type=notify",
        "ExecStart=/usr/bin/quorumd run --cluster /etc/quorumd/cluster.toml --node-id %i",
        "ExecStartPre=-/usr/bin/quorumd check /etc/quorumd/cluster.toml",
        "StateDirectory=quorumd",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "User=quorumd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(settings.contains(want), "the unit lacks `{want}`");
    }
    // Every duration systemd waits on must cover what the node does.
    let seconds = |key: &str| -> u64 {
        let value = settings
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit lacks {key}="));
        value
            .strip_suffix('s')
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key}={value} is not whole seconds"))
    };
    assert!(seconds("RestartSec") >= 1, "restarts need a delay");
    assert!(
        seconds("TimeoutStopSec") >= 2,
        "shutdown is bounded by ~1 s"
    );
    // The example cluster file waits 30 s for quorum before exiting 3.
    assert!(seconds("TimeoutStartSec") > 30);
    assert!(seconds("WatchdogSec") >= 2);
}

// ---------------------------------------------------------------------------
// The unit's sandbox against what a node really calls
// ---------------------------------------------------------------------------

/// Expands a systemd syscall set (`@system-service`) into syscall names.
fn syscall_set(analyze: &Path, set: &str, into: &mut BTreeSet<String>) {
    let out = Command::new(analyze)
        .args(["syscall-filter", set])
        .output()
        .expect("run systemd-analyze syscall-filter");
    assert!(out.status.success(), "unknown syscall set {set}");
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            syscall_set(analyze, name, into);
        } else {
            into.insert(name.to_string());
        }
    }
}

/// The unit's `SystemCallFilter=` lines as (allowed, denied) syscall names.
fn unit_syscall_filter(analyze: &Path, unit: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for value in unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
    {
        let (set, names) = match value.strip_prefix('~') {
            Some(rest) => (&mut denied, rest),
            None => (&mut allowed, value),
        };
        for name in names.split_whitespace() {
            if name.starts_with('@') {
                syscall_set(analyze, name, set);
            } else {
                set.insert(name.to_string());
            }
        }
    }
    (allowed, denied)
}

/// Kills a traced node and its tracer on drop.
struct Traced {
    strace: Child,
    node_pid: Option<u32>,
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(pid) = self.node_pid {
            // SAFETY: kill(2) on the pid of the node our strace child started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

#[test]
fn every_syscall_and_socket_family_a_node_uses_is_allowed_by_the_unit() {
    let (Some(analyze), Some(strace)) = (find_program("systemd-analyze"), find_program("strace"))
    else {
        eprintln!("skipped: needs systemd-analyze and strace");
        return;
    };
    let unit = std::fs::read_to_string(UNIT).expect("read unit");
    let (allowed, denied) = unit_syscall_filter(&analyze, &unit);
    assert!(
        allowed.len() > 100 && !denied.is_empty(),
        "{allowed:?} {denied:?}"
    );

    // A node's whole life as the unit runs it: notify socket, watchdog,
    // journal check, bootstrap, the admin API, SIGTERM.
    let cluster = TestCluster::of("sandbox", 1);
    let mut sock = NotifySocket::new();
    let trace = cluster.dir.path().join("trace");
    let stderr = cluster.stderr_path(1);
    let stream = journal_stream_of(&stderr);
    let strace_child = Command::new(&strace)
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(BIN)
        .args(["run", "--node-id", "1", "--cluster"])
        .arg(&cluster.config)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", sock.path())
        .env("WATCHDOG_USEC", "200000")
        .env("JOURNAL_STREAM", &stream)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&stderr)
                .expect("stderr file"),
        )
        .spawn()
        .expect("spawn strace");
    let mut traced = Traced {
        node_pid: None,
        strace: strace_child,
    };
    assert!(
        sock.wait_for(WAIT, |l| has(l, "READY=1")),
        "no READY=1 under strace: {:?}\n{}",
        sock.texts(),
        cluster.diagnostics()
    );
    let pid = traced_child_pid(traced.strace.id());
    traced.node_pid = Some(pid);
    for path in [
        "/admin/cluster/status",
        "/admin/cluster/peers",
        "/metrics",
        "/ready",
    ] {
        let r = cluster.get(1, path).expect("admin API");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    sock.wait_for(Duration::from_millis(300), |_| false);
    // SAFETY: kill(2) on the node our strace child started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let mut status = None;
    wait_until(WAIT, || {
        status = traced.strace.try_wait().ok().flatten();
        status.is_some()
    });
    traced.node_pid = None;
    assert_eq!(status.map(exit_code), Some(0), "{}", cluster.stderr(1));

    let trace = std::fs::read_to_string(&trace).expect("read trace");
    let mut used = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in trace.lines() {
        // "PID name(args..." or "PID <... name resumed>..."
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let name: String = rest
            .strip_prefix("<... ")
            .unwrap_or(rest)
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        if let Some(args) = rest.strip_prefix("socket(") {
            families.insert(args.split(',').next().unwrap_or_default().to_string());
        }
        used.insert(name);
    }
    // The process starts through execve, which systemd allows before the
    // filter applies to the new program.
    used.remove("execve");
    assert!(
        used.contains("epoll_pwait") || used.contains("epoll_wait"),
        "{used:?}"
    );
    let refused: Vec<&String> = used
        .iter()
        .filter(|s| !allowed.contains(*s) || denied.contains(*s))
        .collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= refuses syscalls a node makes: {refused:?}"
    );
    let allowed_families: BTreeSet<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RestrictAddressFamilies="))
        .flat_map(str::split_whitespace)
        .collect();
    for family in &families {
        assert!(
            allowed_families.contains(family.as_str()),
            "a node opens {family} sockets, which RestrictAddressFamilies= refuses"
        );
    }
}

/// The pid of the process strace `strace_pid` started (its only child).
fn traced_child_pid(strace_pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
            .expect("read strace's children");
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("strace {strace_pid} has no child: {children:?}"))
}
