//! systemd integration: readiness, status, stopping and watchdog
//! notifications (sd_notify(3)), sent through the `sd-notify` crate.
//!
//! Under a `Type=notify` unit, systemd hands the node a datagram socket in
//! `NOTIFY_SOCKET`. A node sends on it:
//! - `STATUS=role=R term=T leader=L` at start and on each change of role,
//!   term or leader of `__meta/0` (`systemctl status` shows the last one);
//! - `READY=1` once bootstrap completes, which is also when a restarted node
//!   follows a leader: until then `systemctl start` waits;
//! - `STOPPING=1` when a signal starts the shutdown;
//! - `WATCHDOG=1` every `WatchdogSec/2` (`WATCHDOG_USEC`), but only while the
//!   replica driver answers a status query within half that period. A wedged
//!   replica stops the pings, and systemd restarts the node.
//!
//! Without `NOTIFY_SOCKET` nothing here runs. Sending is a blocking socket
//! call, so it runs on a worker thread (`runtime::unblock`), off the executor.

use std::future::Future;
use std::time::{Duration, Instant};

use log::{info, warn};
use sd_notify::NotifyState;

use crate::runtime::Task;

/// The node's link to its service manager. Dropping it stops its tasks.
pub struct Notifier {
    enabled: bool,
    _tasks: Vec<Task<()>>,
}

impl Notifier {
    /// Starts publishing each `STATUS=` line that arrives on `statuses`
    /// and, when systemd asks for it, the watchdog pings while `probe`
    /// answers (`None`: the watched replica has stopped). Does nothing
    /// without `NOTIFY_SOCKET`. It knows the node only through these.
    pub async fn start<P, F>(statuses: Option<flume::Receiver<String>>, probe: P) -> Notifier
    where
        P: FnMut() -> F + Send + 'static,
        F: Future<Output = Option<()>> + Send + 'static,
    {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier {
                enabled: false,
                _tasks: Vec::new(),
            };
        }
        let mut tasks = Vec::new();
        if let Some(statuses) = statuses {
            tasks.push(crate::runtime::spawn(publish_status(statuses)));
        }
        match sd_notify::watchdog_enabled() {
            Some(usec) if !usec.is_zero() => {
                let interval = usec / 2;
                info!(
                    "systemd watchdog: a ping every {}ms while the replica answers",
                    interval.as_millis()
                );
                tasks.push(crate::runtime::spawn(keep_alive(interval, probe, || {
                    send(NotifyState::Watchdog)
                })));
            }
            _ => {}
        }
        Notifier {
            enabled: true,
            _tasks: tasks,
        }
    }

    /// `READY=1`: bootstrap is complete and a leader is known.
    pub async fn ready(&self) {
        if self.enabled && !send(NotifyState::Ready).await {
            warn!("could not tell systemd that the node is ready");
        }
    }

    /// `STOPPING=1`: the node is shutting down.
    pub async fn stopping(&self) {
        if self.enabled {
            send(NotifyState::Stopping).await;
        }
    }
}

/// The `STATUS=` text: `role=follower term=3 leader=1` (`leader=none`
/// while no leader is known).
pub fn status_line(role: &str, term: u64, leader: Option<u64>) -> String {
    let leader = leader.map_or_else(|| "none".to_string(), |l| l.to_string());
    format!("role={role} term={term} leader={leader}")
}

/// The `STATUS=` text of a node without state while it asks the cluster.
pub const ASKING_STATUS: &str = "no state yet: asking the cluster whether to bootstrap or join";

/// Sends `STATUS=` with [`ASKING_STATUS`] (when `NOTIFY_SOCKET` is set): a
/// node without state has no replica to report on yet.
pub async fn asking() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        send(NotifyState::Status(ASKING_STATUS)).await;
    }
}

/// Sends one `STATUS=` line per change of role, term or leader, until the
/// replica stops.
async fn publish_status(statuses: flume::Receiver<String>) {
    let mut last = String::new();
    while let Ok(line) = statuses.recv_async().await {
        if line != last {
            send(NotifyState::Status(&line)).await;
            last = line;
        }
    }
}

