//! The Debian package `make deb` builds: its control fields and files,
//! read back with `dpkg-deb`, and, where the machine allows (root, dpkg and
//! systemd-sysusers), an install into a scratch root with `dpkg --root`
//! that runs the maintainer scripts, `quorumd check` on the shipped
//! example, and a purge.
//!
//! The package is built here with `make deb` (the static release build, so
//! the first run on a clean tree takes a couple of minutes; `make test`
//! builds it before `cargo test`, and then this is a no-op: the nested `make`
//! runs without the variables cargo sets for a test).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn dpkg_arch() -> String {
    stdout(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_string()
}

/// A variable cargo sets for the test binary (not one a user sets to
/// configure cargo, like `CARGO_HOME` or `CARGO_TARGET_DIR`).
fn cargo_test_var(name: &str) -> bool {
    [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// `make deb`, once per test run; the path it printed.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let mut make = Command::new("make");
        make.args(["-s", "deb"]).current_dir(ROOT);
        // Without the variables cargo sets for a test, the nested build is
        // the no-op `make test` prepared: ring's build script is rerun when
        // CARGO_MANIFEST_DIR changes, and a rebuilt ring relinks the whole
        // static release binary (a minute or more on two cores, twice: here
        // and at the next `make deb`).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if cargo_test_var(&name) {
                make.env_remove(name.as_ref());
            }
        }
        let out = stdout(&mut make);
        let path = PathBuf::from(out.lines().last().unwrap_or_default().trim());
        let want = format!("{ROOT}/target/debian/quorumd_{VERSION}_{}.deb", dpkg_arch());
        assert_eq!(path, Path::new(&want), "make deb printed:\n{out}");
        assert!(path.is_file(), "{} missing after make deb", path.display());
        path
    })
}

/// Files (not directories) in the package: path -> (mode, owner).
fn package_files(deb: &Path) -> BTreeMap<String, (String, String)> {
    stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].to_string(), (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

/// Whether the ELF file at `path` asks for a dynamic loader (PT_INTERP).
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).expect("read binary");
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == 3
    })
}

#[test]
fn package_holds_the_static_binary_unit_example_config_and_docs() {
    let deb = deb();
    let field = |name: &str| {
        stdout(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "quorumd");
    assert_eq!(field("Version"), VERSION);
    assert_eq!(field("Architecture"), dpkg_arch());
    assert!(field("Depends").contains("systemd"), "{}", field("Depends"));
    assert!(!field("Maintainer").is_empty());
    let description = field("Description");
    assert!(
        description.starts_with("small, fast Raft cluster for edge boxes, with Consul's KV API"),
        "{description}"
    );
    assert!(description.contains("quorumd.toml(5)"), "{description}");

    let files = package_files(deb);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "./etc/quorumd/cluster.toml",
            "./usr/bin/quorumd",
            "./usr/lib/systemd/system/quorumd@.service",
            "./usr/lib/sysusers.d/quorumd.conf",
            "./usr/share/bash-completion/completions/quorumd",
            "./usr/share/doc/quorumd/README.md.gz",
            "./usr/share/doc/quorumd/copyright",
            "./usr/share/fish/vendor_completions.d/quorumd.fish",
            "./usr/share/man/man1/quorumd.1.gz",
            "./usr/share/man/man5/quorumd.toml.5.gz",
            "./usr/share/zsh/vendor-completions/_quorumd",
        ]
    );
    for (path, (mode, owner)) in &files {
        assert_eq!(owner, "root/root", "{path}");
        let want = if path == "./usr/bin/quorumd" {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{path}");
    }
    let installed_kib: u64 = field("Installed-Size").parse().expect("Installed-Size");
    assert!(
        (1024..16 * 1024).contains(&installed_kib),
        "Installed-Size {installed_kib} KiB"
    );

    // The example config is a conffile: an upgrade keeps the operator's.
    let info = |member: &str| stdout(Command::new("dpkg-deb").arg("--info").arg(deb).arg(member));
    assert_eq!(info("conffiles"), "/etc/quorumd/cluster.toml\n");
    let postinst = info("postinst");
    assert!(
        postinst.contains("systemd-sysusers") && postinst.contains("quorumd.conf"),
        "the postinst does not create the user:\n{postinst}"
    );

    // What is inside is what the repository holds.
    let dir = tempfile::tempdir().expect("temp dir");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    let x = |p: &str| dir.path().join(p);
    let same = |installed: &str, source: &str| {
        assert_eq!(
            std::fs::read(x(installed)).expect("packaged file"),
            std::fs::read(Path::new(ROOT).join(source)).expect("source file"),
            "{installed} differs from {source}"
        );
    };
    same(
        "usr/lib/systemd/system/quorumd@.service",
        "packaging/systemd/quorumd@.service",
    );
    same("etc/quorumd/cluster.toml", "packaging/cluster.toml");
    same(
        "usr/lib/sysusers.d/quorumd.conf",
        "packaging/sysusers.d/quorumd.conf",
    );

    let bin = x("usr/bin/quorumd");
    assert!(!has_interpreter(&bin), "the packaged binary is not static");
    let version = stdout(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("quorumd {VERSION}"));

    let man = stdout(
        Command::new("gzip")
            .arg("-dc")
            .arg(x("usr/share/man/man1/quorumd.1.gz")),
    );
    assert!(man.starts_with(".TH QUORUMD 1"), "{man}");
    for cmd in ["run", "check", "status", "kv", "member", "certs"] {
        assert!(
            man.contains(&format!(".SS {cmd}\n")),
            "the man page has no section for `{cmd}`:\n{man}"
        );
    }
    assert!(man.contains("quorumd.toml(5)"), "{man}");

    // `man 5 quorumd.toml`: the hand-written page, dated like the other.
    let man5 = stdout(
        Command::new("gzip")
            .arg("-dc")
            .arg(x("usr/share/man/man5/quorumd.toml.5.gz")),
    );
    let source = std::fs::read_to_string(Path::new(ROOT).join("packaging/man/quorumd.toml.5"))
        .expect("packaging/man/quorumd.toml.5");
    let (head, rest) = man5.split_once('\n').expect("a .TH line");
    assert!(
        head.starts_with(".TH QUORUMD.TOML 5 \"") && !head.contains("\"\""),
        "{head}"
    );
    assert_eq!(rest, source.split_once('\n').expect("a .TH line").1);
    // Every key the parser takes is described.
    for key in [
        "name",
        "quorum_wait_timeout",
        "heartbeat_interval",
        "peer_timeout",
        "data_dir",
        "auto_promote",
        "tick_interval",
        "election_ticks",
        "heartbeat_ticks",
        "snapshot_entries",
        "snapshot_bytes",
        "max_value_bytes",
        "max_store_bytes",
        "request_timeout",
        "ca",
        "cert",
        "key",
        "client_cert",
        "id",
        "addr",
        "admin",
    ] {
        assert!(
            man5.contains(&format!(".B {key}\n")) || man5.contains(&format!(".BR {key} ")),
            "quorumd.toml(5) does not describe `{key}`"
        );
    }
}

