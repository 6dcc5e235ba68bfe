//! The recorded history: one JSON object per operation, one per line.
//!
//! Every value a client writes is unique in the run (a global counter), so a
//! value names the one write that produced it. Times are microseconds since
//! the run started, on one monotonic clock shared by every client thread.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Func {
    /// `GET /v1/kv/<key>` (linearizable, or `?stale` in the negative control).
    Get,
    /// `PUT /v1/kv/<key>` with a unique value.
    Put,
    /// `PUT /v1/kv/<key>?cas=<ModifyIndex>` with a unique value.
    Cas,
}

/// How an operation ended, one of three outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answered with success (a get's value, a put's `true`, a CAS's `true`).
    Ok,
    /// Definitely had no effect: the connection was refused before anything
    /// was sent, the node answered 4xx, or a CAS answered `false`.
    Failed,
    /// May or may not have taken effect: a timeout, a reset or a 5xx after the
    /// request was sent.
    Unknown,
}

/// One operation, as written to `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unique in the run, in invocation order per client.
    pub id: u64,
    /// The client thread that ran it.
    pub client: u32,
    /// The node (id) it was sent to.
    pub node: u32,
    /// The key.
    pub key: String,
    /// What it did.
    pub f: Func,
    /// A get sent with `?stale` (the negative control).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stale: bool,
    /// One of the final reads after healing (the lost-write check).
    #[serde(default, rename = "final", skip_serializing_if = "is_false")]
    pub fin: bool,
    /// Put/CAS: the value written. Get: the value read (`None`: absent).
    pub value: Option<u64>,
    /// CAS: the value the client expected to replace (`None`: absent, `cas=0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<u64>,
    /// CAS: the `ModifyIndex` sent as `cas=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_index: Option<u64>,
    /// Get: the `ModifyIndex` read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// CAS: the answer, `true` or `false`, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<bool>,
    /// Invocation, microseconds since the run started.
    pub call_us: u64,
    /// Completion (or giving up), microseconds since the run started.
    pub ret_us: u64,
    /// The outcome.
    pub status: Status,
    /// What went wrong, for failed and unknown operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Display for Record {
    /// One line a person can read: `#12 c3->n2 1.204100-1.206800s cas 7->12 (cas=40) = false [failed]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |v: Option<u64>| match v {
            None => "absent".to_string(),
            Some(GARBAGE) => "garbage".to_string(),
            Some(v) => v.to_string(),
        };
        write!(
            f,
            "#{} c{}->n{} {:.6}-{:.6}s ",
            self.id,
            self.client,
            self.node,
            self.call_us as f64 / 1e6,
            self.ret_us as f64 / 1e6
        )?;
        match self.f {
            Func::Get => {
                let kind = if self.stale { "stale get" } else { "get" };
                if self.status == Status::Ok {
                    write!(f, "{kind} = {}", v(self.value))?;
                    if let Some(i) = self.index {
                        write!(f, " (index {i})")?;
                    }
                } else {
                    write!(f, "{kind}")?;
                }
            }
            Func::Put => write!(f, "put {}", v(self.value))?,
            Func::Cas => {
                write!(f, "cas {}->{}", v(self.expect), v(self.value))?;
                if let Some(i) = self.expect_index {
                    write!(f, " (cas={i})")?;
                }
                if let Some(r) = self.result {
                    write!(f, " = {r}")?;
                }
            }
        }
        if self.fin {
            write!(f, " (final read)")?;
        }
        let status = match self.status {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        };
        write!(f, " [{status}]")?;
        if let Some(e) = &self.error {
            write!(f, " {e}")?;
        }
        Ok(())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A value a get returned that no client could have written (not a decimal
/// integer): it can never be explained, so the checker reports it.
pub const GARBAGE: u64 = u64::MAX - 1;

/// Counts for the final line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// All operations.
    pub ops: u64,
    /// [`Status::Ok`].
    pub ok: u64,
    /// [`Status::Failed`].
    pub failed: u64,
    /// [`Status::Unknown`].
    pub unknown: u64,
}

impl Counts {
    /// Tallies a history.
    pub fn of(records: &[Record]) -> Self {
        let mut c = Counts::default();
        for r in records {
            c.ops += 1;
            match r.status {
                Status::Ok => c.ok += 1,
                Status::Failed => c.failed += 1,
                Status::Unknown => c.unknown += 1,
            }
        }
        c
    }
}

/// Appends records to a JSON-lines file, flushed line by line so that a run
/// that dies still leaves what it recorded.
pub struct Writer {
    out: BufWriter<File>,
}

impl Writer {
    /// Creates (truncates) the file.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Writer {
            out: BufWriter::new(File::create(path)?),
        })
    }

    /// Writes one record as one line.
    pub fn write(&mut self, r: &Record) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, r)?;
        self.out.write_all(b"\n")
    }

    /// Flushes what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads a history file back, naming the line of any record it cannot parse.
/// A last line cut short (a run killed while writing it) is left out.
pub fn read(path: &Path) -> Result<Vec<Record>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(e) if e.is_eof() && n + 1 == lines.len() => break,
            Err(e) => {
                return Err(format!(
                    "{} line {}: not a history record: {e}",
                    path.display(),
                    n + 1
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, f: Func, status: Status) -> Record {
        Record {
            id,
            client: 1,
            node: 2,
            key: "chaos/k0".into(),
            f,
            stale: false,
            fin: false,
            value: Some(id),
            expect: None,
            expect_index: None,
            index: None,
            result: None,
            call_us: 10 * id,
            ret_us: 10 * id + 5,
            status,
            error: None,
        }
    }

    #[test]
    fn records_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let mut w = Writer::create(&path).unwrap();
        let mut cas = rec(3, Func::Cas, Status::Failed);
        cas.expect = Some(1);
        cas.expect_index = Some(17);
        cas.result = Some(false);
        let all = vec![
            rec(1, Func::Put, Status::Ok),
            rec(2, Func::Get, Status::Unknown),
            cas,
        ];
        for r in &all {
            w.write(r).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(read(&path).unwrap(), all);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""f":"cas""#), "{text}");
        assert!(text.contains(r#""status":"failed""#), "{text}");
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        std::fs::write(&path, "\n{\"id\": 1}\n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_last_line_cut_short_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let whole = serde_json::to_string(&rec(1, Func::Put, Status::Ok)).unwrap();
        std::fs::write(&path, format!("{whole}\n{}", &whole[..30])).unwrap();
        assert_eq!(read(&path).unwrap(), vec![rec(1, Func::Put, Status::Ok)]);
        // ...but not one in the middle.
        std::fs::write(&path, format!("{}\n{whole}\n", &whole[..30])).unwrap();
        assert!(read(&path).unwrap_err().contains("line 1"));
    }

    #[test]
    fn counts_split_by_status() {
        let h = [
            rec(1, Func::Put, Status::Ok),
            rec(2, Func::Get, Status::Ok),
            rec(3, Func::Put, Status::Unknown),
            rec(4, Func::Cas, Status::Failed),
        ];
        assert_eq!(
            Counts::of(&h),
            Counts {
                ops: 4,
                ok: 2,
                failed: 1,
                unknown: 1
            }
        );
    }
}
