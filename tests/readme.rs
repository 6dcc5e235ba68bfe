//! Every `sh` block of the README, so the guide cannot rot.
//!
//! Each command line is checked against what the repository really has: a
//! `make` target must be in the Makefile, a `quorumd` subcommand and each of
//! its `--flags` must be in the binary's `--help`. The blocks written for a
//! running local cluster (they name `clusters/cluster3.toml` or
//! `clusters/cluster3-tls.toml`) then run as written, line by line, in a
//! scratch copy of the repository's layout: the shipped cluster files with
//! their loopback ports moved to free ones (the same move applied to the
//! commands), the nodes started as `make cluster3` and `make cluster3-tls`
//! start them, and `quorumd` on `PATH`. A line must exit 0, or the code its
//! comment names (`# exit 1: ...`, whose text must be on stderr). On `curl`
//! and `quorumd kv` lines, the comment is what stdout starts with (up to a
//! `...` or a parenthesis).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_until, BIN, WAIT};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One line of a block, continuation lines joined.
#[derive(Debug, Clone)]
struct Line {
    /// The command, without its comment.
    command: String,
    /// The comment after it, if any.
    comment: Option<String>,
}

/// The `sh` blocks of the README, each with the heading it sits under.
fn blocks(readme: &str) -> Vec<(String, Vec<Line>)> {
    let mut out = Vec::new();
    let (mut heading, mut block): (String, Option<Vec<String>>) = (String::new(), None);
    for raw in readme.lines() {
        match &mut block {
            None if raw.trim_start().starts_with("```sh") => block = Some(Vec::new()),
            None if raw.starts_with('#') => heading = raw.trim_start_matches('#').trim().into(),
            None => {}
            Some(lines) if raw.trim_start().starts_with("```") => {
                out.push((heading.clone(), join(lines)));
                block = None;
            }
            Some(lines) => lines.push(raw.trim_start().to_string()),
        }
    }
    out
}

/// Joins `\` continuations and splits off each line's comment.
fn join(lines: &[String]) -> Vec<Line> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for l in lines {
        let (command, comment) = split_comment(l);
        if let Some(head) = command.trim_end().strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(command.trim());
        if !pending.trim().is_empty() {
            out.push(Line {
                command: std::mem::take(&mut pending).trim().to_string(),
                comment,
            });
        }
        pending.clear();
    }
    out
}

/// A line's command and its `# comment` (a `#` outside quotes, after a space).
fn split_comment(line: &str) -> (String, Option<String>) {
    let (mut single, mut double) = (false, false);
    let chars: Vec<char> = line.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (i == 0 || chars[i - 1].is_whitespace()) => {
                let command: String = chars[..i].iter().collect();
                let comment: String = chars[i + 1..].iter().collect();
                return (command, Some(comment.trim().to_string()));
            }
            _ => {}
        }
    }
    (line.to_string(), None)
}

