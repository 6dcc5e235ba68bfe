//! `quorumd check --data DIR`: verifies a node's data dir offline.
//!
//! The check works on a private copy of the dir's files, so it never
//! repairs or truncates the original; it holds the dir's lock meanwhile, so
//! it refuses the dir of a running node (stop it first). On the copy it does what a
//! start does — `raft.redb` opened with every page checksum verified, the
//! write-ahead log read with every record's CRC checked and reconciled with
//! the state machine — and then reads every row of the store and checks it
//! decodes. A problem is reported naming the original file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::raft::storage::NodeStorage;
use crate::store::disk::{StateStore, DB_FILE};

/// What to do about a damaged data dir.
pub const DAMAGE_ADVICE: &str = "do not run the node on it: from a healthy cluster, give the box \
    a new id with `quorumd member replace`, or, if every box is lost, restore a backup into a \
    new cluster with `quorumd snapshot restore`";

/// Checks `dir` and returns the summary printed on success.
pub fn check(dir: &Path) -> Result<String> {
    let db = dir.join(DB_FILE);
    if !db.exists() {
        return Err(Error::Usage(format!(
            "{} holds no quorumd state (no {DB_FILE})",
            dir.display()
        )));
    }
    // A running node rewrites its files while the copy is made, which
    // could look like damage: its lock says it runs. Held for the check,
    // the lock also keeps the node from starting meanwhile (and makes the
    // copy private: the umask becomes 0077).
    let _lock = crate::raft::storage::lock(dir)?;
    let copy = tempfile_dir()?;
    let result = check_copy(dir, &copy);
    let _ = std::fs::remove_dir_all(&copy);
    result.map_err(|e| rename(e, &copy, dir))
}

fn check_copy(dir: &Path, copy: &Path) -> Result<String> {
    copy_tree(dir, copy)?;
    let identity = StateStore::stored_identity(copy)?;
    let storage = NodeStorage::open(copy, &identity)?;
    let r = &storage.recovered;
    let (rows, keys) = storage.state.read(|t| {
        let rows = t.rows()?;
        let keys = rows
            .iter()
            .filter(|(k, _)| !crate::store::is_reserved(k))
            .count();
        Ok((rows.len(), keys))
    })?;
    // The snapshot a lagging follower would get: every row, re-checked.
    let snapshot = storage.state.build_snapshot()?;
    crate::store::snapshot::validate(snapshot.get_data()).map_err(|e| Error::StorageCorrupt {
        file: copy.join(DB_FILE),
        reason: format!("its store does not make a valid snapshot: {e}"),
    })?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "data dir {}: node {} of cluster '{}'",
        dir.display(),
        identity.node_id,
        identity.cluster
    );
    let _ = writeln!(
        s,
        "  {DB_FILE}: every page checksum verified; applied index {} ; {keys} keys, {rows} rows",
        r.applied
    );
    let last = r.entries.last().map_or(r.snapshot_meta.index, |e| e.index);
    let _ = writeln!(
        s,
        "  wal/: every record checksum verified; entries ({}, {last}], term {}, commit {}",
        r.snapshot_meta.index, r.hard_state.term, r.hard_state.commit
    );
    let _ = writeln!(s, "{}: ok", dir.display());
    Ok(s)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "quorumd-check-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    Ok(dir)
}

/// Copies the dir's files (not its lock), recursively.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from)
        .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if entry.file_name() == "LOCK" {
            continue;
        }
        if path.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(|e| Error::io(format!("cannot create {}", target.display()), e))?;
            copy_tree(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)
                .map_err(|e| Error::io(format!("cannot copy {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Names the original files in an error about the copy.
fn rename(e: Error, copy: &Path, dir: &Path) -> Error {
    let fix = |p: PathBuf| match p.strip_prefix(copy) {
        Ok(rest) => dir.join(rest),
        Err(_) => p,
    };
    let fix_text = |s: String| {
        s.replace(
            copy.to_string_lossy().as_ref(),
            dir.to_string_lossy().as_ref(),
        )
    };
    match e {
        Error::StorageCorrupt { file, reason } => Error::StorageCorrupt {
            file: fix(file),
            reason: fix_text(reason),
        },
        Error::Storage { dir: d, reason } => Error::Storage {
            dir: fix(d),
            reason: fix_text(reason),
        },
        Error::DataDirMismatch { dir: d, reason } => Error::DataDirMismatch {
            dir: fix(d),
            reason: fix_text(reason),
        },
        other => other,
    }
}
