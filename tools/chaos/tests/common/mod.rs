//! Runs the real `quorumd-chaos` binary against the real `quorumd` binary,
//! and reads what it printed and left behind.
//!
//! Both binaries come from this workspace's `cargo test` build: the runner is
//! `CARGO_BIN_EXE_quorumd-chaos`, and the node is the `quorumd` built next
//! to it (the workspace's default members include the node, so `cargo test`
//! at the root builds it first). `CHAOS_QUORUMD` overrides the node binary.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const CHAOS: &str = env!("CARGO_BIN_EXE_quorumd-chaos");

/// The node binary the runs use.
pub fn quorumd() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAOS_QUORUMD") {
        return PathBuf::from(p);
    }
    let p = Path::new(CHAOS).with_file_name("quorumd");
    assert!(
        p.is_file(),
        "no quorumd binary at {} : run `cargo test` at the workspace root (or `cargo build -p quorumd`) first",
        p.display()
    );
    p
}

/// Fails with a clear sentence when the test cannot run here: the chaos
/// runner needs root for namespaces (CI runs as root; `make test` installs
/// iptables).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the chaos tests need root (network namespaces, iptables); run them as root, as CI does"
    );
}

/// The numbers of a final line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    pub ops: u64,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    pub faults: u64,
    pub violations: u64,
    pub max_recovery_ms: u64,
    pub seed: u64,
}

/// Parses `chaos: <ops> ops (<ok> ok, <failed> failed, <unknown> unknown),
/// <faults> faults, <violations> violations, max recovery <ms> ms, seed <seed>`,
/// strictly: any other shape is `None`.
pub fn parse_final(line: &str) -> Option<Final> {
    let rest = line.strip_prefix("chaos: ")?;
    let (ops, rest) = rest.split_once(" ops (")?;
    let (ok, rest) = rest.split_once(" ok, ")?;
    let (failed, rest) = rest.split_once(" failed, ")?;
    let (unknown, rest) = rest.split_once(" unknown), ")?;
    let (faults, rest) = rest.split_once(" faults, ")?;
    let (violations, rest) = rest.split_once(" violations, max recovery ")?;
    let (ms, rest) = rest.split_once(" ms, seed ")?;
    let n = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    Some(Final {
        ops: n(ops)?,
        ok: n(ok)?,
        failed: n(failed)?,
        unknown: n(unknown)?,
        faults: n(faults)?,
        violations: n(violations)?,
        max_recovery_ms: n(ms)?,
        seed: n(rest)?,
    })
}

/// A `quorumd-chaos run` with `args`, results in `out`.
pub fn command(out: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(CHAOS);
    c.arg("run")
        .arg("--quorumd")
        .arg(quorumd())
        .arg("--out")
        .arg(out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs to the end.
pub fn run(out: &Path, args: &[&str]) -> Output {
    command(out, args).output().expect("run quorumd-chaos")
}

/// The last line of stdout, which must be the final line.
pub fn final_of(o: &Output) -> Final {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap_or("");
    parse_final(last).unwrap_or_else(|| {
        panic!(
            "the last line is not the final chaos line: {last:?}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Network namespaces of the run with this pid that still exist.
pub fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("qchaos{pid}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills a child on drop (a test that fails midway leaves nothing running).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn final_lines_parse_strictly() {
    let f = parse_final("chaos: 10 ops (7 ok, 2 failed, 1 unknown), 8 faults, 0 violations, max recovery 312 ms, seed 42").unwrap();
    assert_eq!(
        (
            f.ops,
            f.ok,
            f.failed,
            f.unknown,
            f.faults,
            f.violations,
            f.max_recovery_ms,
            f.seed
        ),
        (10, 7, 2, 1, 8, 0, 312, 42)
    );
    assert!(parse_final("chaos: 10 ops (7 ok, 2 failed, 1 unknown), 8 faults, 0 violations, max recovery 312ms, seed 42").is_none());
    assert!(parse_final("chaos: x ops").is_none());
}
