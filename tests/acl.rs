//! ACL tokens and policies, as a client sees them: Consul's ACL API, the
//! three ways to present a token, enforcement on KV, txn and the members
//! API, revocation on every node, expiry, the bootstrap and its reset, the
//! CLI's `--token`/`QUORUMD_TOKEN`, and tokens that outlive restarts,
//! snapshot installs and leader changes.

mod common;

/// The longest a client script may run: a sanity bound for a busy machine.
const SCRIPT_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

use std::io::Write as _;
use std::time::Duration;

use common::{request_with_headers, Response, Spec, TestCluster};
use serde_json::{json, Value};

const IDS: [u64; 3] = [1, 2, 3];
const TIMEOUT: Duration = Duration::from_secs(30);

/// A 3-node cluster with `[acl]` (`default_policy` as given), formed: every
/// node answers `/ready` with the same leader (the status routes need a
/// token once the default is deny).
fn cluster(name: &str, default_policy: &str, spec: impl FnOnce(Spec) -> Spec) -> TestCluster {
    let mut c = TestCluster::new(spec(Spec::new(name, 3)));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&c.config)
        .expect("open the cluster file");
    writeln!(
        f,
        "\n[acl]\nenabled = true\ndefault_policy = \"{default_policy}\""
    )
    .expect("write [acl]");
    drop(f);
    c.start_all();
    wait_ready(&c);
    c
}

fn wait_ready(c: &TestCluster) {
    c.wait_for("every node ready with one leader", || {
        let leaders: Vec<Option<u64>> = IDS
            .iter()
            .map(|&id| match c.get(id, "/ready") {
                Ok(r) if r.status == 200 => r.json().ok().and_then(|v| v["leader_id"].as_u64()),
                _ => None,
            })
            .collect();
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    });
}

/// The leader, as the first node that answers `/ready` names it.
fn leader(c: &TestCluster) -> u64 {
    IDS.iter()
        .find_map(|&id| {
            let r = c.get(id, "/ready").ok()?;
            r.json().ok()?["leader_id"].as_u64()
        })
        .expect("a node names the leader")
}

/// `METHOD path` on node `id` with the token in `X-Consul-Token`.
fn with(c: &TestCluster, id: u64, token: &str, method: &str, path: &str, body: &[u8]) -> Response {
    req(c, id, &[("X-Consul-Token", token)], method, path, body)
}

fn req(
    c: &TestCluster,
    id: u64,
    headers: &[(&str, &str)],
    method: &str,
    path: &str,
    body: &[u8],
) -> Response {
    request_with_headers(c.admin(id), None, method, path, headers, body, TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path} on node {id}: {e}"))
}

fn json_of(r: &Response) -> Value {
    r.json()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.body))
}

fn ok(r: Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    json_of(&r)
}

fn denied(r: &Response, what: &str) {
    assert_eq!(r.status, 403, "{what}: {} {}", r.status, r.body);
    assert_eq!(r.body.trim(), "Permission denied", "{what}");
}

fn policy(c: &TestCluster, root: &str, name: &str, rules: Value) -> String {
    let body = json!({"Name": name, "Rules": rules.to_string()}).to_string();
    let v = ok(with(c, 1, root, "PUT", "/v1/acl/policy", body.as_bytes()));
    v["ID"].as_str().unwrap().to_string()
}

