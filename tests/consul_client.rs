//! "Compatible with Consul's KV API" means a real Consul client works
//! unchanged: these tests drive a 3-node cluster with py-consul, from PyPI,
//! without ACLs and with them (tokens through py-consul's `token=`), and with
//! the npm `consul` client.
//!
//! The test sets up its own throwaway virtualenv under `target/` (created
//! once, reused while it holds the pinned version) with `python3 -m venv`
//! and pip; nothing is installed by hand.

mod common;

/// The longest a client script may run: a sanity bound for a busy machine.
const SCRIPT_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Spec, TestCluster};

/// The client library and the version the test pins.
const PY_CONSUL: &str = "py-consul==1.8.0";

/// Tests run on threads of one process: one of them makes the virtualenv
/// or the `node_modules` while the others wait.
static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn venv() -> PathBuf {
    let _one = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-venv-py-consul");
    let python = dir.join("bin/python");
    let ready = dir.join(format!("{PY_CONSUL}.installed"));
    if ready.exists() {
        return python;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = std::fs::remove_dir_all(&dir);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        "python3 -m venv",
    );
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PY_CONSUL,
        ]),
        "pip install py-consul",
    );
    std::fs::write(&ready, b"").expect("mark the venv ready");
    python
}

/// Runs the client script `tests/clients/<script>` with `program`, the
/// admin address of every node as its arguments, and asserts that it exits
/// 0 having printed `OK`; `what` names the client in the failure.
fn run_client(c: &TestCluster, program: &Path, script: &str, env: &[(&str, &Path)], what: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let mut cmd = Command::new(program);
    cmd.arg(&script)
        .args(c.ids().iter().map(|&id| c.admin(id).to_string()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = common::run_within(&mut cmd, &format!("run the {what} script"), SCRIPT_LIMIT);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.code == 0 && stdout.trim() == "OK",
        "{what} failed against quorumd:\n{stdout}\n{stderr}\n{}",
        c.diagnostics()
    );
}

#[test]
fn py_consul_works_against_a_three_node_cluster_unchanged() {
    let python = venv();
    let mut c = TestCluster::new(Spec::new("py-consul", 3));
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    run_client(&c, &python, "pyconsul_kv.py", &[], "py-consul");
}

#[test]
fn py_consul_sessions_and_locks_work_unchanged() {
    let python = venv();
    let mut c = TestCluster::new(Spec::new("py-consul-sessions", 3));
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    run_client(
        &c,
        &python,
        "pyconsul_sessions.py",
        &[],
        "py-consul sessions",
    );
}

/// The npm `consul` client the session test pins.
const NPM_CONSUL: &str = "consul@2.0.1";

/// A throwaway `node_modules` under `target/` with the npm client (made
/// once, reused while it holds the pinned version).
fn node_modules() -> PathBuf {
    let _one = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    // Where `make node-deps` installs it too.
    let dir = target.join("node-consul");
    let ready = dir.join("node_modules/consul/package.json");
    if !ready.exists() {
        std::fs::create_dir_all(&dir).expect("make the npm dir");
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", NPM_CONSUL])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("npm: cannot run");
        assert!(
            out.status.success(),
            "npm install failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.join("node_modules")
}

#[test]
fn the_npm_consul_client_runs_sessions_and_locks_unchanged() {
    let modules = node_modules();
    let mut c = TestCluster::new(Spec::new("npm-consul-sessions", 3));
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    run_client(
        &c,
        Path::new("node"),
        "npmconsul_sessions.js",
        &[("NODE_PATH", &modules)],
        "the npm consul client",
    );
}

#[test]
fn py_consul_presents_acl_tokens_unchanged() {
    let python = venv();
    let mut c = TestCluster::new(Spec::new("py-consul-acl", 3));
    let mut file = std::fs::read_to_string(&c.config).expect("read the cluster file");
    file.push_str("\n[acl]\nenabled = true\ndefault_policy = \"deny\"\n");
    std::fs::write(&c.config, file).expect("write the cluster file");
    c.start_all();
    c.wait_for("a leader every node knows", || {
        c.ids()
            .iter()
            .all(|&id| c.get(id, "/ready").is_ok_and(|r| r.status == 200))
    });
    run_client(&c, &python, "pyconsul_acl.py", &[], "py-consul with tokens");
}