/// Why this machine cannot install into a scratch root, if it cannot.
fn cannot_install() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("dpkg --root needs root to give files their owners".into());
    }
    for tool in ["dpkg", "dpkg-query", "systemd-sysusers"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

#[test]
fn package_installs_into_a_scratch_root_checks_its_config_and_purges() {
    let deb = deb();
    if let Some(reason) = cannot_install() {
        eprintln!("skipped: {reason}");
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let r = |p: &str| root.path().join(p);
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(r(d)).expect("dpkg dirs");
    }
    std::fs::write(r("var/lib/dpkg/status"), "").expect("dpkg status");
    // The maintainer scripts run outside the root with DPKG_ROOT set (the
    // scratch root has no shell to chroot into); the package's
    // systemd-sysusers dependency is the host's.
    let dpkg = |action: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.path().display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(action);
        run(&mut cmd)
    };
    dpkg(&["--install", deb.to_str().expect("utf-8 path")]);

    let status = stdout(
        Command::new("dpkg-query")
            .arg(format!("--root={}", root.path().display()))
            .args(["-W", "-f=${Status}\n${Conffiles}\n", "quorumd"]),
    );
    assert!(status.starts_with("install ok installed\n"), "{status}");
    assert!(status.contains("/etc/quorumd/cluster.toml "), "{status}");

    // The postinst made the quorumd system user and group in the root.
    let passwd = std::fs::read_to_string(r("etc/passwd")).expect("root's passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("quorumd:"))
        .unwrap_or_else(|| panic!("no quorumd user:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid > 0 && uid < 1000, "not a system uid: {user}");
    assert_eq!(fields[5], "/var/lib/quorumd", "{user}");
    let group = std::fs::read_to_string(r("etc/group")).expect("root's group");
    assert!(group.lines().any(|l| l.starts_with("quorumd:")), "{group}");

    // The installed binary accepts the installed example.
    let check = Command::new(r("usr/bin/quorumd"))
        .arg("check")
        .arg(r("etc/quorumd/cluster.toml"))
        .output()
        .expect("run installed quorumd");
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        exit_code(check.status),
        0,
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("3 nodes, quorum 2"), "{out}");
    assert!(out.contains("data_dir=/var/lib/quorumd\n"), "{out}");

    // Where systemd-analyze is installed: the installed unit verifies
    // against the installed binary, and its man:quorumd(1) resolves to the
    // installed man page.
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("sysinit.target").exists());
    match (
        Command::new("systemd-analyze").arg("--version").output(),
        host_units,
    ) {
        (Ok(_), Some(units)) => {
            run(Command::new("cp")
                .arg("-an")
                .arg(format!("{units}/."))
                .arg(r("usr/lib/systemd/system")));
            let out = run(Command::new("systemd-analyze")
                .arg("verify")
                .arg(format!("--root={}", root.path().display()))
                .arg("quorumd@1.service")
                .env("MANPATH", r("usr/share/man")));
            let said = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");
        }
        _ => eprintln!(
            "systemd-analyze or the host's units missing: not verifying the installed unit"
        ),
    }

    // Purge removes the files and the conffile, and keeps the user and any
    // state (a node's Raft state must never be wiped behind its back).
    dpkg(&["--purge", "quorumd"]);
    assert!(!r("usr/bin/quorumd").exists());
    assert!(!r("etc/quorumd/cluster.toml").exists());
    let passwd = std::fs::read_to_string(r("etc/passwd")).expect("root's passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("quorumd:")),
        "{passwd}"
    );
}