/// A token linked to the named policies: (accessor, secret).
fn token(c: &TestCluster, root: &str, policies: &[&str], extra: Value) -> (String, String) {
    let mut body = json!({
        "Description": "test",
        "Policies": policies.iter().map(|p| json!({"Name": p})).collect::<Vec<_>>(),
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let v = ok(with(
        c,
        leader(c),
        root,
        "PUT",
        "/v1/acl/token",
        body.to_string().as_bytes(),
    ));
    (
        v["AccessorID"].as_str().unwrap().to_string(),
        v["SecretID"].as_str().unwrap().to_string(),
    )
}

fn bootstrap(c: &TestCluster, id: u64) -> String {
    let v = ok(c.call(id, "PUT", "/v1/acl/bootstrap", b""));
    assert_eq!(v["Policies"][0]["Name"], "global-management");
    v["SecretID"].as_str().unwrap().to_string()
}

fn cli(c: &TestCluster, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let file = c.config.to_str().unwrap().to_string();
    let mut all: Vec<&str> = args.to_vec();
    let at = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    all.splice(at..at.min(all.len()), ["--cluster", file.as_str()]);
    all.retain(|a| *a != "--");
    let mut cmd = std::process::Command::new(c.bin());
    cmd.args(&all)
        .env_remove("QUORUMD_TOKEN")
        .env_remove("QUORUMD_CLUSTER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run quorumd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tokens_and_policies_decide_every_request() {
    let c = cluster("acl-deny", "deny", |s| s);

    // Open routes stay open; everything else needs a token.
    assert_eq!(c.call(2, "GET", "/health", b"").status, 200);
    assert_eq!(c.call(2, "GET", "/ready", b"").status, 200);
    assert_eq!(c.call(2, "GET", "/metrics", b"").status, 200);
    denied(&c.call(2, "GET", "/v1/kv/x", b""), "a read without a token");
    denied(
        &c.call(2, "PUT", "/v1/kv/x", b"1"),
        "a write without a token",
    );
    denied(
        &c.call(2, "GET", "/admin/cluster/status", b""),
        "the status",
    );
    denied(
        &c.call(2, "GET", "/admin/cluster/members", b""),
        "the members API",
    );
    // The ACL routes need a management token.
    let r = c.call(3, "GET", "/v1/acl/tokens", b"");
    denied(&r, "listing tokens without a token");

    // Bootstrap once; a second gets 403 with the reset index.
    let root = bootstrap(&c, 3);
    let again = c.call(1, "PUT", "/v1/acl/bootstrap", b"");
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(
        again
            .body
            .contains("ACL bootstrap no longer allowed (reset index: "),
        "{}",
        again.body
    );
    let bogus = "3a0b3fa1-5b6d-4e8e-9c4f-111111111111";
    assert_eq!(
        with(&c, 1, bogus, "GET", "/v1/kv/x", b"").body.trim(),
        "ACL not found"
    );
    assert_eq!(
        with(&c, 1, &root, "GET", "/admin/cluster/status", b"").status,
        200
    );

    // Policies in Consul's JSON form, HCL refused with a clear sentence.
    policy(
        &c,
        &root,
        "gateway-a",
        json!({"key_prefix": {"devices/a/": {"policy": "write"}}}),
    );
    policy(
        &c,
        &root,
        "read-all",
        json!({"key_prefix": {"": {"policy": "read"}}}),
    );
    let hcl = json!({"Name": "hcl", "Rules": "key_prefix \"x/\" { policy = \"read\" }"});
    let r = with(
        &c,
        1,
        &root,
        "PUT",
        "/v1/acl/policy",
        hcl.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("JSON form"), "{}", r.body);
    let dup = json!({"Name": "read-all", "Rules": ""});
    let r = with(
        &c,
        1,
        &root,
        "PUT",
        "/v1/acl/policy",
        dup.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "a duplicate name: {}", r.body);

    let (gw_accessor, gw) = token(&c, &root, &["gateway-a"], json!({}));
    let (_, ro) = token(&c, &root, &["read-all"], json!({}));

    // The gateway writes devices/a/ only, with any way of presenting it.
    let bearer = format!("Bearer {gw}");
    for (how, headers, path) in [
        (
            "X-Consul-Token",
            vec![("X-Consul-Token", gw.as_str())],
            "/v1/kv/devices/a/t1".to_string(),
        ),
        (
            "Authorization",
            vec![("Authorization", bearer.as_str())],
            "/v1/kv/devices/a/t2".to_string(),
        ),
        ("?token=", vec![], format!("/v1/kv/devices/a/t3?token={gw}")),
    ] {
        let r = req(&c, 2, &headers, "PUT", &path, b"21.5");
        assert_eq!((r.status, r.body.trim()), (200, "true"), "{how}");
    }
    denied(
        &with(&c, 2, &gw, "PUT", "/v1/kv/devices/b/t1", b"1"),
        "devices/b/",
    );
    denied(&with(&c, 3, &gw, "PUT", "/v1/kv/config/x", b"1"), "config/");
    denied(
        &with(&c, 3, &gw, "DELETE", "/v1/kv/devices/?recurse", b""),
        "a recursive delete above its prefix",
    );
    denied(
        &with(&c, 3, &gw, "GET", "/v1/kv/config/x", b""),
        "a read outside",
    );

    // Read-only: reads, never writes.
    assert_eq!(
        ok(with(&c, 1, &root, "PUT", "/v1/kv/devices/b/secret", b"s")),
        json!(true)
    );
    assert_eq!(
        ok(with(&c, 1, &root, "PUT", "/v1/kv/config/x", b"c")),
        json!(true)
    );
    let r = with(&c, 3, &ro, "GET", "/v1/kv/config/x?raw", b"");
    assert_eq!((r.status, r.body.as_str()), (200, "c"));
    denied(
        &with(&c, 3, &ro, "PUT", "/v1/kv/config/x", b"2"),
        "a read-only write",
    );
    denied(
        &with(&c, 3, &ro, "DELETE", "/v1/kv/config/x", b""),
        "a read-only delete",
    );

    // A listing shows only what the token may read.
    let keys = |token: &str, path: &str| -> Vec<String> {
        let v = ok(with(&c, 1, token, "GET", path, b""));
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e.get("Key").unwrap_or(e).as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        keys(&gw, "/v1/kv/devices/?recurse"),
        ["devices/a/t1", "devices/a/t2", "devices/a/t3"]
    );
    assert_eq!(
        keys(&gw, "/v1/kv/?keys"),
        ["devices/a/t1", "devices/a/t2", "devices/a/t3"]
    );
    assert_eq!(keys(&root, "/v1/kv/devices/?keys").len(), 4);
    assert_eq!(
        with(&c, 1, &gw, "GET", "/v1/kv/config/?recurse", b"").status,
        404,
        "a listing of nothing readable is empty"
    );

    // A txn with one forbidden op fails whole.
    let txn = json!([
        {"KV": {"Verb": "set", "Key": "devices/a/ok", "Value": "MQ=="}},
        {"KV": {"Verb": "set", "Key": "devices/b/no", "Value": "MQ=="}},
    ]);
    denied(
        &with(&c, 2, &gw, "PUT", "/v1/txn", txn.to_string().as_bytes()),
        "a txn with a forbidden key",
    );
    assert_eq!(
        with(&c, 1, &root, "GET", "/v1/kv/devices/a/ok", b"").status,
        404
    );
    let allowed = json!([{"KV": {"Verb": "set", "Key": "devices/a/ok", "Value": "MQ=="}}]);
    let r = with(&c, 2, &gw, "PUT", "/v1/txn", allowed.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);

    // The members API refuses a non-operator; a management token may.
    denied(
        &with(&c, 1, &ro, "GET", "/admin/cluster/members", b""),
        "members, read-only",
    );
    let add = json!({"id": 9, "addr": "127.0.0.1:1", "admin": "127.0.0.1:2"}).to_string();
    denied(
        &with(&c, 2, &gw, "POST", "/admin/cluster/members", add.as_bytes()),
        "adding a member without operator",
    );
    assert_eq!(
        with(&c, 2, &root, "GET", "/admin/cluster/members", b"").status,
        200
    );
    denied(
        &with(&c, 1, &gw, "GET", "/v1/acl/tokens", b""),
        "the ACL API, not management",
    );

    // token/self names the token presented.
    let me = ok(with(&c, 3, &gw, "GET", "/v1/acl/token/self", b""));
    assert_eq!(me["AccessorID"], gw_accessor);
    assert!(me.get("SecretID").is_none(), "the secret is not kept: {me}");
    let all = ok(with(&c, 3, &root, "GET", "/v1/acl/tokens", b""));
    assert!(all.as_array().unwrap().len() >= 4, "{all}");

    // An expired token is refused.
    // (5 s: its first use must fall within it, even on a starved machine.)
    let made = std::time::Instant::now();
    let (_, brief) = token(&c, &root, &["read-all"], json!({"ExpirationTTL": "5s"}));
    assert_eq!(
        with(&c, 1, &brief, "GET", "/v1/kv/config/x", b"").status,
        200
    );
    std::thread::sleep(Duration::from_millis(5500).saturating_sub(made.elapsed()));
    let r = with(&c, 1, &brief, "GET", "/v1/kv/config/x", b"");
    assert_eq!((r.status, r.body.trim()), (403, "ACL not found"));

    // A revoked token is refused at once on every node.
    let leader = leader(&c);
    let r = with(
        &c,
        leader,
        &root,
        "DELETE",
        &format!("/v1/acl/token/{gw_accessor}"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for id in IDS {
        let r = with(&c, id, &gw, "PUT", "/v1/kv/devices/a/t1", b"x");
        assert_eq!(
            (r.status, r.body.trim()),
            (403, "ACL not found"),
            "node {id}"
        );
        let r = with(&c, id, &gw, "GET", "/v1/kv/devices/a/t1", b"");
        assert_eq!(r.status, 403, "node {id}");
    }

    // Secrets are kept only as hashes: no file of any node holds one.
    for id in IDS {
        for entry in walk(&c.data_dir(id)) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            for secret in [&root, &gw, &ro] {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{} holds a secret in clear",
                    entry.display()
                );
            }
        }
    }

    // The CLI: --token or QUORUMD_TOKEN; without one, a clear refusal.
    let (code, _, err) = cli(&c, &["kv", "get", "--", "config/x"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("--token"),
        "{err}"
    );
    let (code, out, err) = cli(&c, &["kv", "get", "--", "--token", &ro, "config/x"], &[]);
    assert_eq!((code, out.trim()), (0, "c"), "{err}");
    let (code, out, err) = cli(
        &c,
        &["kv", "get", "--", "config/x"],
        &[("QUORUMD_TOKEN", &ro)],
    );
    assert_eq!((code, out.trim()), (0, "c"), "{err}");
    let (code, _, err) = cli(&c, &["member", "list", "--"], &[("QUORUMD_TOKEN", &ro)]);
    assert_eq!(code, 1);
    assert!(err.contains("Permission denied"), "{err}");
    let (code, out, err) = cli(&c, &["member", "list", "--"], &[("QUORUMD_TOKEN", &root)]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(
        &c,
        &["acl", "token", "create", "--", "--policy-name", "gateway-a"],
        &[("QUORUMD_TOKEN", &root)],
    );
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let cli_secret = created["SecretID"].as_str().unwrap();
    let r = with(&c, 1, cli_secret, "PUT", "/v1/kv/devices/a/cli", b"1");
    assert_eq!(r.status, 200, "{}", r.body);

    // The anonymous token's policies apply without a token.
    let anon = "00000000-0000-0000-0000-000000000002";
    let body = json!({"Policies": [{"Name": "read-all"}]}).to_string();
    ok(with(
        &c,
        1,
        &root,
        "PUT",
        &format!("/v1/acl/token/{anon}"),
        body.as_bytes(),
    ));
    assert_eq!(c.call(2, "GET", "/v1/kv/config/x?raw", b"").body, "c");
    denied(
        &c.call(2, "PUT", "/v1/kv/config/x", b"2"),
        "anonymous write",
    );

    // The documented reset: the reset index in the node's reset file
    // allows one more bootstrap.
    let again = c.call(1, "PUT", "/v1/acl/bootstrap", b"");
    let index = again
        .body
        .split("reset index: ")
        .nth(1)
        .unwrap()
        .trim_end_matches([')', '\n']);
    std::fs::write(c.data_dir(1).join("acl-bootstrap-reset"), index).unwrap();
    let root2 = bootstrap(&c, 1);
    assert_ne!(root2, root);
    assert!(!c.data_dir(1).join("acl-bootstrap-reset").exists());
    assert_eq!(c.call(1, "PUT", "/v1/acl/bootstrap", b"").status, 403);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn tokens_survive_restart_snapshot_install_and_leader_change() {
    let mut c = cluster("acl-keep", "allow", |s| s.raft("snapshot_entries = 50"));
    let root = bootstrap(&c, 1);
    policy(
        &c,
        &root,
        "read-all",
        json!({"key_prefix": {"": {"policy": "read"}}}),
    );
    let (_, ro) = token(&c, &root, &["read-all"], json!({}));
    c.kv_put(1, "k", b"v");
    // The token's policy holds (default allow would let it write).
    let holds = |c: &TestCluster, id: u64, what: &str| {
        let r = with(c, id, &ro, "GET", "/v1/kv/k?raw", b"");
        assert_eq!((r.status, r.body.as_str()), (200, "v"), "{what}: node {id}");
        denied(&with(c, id, &ro, "PUT", "/v1/kv/k", b"w"), what);
        assert_eq!(
            with(c, id, &root, "GET", "/v1/acl/token/self", b"").status,
            200,
            "{what}: node {id}"
        );
    };
    for id in IDS {
        holds(&c, id, "at first");
    }

    // A node that was down past the compacted log gets them by snapshot.
    let l = leader(&c);
    let down = IDS.into_iter().find(|&i| i != l).unwrap();
    c.signal(down, libc::SIGTERM);
    assert_eq!(c.wait_exit(down, TIMEOUT), 0);
    let (_, late) = token(&c, &root, &["read-all"], json!({}));
    for i in 0..150 {
        assert_eq!(c.kv_put(l, &format!("fill/{i}"), b"x").status, 200);
    }
    let from = c.stderr(down).len();
    c.start_node(down);
    wait_ready(&c);
    c.wait_for("the restarted node has the late token", || {
        with(&c, down, &late, "GET", "/v1/kv/k?raw&stale", b"").status == 200
    });
    assert!(
        c.stderr_since(down, from)
            .contains("installed a snapshot at index"),
        "{}",
        c.stderr_since(down, from)
    );
    holds(&c, down, "after a snapshot install");

    // Every node restarted.
    for id in IDS {
        c.signal(id, libc::SIGTERM);
        assert_eq!(c.wait_exit(id, TIMEOUT), 0);
    }
    c.start_all();
    wait_ready(&c);
    for id in IDS {
        holds(&c, id, "after a restart");
    }

    // The leader stops: the others still know every token.
    let l = leader(&c);
    c.signal(l, libc::SIGTERM);
    assert_eq!(c.wait_exit(l, TIMEOUT), 0);
    let rest: Vec<u64> = IDS.into_iter().filter(|&i| i != l).collect();
    c.wait_for("a new leader", || {
        rest.iter().all(|&id| {
            c.get(id, "/ready").is_ok_and(|r| {
                r.status == 200
                    && r.json()
                        .ok()
                        .and_then(|v| v["leader_id"].as_u64())
                        .is_some_and(|n| n != l)
            })
        })
    });
    for id in rest {
        holds(&c, id, "after a leader change");
    }
}

#[test]
fn metrics_can_need_a_token() {
    let mut c = TestCluster::new(Spec::new("acl-metrics", 1));
    let mut file = std::fs::read_to_string(&c.config).unwrap();
    file.push_str(
        "\n[acl]\nenabled = true\ndefault_policy = \"deny\"\nmetrics_need_token = true\n",
    );
    std::fs::write(&c.config, file).unwrap();
    c.start_all();
    c.wait_for("ready", || {
        c.get(1, "/ready").is_ok_and(|r| r.status == 200)
    });
    denied(
        &c.call(1, "GET", "/metrics", b""),
        "/metrics without a token",
    );
    assert_eq!(c.call(1, "GET", "/health", b"").status, 200);
    let root = ok(c.call(1, "PUT", "/v1/acl/bootstrap", b""))["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let r = with(&c, 1, &root, "GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("quorumd_"), "{}", r.body);
}

#[test]
fn acls_off_leave_the_acl_api_disabled_and_every_route_open() {
    let mut c = TestCluster::new(Spec::new("acl-off", 1));
    c.start_all();
    c.wait_agreed_leader(&[1]);
    let r = c.call(1, "PUT", "/v1/acl/bootstrap", b"");
    assert_eq!((r.status, r.body.trim()), (401, "ACL support disabled"));
    assert_eq!(c.kv_put(1, "k", b"v").status, 200);
    // A token is ignored, as before.
    assert_eq!(
        with(&c, 1, "whatever", "GET", "/v1/kv/k?raw", b"").body,
        "v"
    );
}

/// Where `make node-deps` installs the npm `consul` client.
fn node_modules() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("node-consul/node_modules")
}

#[test]
fn the_npm_consul_client_presents_tokens_unchanged() {
    let modules = node_modules();
    assert!(
        modules.join("consul/package.json").exists(),
        "the npm consul client is not installed in {}: `make node-deps` installs it (needs node and npm)",
        modules.display()
    );
    let c = cluster("acl-node", "deny", |s| s);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node_consul_acl.js");
    let out = common::run_within(
        std::process::Command::new("node")
            .arg(&script)
            .args(IDS.iter().map(|&id| c.admin(id).to_string()))
            .env("NODE_PATH", &modules),
        "run node (`make node-deps` needs node and npm)",
        SCRIPT_LIMIT,
    );
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.code == 0 && stdout.trim() == "OK",
        "the npm consul client failed against quorumd:\n{stdout}\n{stderr}\n{}",
        c.diagnostics()
    );
}

#[test]
fn with_tls_the_certificate_admits_and_the_token_decides() {
    let c = cluster("acl-tls", "deny", |s| s.with_tls());
    let ask = |tls: Option<&common::Https>, headers: &[(&str, &str)], method: &str, path: &str| {
        request_with_headers(c.admin(1), tls, method, path, headers, b"1", TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let with_cert = c.https(1).expect("a TLS cluster");
    let without_cert = common::Https {
        config: common::tls_client(
            &c.dir.path().join(common::CERTS_SUBDIR).join("ca.pem"),
            None,
        ),
        server_name: with_cert.server_name.clone(),
    };
    let root = ok(ask(Some(&with_cert), &[], "PUT", "/v1/acl/bootstrap"))["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let token = [("X-Consul-Token", root.as_str())];
    // No certificate: 401 whatever the token.
    let r = ask(Some(&without_cert), &token, "PUT", "/v1/kv/k");
    assert_eq!(r.status, 401, "{}", r.body);
    // A certificate without a token: the anonymous token's rights (none).
    denied(
        &ask(Some(&with_cert), &[], "PUT", "/v1/kv/k"),
        "a certificate alone",
    );
    // Both: the token's rights.
    let r = ask(Some(&with_cert), &token, "PUT", "/v1/kv/k");
    assert_eq!((r.status, r.body.trim()), (200, "true"), "{}", r.body);
    // The CLI presents client_cert and --token together.
    let (code, out, err) = cli(&c, &["kv", "get", "--", "--token", &root, "k"], &[]);
    assert_eq!((code, out.trim()), (0, "1"), "{err}");
    let (code, _, err) = cli(&c, &["kv", "get", "--", "k"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn sessions_and_backups_need_their_rights() {
    let mut c = TestCluster::new(Spec::new("acl-sessions", 1));
    let mut file = std::fs::read_to_string(&c.config).unwrap();
    file.push_str("\n[acl]\nenabled = true\ndefault_policy = \"deny\"\n");
    std::fs::write(&c.config, file).unwrap();
    c.start_all();
    c.wait_for("ready", || {
        c.get(1, "/ready").is_ok_and(|r| r.status == 200)
    });
    let root = bootstrap(&c, 1);
    policy(
        &c,
        &root,
        "sessions-read",
        json!({"session_prefix": {"": {"policy": "read"}}, "key_prefix": {"job/": {"policy": "write"}}}),
    );
    policy(
        &c,
        &root,
        "sessions-write",
        json!({"session": {"node-1": {"policy": "write"}}, "key_prefix": {"job/": {"policy": "write"}}}),
    );
    let (_, reader) = token(&c, &root, &["sessions-read"], json!({}));
    let (_, writer) = token(&c, &root, &["sessions-write"], json!({}));
    let create = br#"{"Name": "job", "TTL": "30s"}"#;

    denied(
        &c.call(1, "PUT", "/v1/session/create", create),
        "a session without a token",
    );
    denied(
        &with(&c, 1, &reader, "PUT", "/v1/session/create", create),
        "a session created with read rights",
    );
    let id = ok(with(&c, 1, &writer, "PUT", "/v1/session/create", create))["ID"]
        .as_str()
        .unwrap()
        .to_string();
    // The reader sees it; a token without session rules sees nothing.
    let seen = ok(with(&c, 1, &reader, "GET", "/v1/session/list", b""));
    assert_eq!(seen.as_array().map(Vec::len), Some(1), "{seen}");
    let hidden = ok(c.call(1, "GET", "/v1/session/list", b""));
    assert_eq!(hidden, json!([]), "an anonymous listing shows no session");
    denied(
        &with(
            &c,
            1,
            &reader,
            "PUT",
            &format!("/v1/session/renew/{id}"),
            b"",
        ),
        "a renew with read rights",
    );
    denied(
        &with(
            &c,
            1,
            &reader,
            "PUT",
            &format!("/v1/session/destroy/{id}"),
            b"",
        ),
        "a destroy with read rights",
    );
    let acquired = with(
        &c,
        1,
        &writer,
        "PUT",
        &format!("/v1/kv/job/leader?acquire={id}"),
        b"me",
    );
    assert_eq!((acquired.status, acquired.body.trim()), (200, "true"));
    denied(
        &with(
            &c,
            1,
            &writer,
            "PUT",
            &format!("/v1/kv/other?acquire={id}"),
            b"me",
        ),
        "an acquire outside the token's keys",
    );
    ok(with(
        &c,
        1,
        &writer,
        "PUT",
        &format!("/v1/session/destroy/{id}"),
        b"",
    ));

    // A backup holds every key and the ACL rows: a management token only.
    denied(
        &with(&c, 1, &writer, "GET", "/v1/snapshot", b""),
        "a backup with a non-management token",
    );
    denied(
        &with(&c, 1, &writer, "PUT", "/v1/snapshot", b"QBAK"),
        "a restore with a non-management token",
    );
    let r = with(&c, 1, &root, "GET", "/v1/snapshot", b"");
    assert_eq!(
        r.status, 200,
        "a backup with the management token: {}",
        r.body
    );
}
