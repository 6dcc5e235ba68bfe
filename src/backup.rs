//! Backups: the whole store in a file of its own, and its restore into a
//! running cluster through Raft.
//!
//! ```text
//! "QUORUMDB" version:u8                    magic and format version (1)
//! meta_len:u32 meta                        a JSON object: see [`Meta`]
//! data_len:u64 data                        the store's snapshot (the same
//!                                          bytes a lagging follower gets,
//!                                          with their own checksum)
//! crc32:u32                                of every byte before it
//! ```
//!
//! Numbers are little-endian. A file is checked whole (magic, version,
//! lengths, checksum, then every row of the snapshot against the counts the
//! header announces) before anything is changed.
//!
//! **Restore through Raft.** A store can hold up to `max_store_bytes`
//! (1 GiB at most), and a Raft entry must fit a 4 MiB peer frame. So a
//! restore is a series of entries: the keys are staged under
//! [`STAGING_PREFIX`]`<nonce>/` by entries of at most [`CHUNK_BYTES`] each
//! (a key's value is at most 2 MiB, so one key always fits), then one small
//! [`KvOp::Restore`] entry swaps them in atomically: every key outside the
//! membership records goes, the staged keys take their names at that
//! entry's index. Readers see the old store or the new one, never a mix.
//! Staged keys are reserved, so they count nothing against
//! `max_store_bytes`; the swapped-in keys must fit it. A restore cut short
//! (leader lost, node stopped) leaves its staged keys behind, invisible to
//! clients, until the next restore removes them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::kv::{KvError, KvService};
use crate::membership::{CLUSTER_ID_KEY, MEMBERS_PREFIX, REMOVED_PREFIX};
use crate::store::disk::StateStore;
use crate::store::{Command, KvOp, Outcome};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"QUORUMDB";
/// The format version written today.
pub const FORMAT_VERSION: u8 = 1;
/// The `format` field of [`Meta`].
pub const FORMAT_NAME: &str = "quorumd-backup";
/// Where a restore stages its keys before it swaps them in.
pub const STAGING_PREFIX: &str = "__quorumd/restore/";
/// The most bytes of staged keys one restore entry carries.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// The longest header a reader accepts.
const MAX_META_BYTES: u32 = 64 * 1024;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The `[cluster] name` of the cluster it was taken from.
    pub cluster: String,
    /// That cluster's id, if it had one yet.
    pub cluster_id: Option<String>,
    /// The Raft index the store was at.
    pub index: u64,
    /// The term of that index.
    pub term: u64,
    /// Keys a client sees (outside the reserved prefix).
    pub keys: u64,
    /// Every row, reserved ones (membership, and the cluster's own state)
    /// included.
    pub rows: u64,
    /// The node that wrote it.
    pub node_id: u64,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// A checked backup file.
#[derive(Debug, Clone)]
pub struct Backup {
    /// Its header.
    pub meta: Meta,
    /// The store's snapshot.
    pub data: Vec<u8>,
    /// The format version.
    pub version: u8,
    /// The file's checksum (CRC-32 of everything before it).
    pub checksum: u32,
    /// The file's size.
    pub size: u64,
}

