//! What the benches share: etcd as the system measured beside quorumd,
//! `/proc` readings, and small helpers. Each bench includes it with
//! `#[path = "shared/mod.rs"] mod shared;` beside `tests/common`.

// Each bench uses a different subset.
#![allow(dead_code)]

pub mod etcd;

use std::process::Command;

/// A number from the environment, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The path of `program` if it is on `PATH`.
pub fn which(program: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!path.is_empty()).then_some(path)
}

/// VmRSS of `pid`, in MiB.
pub fn proc_rss_mib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The `p` quantile (0..=1) of `samples`, nearest rank; NaN if none.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Over all of `pid`'s threads, from each one's `schedstat`: the time on a
/// CPU in ns, and the number of times a thread was put on a CPU (for a
/// thread that sleeps between events, its wakeups). Exact, where utime and
/// stime are sampled at each clock tick (10 ms), which a process that wakes
/// often for a few microseconds at a time meets only by chance. A thread
/// that ended takes its figures with it.
pub fn on_cpu(pid: u32) -> Result<(u64, u64), String> {
    let dir = format!("/proc/{pid}/task");
    let (mut ns, mut runs) = (0, 0);
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let entry = entry.map_err(|e| format!("{dir}: {e}"))?;
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{}: bad schedstat", entry.path().display()))?;
        let [on_cpu, _waited, slices] = fields[..] else {
            return Err(format!("{}: bad schedstat", entry.path().display()));
        };
        ns += on_cpu;
        runs += slices;
    }
    Ok((ns, runs))
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    stat_ticks(&path, &text)
}

/// utime + stime from the text of a `/proc/.../stat` file.
pub fn stat_ticks(path: &str, text: &str) -> Result<u64, String> {
    // The command name (field 2) is in parentheses and may hold spaces: fields
    // after the last ')' start at field 3 (state); utime and stime are 14, 15.
    let rest = &text[text
        .rfind(')')
        .ok_or_else(|| format!("{path}: bad format"))?
        + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: bad field {}", i + 3))
    };
    Ok(get(11)? + get(12)?)
}

/// Clock ticks per second (`utime` and `stime` are counted in them).
pub fn clock_ticks() -> Result<f64, String> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err("sysconf(_SC_CLK_TCK) failed".into());
    }
    Ok(hz as f64)
}