/// Pings every `interval` while `probe` answers within `interval / 2`.
///
/// A probe that does not answer in time costs that ping, so a wedged
/// replica lets the watchdog expire; a probe answering `None` (the replica
/// has stopped, as at shutdown) ends the loop. The gap between two pings is
/// at most 1.5 x `interval` while the probe answers, which keeps a slow but
/// working node inside `WatchdogSec` (= 2 x `interval`).
pub async fn keep_alive<T, P, F, S, G>(interval: Duration, mut probe: P, mut ping: S)
where
    P: FnMut() -> F,
    F: Future<Output = Option<T>>,
    S: FnMut() -> G,
    G: Future<Output = bool>,
{
    let wait = interval / 2;
    let mut answering = true;
    let mut next = Instant::now();
    loop {
        let answer = futures_lite::future::or(async { Some(probe().await) }, async {
            async_io::Timer::after(wait).await;
            None
        })
        .await;
        match answer {
            Some(None) => return,
            Some(Some(_)) => {
                if !answering {
                    info!("the replica answers again; watchdog pings resume");
                    answering = true;
                }
                ping().await;
            }
            None => {
                if answering {
                    warn!(
                        "the replica did not answer within {}ms; withholding the watchdog ping",
                        wait.as_millis()
                    );
                    answering = false;
                }
            }
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            // Never a burst of catch-up pings after a stall.
            next = now;
        }
        async_io::Timer::at(next).await;
    }
}

/// Sends one notification; false if `NOTIFY_SOCKET` is set but the send
/// failed.
async fn send(state: NotifyState<'_>) -> bool {
    let message = state.to_string();
    crate::runtime::unblock(move || sd_notify::notify(&[NotifyState::Custom(&message)]))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn status_line_names_role_term_and_leader() {
        assert_eq!(
            status_line("follower", 3, Some(2)),
            "role=follower term=3 leader=2"
        );
        assert_eq!(
            status_line("pre_candidate", 4, None),
            "role=pre_candidate term=4 leader=none"
        );
    }

    /// Runs `keep_alive` with a probe that answers `answers` times and then
    /// never again (a wedged replica), for `run`; returns the probes made
    /// and the pings sent.
    fn keep_alive_with_wedge_after(
        answers: usize,
        interval: Duration,
        run: Duration,
    ) -> (usize, usize) {
        let probes = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(AtomicUsize::new(0));
        let probe = {
            let probes = probes.clone();
            move || {
                let n = probes.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n >= answers {
                        futures_lite::future::pending::<()>().await;
                    }
                    Some(())
                }
            }
        };
        let ping = {
            let pings = pings.clone();
            move || {
                pings.fetch_add(1, Ordering::SeqCst);
                async { true }
            }
        };
        crate::runtime::block_on(futures_lite::future::or(
            keep_alive(interval, probe, ping),
            async {
                async_io::Timer::after(run).await;
            },
        ));
        (probes.load(Ordering::SeqCst), pings.load(Ordering::SeqCst))
    }

    #[test]
    fn pings_at_the_interval_while_the_probe_answers() {
        let (_, pings) = keep_alive_with_wedge_after(
            usize::MAX,
            Duration::from_millis(20),
            Duration::from_millis(500),
        );
        // 25 intervals; a busy CI machine may lose a few.
        assert!((10..=26).contains(&pings), "{pings} pings in 25 intervals");
    }

    #[test]
    fn a_wedged_replica_stops_the_pings() {
        // 20 intervals: three answers, then a replica that never answers.
        let (probes, pings) =
            keep_alive_with_wedge_after(3, Duration::from_millis(20), Duration::from_millis(400));
        assert_eq!(
            pings, 3,
            "pings went on after the replica stopped answering"
        );
        assert!(probes > 5, "the loop stopped probing: {probes} probes");
    }

    #[test]
    fn a_stopped_replica_ends_the_loop() {
        crate::runtime::block_on(async {
            let ended = futures_lite::future::or(
                async {
                    keep_alive(
                        Duration::from_millis(10),
                        || async { None::<()> },
                        || async { panic!("pinged for a stopped replica") },
                    )
                    .await;
                    true
                },
                async {
                    async_io::Timer::after(Duration::from_secs(5)).await;
                    false
                },
            )
            .await;
            assert!(ended, "keep_alive did not return when the replica stopped");
        });
    }
}
