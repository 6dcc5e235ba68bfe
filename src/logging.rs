//! Log output: env_logger on stderr (`RUST_LOG`, default `info` with
//! raft-rs's own chatter at `warn`).
//!
//! When stderr is the systemd journal, every line starts with its syslog
//! priority in angle brackets (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//! debug and trace) and carries no timestamp of its own: journald parses the
//! prefix into the entry's priority, so `journalctl -p warning` works, and
//! stamps the time itself. Everywhere else the format is env_logger's,
//! with a timestamp and the level.
//!
//! systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose
//! output goes to the journal. A process whose stderr was redirected
//! elsewhere may still inherit the variable, so, as systemd.exec(5) asks,
//! it only counts when it names stderr's own device and inode.

use std::io::Write as _;
use std::sync::OnceLock;

/// Installs the logger; call once, first thing in `main`.
pub fn init() {
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,raft=warn"),
    );
    builder.format_target(false);
    if stderr_is_journal() {
        builder.format(|buf, record| {
            let priority = syslog_priority(record.level());
            // Each line gets the prefix, so a continuation line keeps the
            // entry's priority instead of falling back to the default.
            for line in record.args().to_string().split('\n') {
                writeln!(buf, "<{priority}>{line}")?;
            }
            Ok(())
        });
    }
    builder.init();
}

/// The prefix for the one-sentence fatal error `main` prints: `<3>` (error)
/// when stderr is the journal, else nothing.
pub fn error_prefix() -> &'static str {
    if stderr_is_journal() {
        "<3>"
    } else {
        ""
    }
}

/// The syslog priority journald files a line of `level` under.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the journal stream systemd connected (checked once).
pub fn stderr_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        std::env::var("JOURNAL_STREAM")
            .ok()
            .and_then(|v| parse_journal_stream(&v))
            .is_some_and(|named| stderr_identity() == Some(named))
    })
}

/// `"<device>:<inode>"`, both decimal, as systemd writes `JOURNAL_STREAM`.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The device and inode of whatever stderr is (a socket, under systemd).
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream(""), None);
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("8:x"), None);
        assert_eq!(parse_journal_stream("-1:2"), None);
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
        assert_eq!(syslog_priority(log::Level::Debug), 7);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }
}