/// The Makefile's targets.
fn make_targets() -> Vec<String> {
    let makefile = std::fs::read_to_string(Path::new(ROOT).join("Makefile")).expect("Makefile");
    makefile
        .lines()
        .filter(|l| !l.starts_with('\t') && !l.starts_with('#') && !l.contains(":="))
        .filter_map(|l| l.split_once(':').map(|(t, _)| t))
        .flat_map(|t| t.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn help(args: &[&str]) -> Option<String> {
    let out = Command::new(BIN).args(args).arg("--help").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks a command line against the repository: make targets, quorumd
/// subcommands and flags, and the tools a user is told to run.
fn check_static(line: &Line, targets: &[String]) {
    let words: Vec<&str> = line.command.split_whitespace().collect();
    let what = &line.command;
    match words.first().copied() {
        Some("make") => {
            for t in &words[1..] {
                assert!(
                    targets.iter().any(|x| x == t),
                    "README runs `make {t}`, which the Makefile lacks: {what}"
                );
            }
        }
        Some("quorumd") => {
            let mut path = vec![words[1]];
            if let Some(sub) = words.get(2).filter(|w| !w.starts_with('-')) {
                if help(&[words[1], sub]).is_some()
                    && matches!(words[1], "kv" | "member" | "snapshot")
                {
                    path.push(sub);
                }
            }
            let text = help(&path).unwrap_or_else(|| {
                panic!(
                    "README runs `quorumd {}`, which the binary lacks: {what}",
                    path.join(" ")
                )
            });
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(
                    text.contains(flag),
                    "README passes {flag} to `quorumd {}`, whose --help lacks it: {what}",
                    path.join(" ")
                );
            }
        }
        Some("export") => {
            // The quickstart's PATH is where `make build` puts the binary.
            assert!(
                what.contains("target/$(rustc -vV | sed -n 's/^host: //p')/release"),
                "{what}"
            );
            let makefile = std::fs::read_to_string(Path::new(ROOT).join("Makefile")).unwrap();
            assert!(makefile.contains("TARGET := $(shell rustc -vV | sed -n 's/^host: //p')"));
            assert!(makefile.contains("RELEASE_BIN := target/$(TARGET)/release/quorumd"));
        }
        Some("apt") => {
            let version = env!("CARGO_PKG_VERSION");
            assert!(
                what.contains(&format!("quorumd_{version}_")),
                "the package file name has version {version}: {what}"
            );
        }
        Some("systemctl") | Some("journalctl") => {
            assert!(what.contains("quorumd@"), "{what}");
            assert!(Path::new(ROOT)
                .join("packaging/systemd/quorumd@.service")
                .is_file());
        }
        Some(w) if w.contains('=') => {}
        Some("curl") | Some("cp") | Some("printf") => {}
        other => panic!("README runs {other:?}, which this test does not know: {what}"),
    }
}

/// A scratch copy of the layout the README's commands run in, with the
/// nodes of its local clusters.
struct Scratch {
    dir: tempfile::TempDir,
    /// Shipped port -> the free port that stands in for it.
    ports: BTreeMap<u16, u16>,
    children: Vec<Child>,
    path: String,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("quorumd-readme-")
            .tempdir()
            .expect("temp dir");
        let ports = [7101, 7102, 7103, 7104, 8101, 8102, 8103, 8104]
            .into_iter()
            .chain([7121, 7122, 7123, 8121, 8122, 8123])
            .map(|p| (p, free_port()))
            .collect();
        std::fs::create_dir_all(dir.path().join("clusters")).unwrap();
        let bin_dir = Path::new(BIN).parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let s = Scratch {
            dir,
            ports,
            children: Vec::new(),
            path,
        };
        for name in ["cluster3.toml", "cluster3-tls.toml"] {
            let text = std::fs::read_to_string(Path::new(ROOT).join("clusters").join(name))
                .expect("shipped cluster file");
            std::fs::write(s.dir.path().join("clusters").join(name), s.remap(&text)).unwrap();
        }
        s
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `text` with every shipped loopback port moved to its stand-in.
    fn remap(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (from, to) in &self.ports {
            for host in ["127.0.0.1", "localhost"] {
                text = text.replace(&format!("{host}:{from}"), &format!("{host}:{to}"));
            }
        }
        text
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.root())
            .env("PATH", &self.path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// Starts every node of `clusters/<name>.toml`, from the scratch root
    /// as `make` does, and waits until each is ready.
    fn start(&mut self, name: &str, admin_ports: &[u16], tls: bool) {
        let file = format!("clusters/{name}.toml");
        if tls {
            // As `make cluster3-tls` does: its TLS_CERTS.
            let makefile = std::fs::read_to_string(Path::new(ROOT).join("Makefile")).unwrap();
            assert!(makefile.contains("TLS_CERTS := target/clusters/cluster3-tls/certs"));
            let out = self
                .command(BIN)
                .args(["certs", "--cluster", &file, "--out"])
                .arg("target/clusters/cluster3-tls/certs")
                .output()
                .expect("quorumd certs");
            assert!(out.status.success(), "{out:?}");
        }
        for id in 1..=admin_ports.len() {
            let log = std::fs::File::create(self.root().join(format!("{name}-{id}.log"))).unwrap();
            let child = self
                .command(BIN)
                .args(["run", "--cluster", &file, "--node-id", &id.to_string()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start a node");
            self.children.push(child);
        }
        for port in admin_ports {
            let port = self.ports[port];
            let scheme = if tls { "-k https" } else { "http" };
            let ready = wait_until(WAIT, || {
                self.command("sh")
                    .arg("-c")
                    .arg(format!("curl -sf {scheme}://127.0.0.1:{port}/ready"))
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            assert!(ready, "node on {port} of {name} not ready");
        }
    }

    /// Runs one README line; `prelude` holds the block's earlier variable
    /// assignments.
    fn run(&mut self, prelude: &str, line: &Line) {
        let command = self.remap(&line.command);
        let script = format!("set -o pipefail\n{prelude}\n{command}");
        if let Some(background) = command.strip_suffix('&') {
            let script = format!("{prelude}\nexec {background}");
            let log = std::fs::File::create(self.root().join("background.log")).unwrap();
            let child = self
                .command("bash")
                .arg("-c")
                .arg(script)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("bash");
            self.children.push(child);
            return;
        }
        let out = self
            .command("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("bash");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let code = out.status.code().unwrap_or(-1);
        let comment = line.comment.as_deref().unwrap_or("");
        let (want_code, want_err) = match comment.strip_prefix("exit ") {
            Some(rest) => {
                let (n, text) = rest.split_once(':').unwrap_or((rest, ""));
                (n.trim().parse().expect("exit code"), text.trim())
            }
            None => (0, ""),
        };
        assert_eq!(
            code, want_code,
            "README line `{}` exited {code}:\n{stdout}\n{stderr}",
            line.command
        );
        assert!(
            stderr.contains(want_err),
            "README line `{}`: stderr lacks {want_err:?}:\n{stderr}",
            line.command
        );
        let checks_output = command.starts_with("curl") || command.starts_with("quorumd kv");
        if checks_output && want_code == 0 && !comment.is_empty() {
            let want = comment
                .split(" (")
                .next()
                .unwrap_or("")
                .trim_end_matches("...")
                .trim();
            assert!(
                stdout.trim_start().starts_with(want),
                "README line `{}` printed {stdout:?}, not {want:?}",
                line.command
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn every_readme_command_block_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README");
    let blocks = blocks(&readme);
    assert!(blocks.len() >= 6, "found {} sh blocks", blocks.len());
    let targets = make_targets();
    for (_, lines) in &blocks {
        for line in lines {
            check_static(line, &targets);
        }
    }

    let curl = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("curl").is_file()));
    assert!(
        curl,
        "the README's examples need curl: `make ui-deps` installs it"
    );
    let mut scratch = Scratch::new();
    scratch.start("cluster3", &[8101, 8102, 8103], false);
    scratch.start("cluster3-tls", &[8121, 8122, 8123], true);
    let mut ran = Vec::new();
    for (heading, lines) in &blocks {
        let text: String = lines.iter().map(|l| l.command.as_str()).collect();
        if !text.contains("clusters/cluster3.toml") && !text.contains("clusters/cluster3-tls.toml")
        {
            continue;
        }
        let mut prelude = String::new();
        for line in lines {
            scratch.run(&prelude, line);
            let first = line.command.split_whitespace().next().unwrap_or("");
            if first.contains('=') || first == "export" {
                prelude.push_str(&scratch.remap(&line.command));
                prelude.push('\n');
            }
        }
        ran.push(heading.clone());
    }
    for must in ["Quickstart", "TLS", "Membership"] {
        assert!(
            ran.iter().any(|h| h == must),
            "no block of {must:?} ran: {ran:?}"
        );
    }

    // The membership walk-through grew the cluster: node 4 votes.
    let member_list = || {
        scratch
            .command(BIN)
            .args(["member", "list", "--cluster", "clusters/cluster3.toml"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let grown = wait_until(Duration::from_secs(30), || {
        member_list()
            .lines()
            .any(|l| l.split_whitespace().next() == Some("4") && l.contains("voter"))
    });
    assert!(grown, "node 4 is not a voter:\n{}", member_list());
}

#[test]
fn the_readme_links_only_to_files_in_the_repository() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README");
    let lines = readme.lines().count();
    assert!(lines <= 450, "README.md is {lines} lines");
    for (i, _) in readme.match_indices("](") {
        let target: String = readme[i + 2..].chars().take_while(|&c| c != ')').collect();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        assert!(
            PathBuf::from(ROOT).join(&target).exists(),
            "README links to {target}, which is not in the repository"
        );
    }
    // Every document it names (`NAME.md`) is one a user has: in the
    // repository's root or docs/.
    for word in readme.split(|c: char| c.is_whitespace() || "`()[]\"',;:".contains(c)) {
        let word = word.trim_end_matches('.');
        if word.ends_with(".md") && !word.contains("://") {
            let root = PathBuf::from(ROOT);
            assert!(
                root.join(word).exists() || root.join("docs").join(word).exists(),
                "README names {word}, which is not in the repository"
            );
        }
    }
    assert!(
        !readme.contains("issue "),
        "README refers to an issue number"
    );
}