/// Encodes a backup file.
pub fn encode(meta: &Meta, data: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("a backup header always encodes");
    let mut out = Vec::with_capacity(data.len() + meta.len() + 32);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a backup file whole and decodes it. `Err` is one sentence saying
/// what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Backup, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(
            "it is not a quorumd backup (its first bytes are not \"QUORUMDB\")".to_string(),
        );
    }
    let short = || {
        format!(
            "it is truncated: {} bytes end before the backup does",
            bytes.len()
        )
    };
    let version = *bytes.get(MAGIC.len()).ok_or_else(short)?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "it is a backup of format version {version}, and this build reads version \
             {FORMAT_VERSION}"
        ));
    }
    let mut at = MAGIC.len() + 1;
    let meta_len = u32::from_le_bytes(
        take(bytes, &mut at, 4)
            .ok_or_else(short)?
            .try_into()
            .expect("4"),
    );
    if meta_len > MAX_META_BYTES {
        return Err(format!(
            "it is damaged: its header claims {meta_len} bytes (at most {MAX_META_BYTES})"
        ));
    }
    let meta_bytes = take(bytes, &mut at, meta_len as usize).ok_or_else(short)?;
    let data_len = u64::from_le_bytes(
        take(bytes, &mut at, 8)
            .ok_or_else(short)?
            .try_into()
            .expect("8"),
    );
    let data_len = usize::try_from(data_len).map_err(|_| short())?;
    let data = take(bytes, &mut at, data_len).ok_or_else(short)?;
    let crc_bytes = take(bytes, &mut at, 4).ok_or_else(short)?;
    if at != bytes.len() {
        return Err(format!(
            "it is damaged: {} bytes follow the end of the backup",
            bytes.len() - at
        ));
    }
    let checksum = u32::from_le_bytes(crc_bytes.try_into().expect("4"));
    let actual = crc32fast::hash(&bytes[..at - 4]);
    if actual != checksum {
        return Err(format!(
            "it is damaged: its checksum is {actual:08x}, the file says {checksum:08x}"
        ));
    }
    let meta: Meta = serde_json::from_slice(meta_bytes)
        .map_err(|e| format!("it is damaged: its header does not parse: {e}"))?;
    if meta.format != FORMAT_NAME {
        return Err(format!(
            "it is not a quorumd backup (its header names the format {:?})",
            meta.format
        ));
    }
    let (keys, rows) = count(data).map_err(|e| format!("it is damaged: its store {e}"))?;
    if keys != meta.keys || rows != meta.rows {
        return Err(format!(
            "it is damaged: its header announces {} keys and {} rows, the store holds {keys} and \
             {rows}",
            meta.keys, meta.rows
        ));
    }
    Ok(Backup {
        meta,
        data: data.to_vec(),
        version,
        checksum,
        size: bytes.len() as u64,
    })
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(n)?;
    let slice = bytes.get(*at..end)?;
    *at = end;
    Some(slice)
}

/// Client keys and every row of a store snapshot, checking it whole.
fn count(data: &[u8]) -> Result<(u64, u64), String> {
    let (mut keys, mut rows) = (0, 0);
    crate::store::snapshot::each_row(data, |key, _| {
        rows += 1;
        if !crate::store::is_reserved(key) {
            keys += 1;
        }
        Ok(())
    })?;
    Ok((keys, rows))
}

/// Takes a backup of the store as this node applied it. Blocking: call it
/// off the executor.
pub fn take_backup(store: &StateStore, cluster: &str, node_id: u64) -> crate::Result<Vec<u8>> {
    let snapshot = store.build_snapshot()?;
    let data = snapshot.get_data();
    let mut cluster_id = None;
    let (mut keys, mut rows) = (0, 0);
    crate::store::snapshot::each_row(data, |key, record| {
        rows += 1;
        if key == CLUSTER_ID_KEY {
            cluster_id = Some(String::from_utf8_lossy(&record.value).into_owned());
        }
        if !crate::store::is_reserved(key) {
            keys += 1;
        }
        Ok(())
    })
    .map_err(|e| crate::Error::Internal(format!("the store's own snapshot is unreadable: {e}")))?;
    let meta = Meta {
        format: FORMAT_NAME.to_string(),
        cluster: cluster.to_string(),
        cluster_id,
        index: snapshot.get_metadata().index,
        term: snapshot.get_metadata().term,
        keys,
        rows,
        node_id,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    Ok(encode(&meta, data))
}

/// Writes `bytes` to `path` atomically, mode 0600: a temporary file beside
/// it, fsync, rename over `path`, fsync of the directory. A reader sees the old file or
/// the whole new one; a crash leaves at most a stray temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        // A backup holds every value: readable by its owner only.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Why a restore did not happen (or did not finish).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file is damaged, truncated or not a backup; nothing changed.
    #[error("the backup is refused: {0}; nothing was changed")]
    BadFile(String),
    /// The backup is of another cluster, and `force` was not given.
    #[error("{0}")]
    OtherCluster(String),
    /// Another restore runs on this node.
    #[error("another restore is running on this node; retry once it finishes")]
    Busy,
    /// The cluster refused or failed an entry of the restore.
    #[error("the restore failed: {0}")]
    Failed(String),
    /// The cluster did not answer.
    #[error("{0}")]
    Cluster(KvError),
}

