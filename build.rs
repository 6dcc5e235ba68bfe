//! Drops the unwind tables from the release binary.
//!
//! quorumd is built with `panic = "abort"` and its panic hook prints one
//! sentence and exits, so nothing in it ever unwinds. The `.eh_frame` tables
//! that std and glibc bring anyway (about 800 KB) are discarded when the
//! `quorumd` binary of a release build for this Linux host is linked, by GNU
//! ld with `scripts/no-eh-frame.ld` (rust-lld, rustc's default linker,
//! refuses to discard them). Benches and tests keep their tables: they
//! unwind, and their harnesses kill the nodes they started on the way.
//! Without `ld.bfd` on `PATH` the binary keeps them, with a warning.
//!
//! The same link places the functions a node runs together, first in the
//! code (`scripts/text-order.ld`, made by `scripts/text-order.sh`): the
//! kernel maps code into a process 64 KiB at a time around each page first
//! run, so code that runs spread through the whole binary maps all of it.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scripts/no-eh-frame.ld");
    println!("cargo:rerun-if-changed=scripts/text-order.ld");
    println!("cargo:rerun-if-env-changed=QUORUMD_KEEP_SYMBOLS");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let native = var("TARGET") == var("HOST");
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if !release {
        return;
    }
    // Stripped here rather than by the profile (see Cargo.toml); a build
    // for scripts/text-order.sh keeps the symbols.
    let keep_symbols = std::env::var_os("QUORUMD_KEEP_SYMBOLS").is_some();
    if keep_symbols {
        println!("cargo:warning=QUORUMD_KEEP_SYMBOLS is set: the release binary keeps its symbols");
    }
    if var("CARGO_CFG_TARGET_OS") == "linux" && !keep_symbols {
        println!("cargo:rustc-link-arg-bins=-Wl,--strip-all");
    }
    if !(native && linux_gnu) {
        return;
    }
    let bfd = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ld.bfd").is_file()));
    if !bfd {
        println!(
            "cargo:warning=ld.bfd (GNU binutils) is not on PATH: the release binary keeps its \
             unwind tables (about 800 KB)"
        );
        return;
    }
    let script = Path::new(&var("CARGO_MANIFEST_DIR")).join("scripts/no-eh-frame.ld");
    println!("cargo:rustc-link-arg-bins=-fuse-ld=bfd");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("scripts/text-order.ld");
    if order.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", order.display());
    }
}
