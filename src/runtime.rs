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

use std::future::Future;
use std::sync::LazyLock;

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