/// The prefixes a restore leaves as the running cluster has them: its id
/// and its membership.
pub fn kept_prefixes() -> Vec<String> {
    vec![
        CLUSTER_ID_KEY.to_string(),
        MEMBERS_PREFIX.to_string(),
        REMOVED_PREFIX.to_string(),
    ]
}

/// What a finished restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The index of the entry that swapped the keys in.
    pub index: u64,
    /// The client keys the store now holds.
    pub keys: u64,
    /// Rows restored (reserved ones too).
    pub rows: u64,
    /// Entries it took, the final one included.
    pub entries: u64,
}

/// Restores `backup` into the running cluster. `running` is this
/// cluster's `(name, id)`. Returns once the swap is applied on this node.
pub async fn restore(
    kv: &KvService,
    backup: &Backup,
    running: (&str, Option<&str>),
    force: bool,
) -> Result<Restored, RestoreError> {
    if let Some(why) = crate::diskguard::full_reason() {
        return Err(RestoreError::Cluster(KvError::DiskFull(why)));
    }
    let (name, id) = running;
    // A cluster not yet given its id (in its first moments) cannot prove it
    // is the backup's.
    let same = backup.meta.cluster == name && backup.meta.cluster_id.as_deref() == id;
    if !same && !force {
        return Err(RestoreError::OtherCluster(format!(
            "the backup is of cluster '{}' (id {}), and this is cluster '{name}' (id {}); pass \
             --force (?force) to restore it anyway, as after losing every box, when a new \
             cluster has a new id; nothing was changed",
            backup.meta.cluster,
            backup.meta.cluster_id.as_deref().unwrap_or("unknown"),
            id.unwrap_or("unknown"),
        )));
    }
    let keep = kept_prefixes();
    let nonce = format!("{:016x}", fastrand::u64(..));
    let staging = format!("{STAGING_PREFIX}{nonce}/");
    let marker = format!("{RESTORED_PREFIX}{nonce}");
    let max_store_bytes = kv.settings().max_store_bytes;
    let command = |ops: Vec<KvOp>| Command {
        max_store_bytes,
        from_client: false,
        ops,
        reads: crate::store::command::ReadLimits::UNLIMITED,
    };
    let mut entries = 0u64;
    // Leftovers of a restore cut short.
    propose_retrying(
        kv,
        &command(vec![KvOp::DeleteTree {
            prefix: STAGING_PREFIX.to_string(),
        }]),
    )
    .await?;
    entries += 1;
    let mut staged = 0u64;
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut rows = Vec::new();
    crate::store::snapshot::each_row(&backup.data, |key, record| {
        let internal = key.starts_with(STAGING_PREFIX) || key.starts_with(RESTORED_PREFIX);
        if !internal && !keep.iter().any(|p| key.starts_with(p.as_str())) {
            rows.push((key, record.value, record.flags));
        }
        Ok(())
    })
    .map_err(RestoreError::BadFile)?;
    let total = rows.len();
    for (i, (key, value, flags)) in rows.into_iter().enumerate() {
        let size = staging.len() + key.len() + value.len() + 24;
        if !chunk.is_empty() && chunk_bytes + size > CHUNK_BYTES {
            propose_retrying(kv, &command(std::mem::take(&mut chunk))).await?;
            entries += 1;
            chunk_bytes = 0;
        }
        chunk.push(KvOp::Set {
            key: format!("{staging}{key}"),
            value,
            flags,
        });
        chunk_bytes += size;
        staged += 1;
        if i + 1 == total {
            propose_retrying(kv, &command(std::mem::take(&mut chunk))).await?;
            entries += 1;
        }
    }
    let swap = command(vec![KvOp::Restore {
        staging,
        keep,
        keys: staged,
        marker: marker.clone(),
        now_ms: crate::session::now_ms(),
    }]);
    entries += 1;
    let restored = |index| Restored {
        index,
        keys: backup.meta.keys,
        rows: staged,
        entries,
    };
    for attempt in 0..=PROPOSE_RETRIES {
        match kv.replica().propose(swap.encode()).await {
            Ok(done) => match done.outcome {
                Outcome::Committed(_) => return Ok(restored(done.index)),
                // A retry of a swap that had happened: its keys are gone.
                Outcome::RolledBack(_) if attempt > 0 => {
                    if let Some(index) = swapped_at(kv, &marker).await? {
                        return Ok(restored(index));
                    }
                    return Err(RestoreError::Failed(outcome_text(done.outcome)));
                }
                other => return Err(RestoreError::Failed(outcome_text(other))),
            },
            Err(e) if is_transient(e) => {
                // The swap of a large store may take longer to apply than
                // a request waits, and a busy cluster may change leaders:
                // it may have committed, so look for its marker before
                // proposing it again.
                log::info!("restore: the swap's outcome is unknown ({e}); checking");
                if let Some(index) = wait_for_marker(kv, &marker, SWAP_APPLY_WAIT).await? {
                    return Ok(restored(index));
                }
            }
            Err(e) => return Err(RestoreError::Cluster(e.into())),
        }
    }
    Err(RestoreError::Failed(format!(
        "the swap of the staged keys did not commit in {} tries: the cluster keeps its \
         keys",
        PROPOSE_RETRIES + 1
    )))
}

