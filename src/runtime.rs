//! The executor: one thread runs every task.
//!
//! quorumd is built on async-std's I/O types, which sit on smol's reactor
//! (async-io), and spawns its tasks on one smol executor (async-executor, the
//! executor beneath async-std's own) that the caller's thread runs through
//! [`block_on`]. async-std's global executor is never started.
//!
//! Why not async-std's global executor: its worker threads park by driving the
//! reactor themselves, which keeps async-io's fallback thread spinning in short
//! sleeps after every event. With a Raft tick every 25 ms that cost about
//! 0.8 % of a core per idle node, four times the budget. Here the caller's
//! thread only parks; the async-io thread alone waits in epoll, and a tick is
//! one wakeup of each. Durable writes still run on the `blocking` pool, off
//! the executor.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::LazyLock;

use futures_lite::FutureExt as _;

use crate::error::Error;

/// A spawned task. Dropping it cancels the task; call `detach` to let it run.
pub type Task<T> = async_executor::Task<T>;

static EXECUTOR: LazyLock<async_executor::Executor<'static>> =
    LazyLock::new(async_executor::Executor::new);

/// Spawns a task. It runs while some thread is inside [`block_on`].
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    EXECUTOR.spawn(future)
}

/// Runs the executor on the current thread until `future` completes.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    futures_lite::future::block_on(EXECUTOR.run(future))
}

/// Watches a task the node cannot run without. If it panics, fails, or ends
/// while `shutdown` is still open, `fatal` receives one error naming `what`
/// and the cause; the node then exits 1 (a node whose replica or transport
/// has died must not go on answering handshakes and `/health`).
pub fn supervise<T: Outcome>(
    what: impl Into<String>,
    task: Task<T>,
    shutdown: &flume::Receiver<()>,
    fatal: &flume::Sender<Error>,
) -> Task<()> {
    let (what, shutdown, fatal) = (what.into(), shutdown.clone(), fatal.clone());
    spawn(async move {
        let error = match AssertUnwindSafe(task)
            .catch_unwind()
            .await
            .map(Outcome::into_result)
        {
            Ok(Ok(())) if shutdown.is_disconnected() => return,
            Ok(Ok(())) => Error::Internal(format!("{what} stopped unexpectedly")),
            Ok(Err(e)) => e,
            Err(panic) => Error::Internal(format!("{what} panicked: {}", panic_message(&*panic))),
        };
        let _ = fatal.send(error);
    })
}

/// What a supervised task returns: nothing, or a result.
pub trait Outcome: Send + 'static {
    /// The task's outcome as a result.
    fn into_result(self) -> std::result::Result<(), Error>;
}

impl Outcome for () {
    fn into_result(self) -> std::result::Result<(), Error> {
        Ok(())
    }
}

impl Outcome for std::result::Result<(), Error> {
    fn into_result(self) -> std::result::Result<(), Error> {
        self
    }
}

/// The text of a panic payload (`panic!` with a literal or a format).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs `future` until it completes (`Some`) or `shutdown` closes (`None`).
/// Every long-lived loop waits through this, so that dropping the shutdown
/// sender ends them all.
pub async fn or_shutdown<T>(
    shutdown: &flume::Receiver<()>,
    future: impl Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        let _ = shutdown.recv_async().await;
        None
    })
    .await
}