/// The prefix of the marker a restore's swap writes.
pub const RESTORED_PREFIX: &str = "__quorumd/restored/";
/// How often a restore proposes an entry whose outcome was unknown.
pub const PROPOSE_RETRIES: usize = 5;
/// How long a restore looks for its swap's marker after the swap's own
/// request ended without an answer, before it proposes the swap again.
pub const SWAP_APPLY_WAIT: Duration = Duration::from_secs(60);

/// Failures after which the entry may or may not have committed, and a
/// retry is safe (restore entries are idempotent).
fn is_transient(e: crate::raft::RequestError) -> bool {
    use crate::raft::RequestError as E;
    matches!(e, E::LeaderLost | E::TimedOut | E::NoLeader)
}

/// Proposes `cmd`, again on an unknown outcome (staging writes and the
/// cleanup are idempotent).
async fn propose_retrying(
    kv: &KvService,
    cmd: &Command,
) -> Result<crate::raft::Committed, RestoreError> {
    let mut attempt = 0;
    loop {
        match kv.replica().propose(cmd.encode()).await {
            Ok(done) => return Ok(done),
            Err(e) if is_transient(e) && attempt < PROPOSE_RETRIES => {
                attempt += 1;
                log::info!("restore: an entry's outcome is unknown ({e}); proposing it again");
                async_io::Timer::after(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(RestoreError::Cluster(e.into())),
        }
    }
}

fn outcome_text(outcome: Outcome) -> String {
    match outcome {
        Outcome::Committed(_) => "committed".to_string(),
        Outcome::RolledBack(errors) => errors
            .into_iter()
            .map(|e| e.what)
            .collect::<Vec<_>>()
            .join("; "),
        Outcome::QuotaExceeded { size, limit } => format!(
            "the backup's keys take {size} bytes, more than store.max_store_bytes ({limit}); \
             nothing was changed"
        ),
        Outcome::Invalid(why) => {
            format!("the cluster could not read the restore entry ({why}); nothing was changed")
        }
    }
}

/// The index at which this node applied the swap that wrote `marker`, if
/// it did.
async fn swapped_at(kv: &KvService, marker: &str) -> Result<Option<u64>, RestoreError> {
    let (store, key) = (kv.store().clone(), marker.to_string());
    crate::runtime::unblock(move || store.read(|t| Ok(t.get(&key)?.value.map(|e| e.modify_index))))
        .await
        .map_err(|e| RestoreError::Cluster(KvError::Storage(e.to_string())))
}

/// Looks for `marker` on this node for up to `wait`.
async fn wait_for_marker(
    kv: &KvService,
    marker: &str,
    wait: Duration,
) -> Result<Option<u64>, RestoreError> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(index) = swapped_at(kv, marker).await? {
            return Ok(Some(index));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        async_io::Timer::after(Duration::from_millis(100)).await;
    }
}

/// A run of the scheduled backup: where it went, its size and how long it
/// took.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// The file written.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// How long taking and writing it took.
    pub took: Duration,
    /// Files removed to keep the newest `keep`.
    pub removed: Vec<PathBuf>,
}

/// The name of a scheduled backup taken at `unix_ms` at `index`: sorting the
/// names sorts them by time.
pub fn scheduled_name(cluster: &str, unix_ms: u64, index: u64) -> String {
    format!("{cluster}-{unix_ms:015}-{index}.qbak")
}

/// Takes one scheduled backup into `dir` and removes the oldest beyond
/// `keep`. Blocking: call it off the executor.
pub fn run_scheduled(
    store: &Arc<StateStore>,
    cluster: &str,
    node_id: u64,
    dir: &Path,
    keep: usize,
) -> crate::Result<Scheduled> {
    let started = Instant::now();
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::Error::io(format!("cannot create backup dir {}", dir.display()), e))?;
    let bytes = take_backup(store, cluster, node_id)?;
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let index = decode(&bytes).map(|b| b.meta.index).unwrap_or(0);
    let file = dir.join(scheduled_name(cluster, unix_ms, index));
    write_atomic(&file, &bytes)
        .map_err(|e| crate::Error::io(format!("cannot write backup {}", file.display()), e))?;
    let prefix = format!("{cluster}-");
    let mut ours: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| crate::Error::io(format!("cannot list backup dir {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".qbak"))
        })
        .collect();
    ours.sort();
    let mut removed = Vec::new();
    while ours.len() > keep.max(1) {
        let old = ours.remove(0);
        if std::fs::remove_file(&old).is_ok() {
            removed.push(old);
        }
    }
    Ok(Scheduled {
        file,
        bytes: bytes.len() as u64,
        took: started.elapsed(),
        removed,
    })
}

/// Runs the `[backup]` schedule until shutdown: every `interval`, if this
/// node leads, it writes a backup into `dir` and keeps the newest `keep`.
/// A failure is a warning and a count in `/metrics`, never a crash.
pub fn spawn_schedule(
    schedule: crate::config::BackupSchedule,
    cluster: String,
    node_id: u64,
    kv: KvService,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: flume::Receiver<()>,
) -> async_executor::Task<()> {
    crate::runtime::spawn(async move {
        log::info!(
            "scheduled backups: every {} into {} while this node leads, keeping {}",
            humantime::format_duration(schedule.interval),
            schedule.dir.display(),
            schedule.keep
        );
        loop {
            let slept =
                crate::runtime::or_shutdown(&shutdown, async_io::Timer::after(schedule.interval))
                    .await;
            if slept.is_none() {
                return;
            }
            if kv.gauge().leader() != Some(node_id) {
                continue;
            }
            let store = kv.store().clone();
            let (dir, keep, name) = (schedule.dir.clone(), schedule.keep, cluster.clone());
            let ran =
                crate::runtime::unblock(move || run_scheduled(&store, &name, node_id, &dir, keep))
                    .await;
            match ran {
                Ok(done) => {
                    log::info!(
                        "scheduled backup written: {} ({} bytes, {} ms){}",
                        done.file.display(),
                        done.bytes,
                        done.took.as_millis(),
                        if done.removed.is_empty() {
                            String::new()
                        } else {
                            format!("; removed {} older", done.removed.len())
                        }
                    );
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    metrics.backup_written(now, done.bytes, done.took);
                }
                Err(e) => {
                    log::warn!(
                        "scheduled backup into {} failed: {e}; the next is due in {}",
                        schedule.dir.display(),
                        humantime::format_duration(schedule.interval)
                    );
                    metrics.backup_failed();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let meta = Meta {
            format: FORMAT_NAME.into(),
            cluster: "c".into(),
            cluster_id: Some("id".into()),
            index: 7,
            term: 2,
            keys: 0,
            rows: 0,
            node_id: 1,
            created_unix_ms: 5,
        };
        encode(&meta, &crate::store::snapshot::empty())
    }

    #[test]
    fn a_backup_roundtrips() {
        let b = decode(&sample()).unwrap();
        assert_eq!(b.meta.index, 7);
        assert_eq!(b.meta.cluster_id.as_deref(), Some("id"));
        assert_eq!(b.version, FORMAT_VERSION);
    }

    #[test]
    fn damage_anywhere_is_refused_with_a_reason() {
        let good = sample();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flipped byte {at} went unnoticed");
        }
        for len in 0..good.len() {
            let e = decode(&good[..len]).unwrap_err();
            assert!(
                e.contains("truncated") || e.contains("not a quorumd backup"),
                "{len}: {e}"
            );
        }
        assert!(decode(b"hello world")
            .unwrap_err()
            .contains("not a quorumd backup"));
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().contains("follow the end"));
    }

    #[test]
    fn atomic_writes_replace_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("quorumd-backup-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("b.qbak");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
