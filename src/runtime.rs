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
//! thread parks while the node is idle, and the async-io thread alone waits
//! in epoll; only under load (a run of wakes close together) does it wait in the
//! reactor itself, which saves a thread hop per socket event. Raft's tick
//! is a [`Clock`] that this thread runs itself, when its park times out (under
//! load, when the one reactor timer it keeps fires), not a reactor timer or a
//! thread of its own per tick, and work that blocks runs on this
//! module's worker threads ([`unblock`]), which never wake while idle.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{future, FutureExt as _};

use crate::error::Error;

/// The most worker threads [`unblock`] keeps. A job beyond them waits for
/// one to finish, so the bound is high: some jobs wait (a listing for its
/// share of the buffer budget, up to the request timeout), and a short cap
/// would queue quick reads behind them. Idle workers cost no wakeups.
const MAX_WORKERS: usize = 128;

type Job = Box<dyn FnOnce() + Send>;

/// The worker threads of [`unblock`]: they wait on a channel without a
/// timeout, so an idle node's workers never wake. (The `blocking` crate's
/// threads wake every 500 ms to check whether to exit, which was a tenth of
/// an idle node's wakeups.)
struct Workers {
    jobs: flume::Sender<Job>,
    queue: flume::Receiver<Job>,
    /// Workers waiting for a job and not yet claimed by a submitter.
    idle: std::sync::atomic::AtomicUsize,
    threads: std::sync::atomic::AtomicUsize,
}

static WORKERS: LazyLock<Workers> = LazyLock::new(|| {
    let (jobs, queue) = flume::unbounded();
    Workers {
        jobs,
        queue,
        idle: 0.into(),
        threads: 0.into(),
    }
});

impl Workers {
    fn submit(&'static self, job: Job) {
        use std::sync::atomic::Ordering::SeqCst;
        let claimed = self
            .idle
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !claimed && self.threads.load(SeqCst) < MAX_WORKERS {
            let n = self.threads.fetch_add(1, SeqCst) + 1;
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{n}"))
                .spawn(move || self.work());
            if let Err(e) = spawned {
                self.threads.fetch_sub(1, SeqCst);
                log::warn!("cannot start a worker thread ({e}); the job waits for a running one");
            }
        }
        // The queue lives as long as the process: sending cannot fail.
        let _ = self.jobs.send(job);
    }

    fn work(&'static self) {
        use std::sync::atomic::Ordering::SeqCst;
        while let Ok(job) = self.queue.recv() {
            job();
            self.idle.fetch_add(1, SeqCst);
        }
    }
}

/// Runs `f` on a worker thread, off the executor, and returns its result: for
/// file I/O and other work that blocks. A panic in `f` resumes in the caller.
pub async fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = flume::bounded(1);
    WORKERS.submit(Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    }));
    match rx.recv_async().await {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The worker ran the job, which always sends.
        Err(_) => unreachable!("a worker dropped a job unfinished"),
    }
}

/// A spawned task. Dropping it cancels the task; call `detach` to let it run.
pub type Task<T> = async_executor::Task<T>;

static EXECUTOR: LazyLock<async_executor::Executor<'static>> =
    LazyLock::new(async_executor::Executor::new);

/// Spawns a task. It runs while some thread is inside [`block_on`].
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    EXECUTOR.spawn(future)
}

/// Runs the executor on the current thread until `future` completes. When
/// no task is ready, the thread runs what the registered [`Clock`]s have
/// due and parks until the earliest of their next deadlines, or until a
/// task wakes. When it wakes, it runs the clocks again before any task, so
/// that what fell due while it was parked comes first.
///
/// Under load (woken from outside, by I/O or another thread rather than by
/// its own clocks and tasks, at least 10 times, each within 1 ms of the
/// last, over 2 ms or more) the thread waits in the reactor itself instead of
/// parking, until 5 ms pass without such a wake: a socket event then runs
/// its task on this thread at once, rather than waking the
/// async-io thread first and this one after. A reactor timer then stands in
/// for the clocks' deadline. An idle node's traffic (heartbeats, probes)
/// does not come that close together in a cluster of up to 10 nodes, so at
/// rest the async-io thread alone waits in epoll.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    let (parker, unparker) = parking::pair();
    let owner = std::thread::current().id();
    let outside = Arc::new(AtomicBool::new(false));
    let waker = Waker::from(Arc::new(CountingWaker {
        owner,
        outside: outside.clone(),
        inner: Waker::from(unparker),
    }));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(EXECUTOR.run(future));
    let mut load = Load::default();
    loop {
        let polled = running(|| {
            run_clocks();
            future.as_mut().poll(&mut cx)
        });
        if let Poll::Ready(out) = polled {
            return out;
        }
        if load.busy() {
            load = Load::default();
            let busy = drive_reactor(future.as_mut(), owner, &outside);
            if let Some(out) = async_io::block_on(busy) {
                return out;
            }
            continue;
        }
        // The executor also returns after every 200 tasks it runs (it
        // yields), here or in `drive_reactor`, so a busy thread still runs
        // its clocks on time.
        // Listed as parked before the deadline is taken: a timer another
        // thread adds after that unparks this one.
        let _parked = Parked::enter(owner, &waker);
        match running(run_clocks) {
            Some(deadline) => {
                parker.park_deadline(deadline);
            }
            None => parker.park(),
        }
        if outside.swap(false, Ordering::AcqRel) {
            load.woken(Instant::now());
        }
    }
}

thread_local! {
    /// Set while the thread inside [`block_on`] runs its clocks and tasks:
    /// a wake it makes then is its own doing, not load.
    static RUNNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`RUNNING`] set.
fn running<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            RUNNING.with(|r| r.set(self.0));
        }
    }
    let before = RUNNING.with(|r| r.replace(true));
    let _reset = Reset(before);
    f()
}

/// The waker [`block_on`] gives the executor: it wakes `inner` (the park,
/// or async-io's wait in the reactor) and notes in `outside` a wake that
/// did not come from the thread's own clocks and tasks.
struct CountingWaker {
    owner: std::thread::ThreadId,
    outside: Arc<AtomicBool>,
    inner: Waker,
}

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let own = RUNNING.with(|r| r.get()) && std::thread::current().id() == self.owner;
        if !own {
            self.outside.store(true, Ordering::Release);
        }
        self.inner.wake_by_ref();
    }
}

/// [`block_on`] waits in the reactor itself after a run of wakes from
/// outside at least this long, each within [`BUSY_GAP`] of the last, and at
/// least [`BUSY_WAKES`] of them. A heartbeat round's answers (one per
/// follower: 8 in a cluster of 9) come within a millisecond or two and then
/// nothing for a tick, so they do not make one in a cluster of up to 10
/// nodes (a leader of 11 or more could enter the mode on a round);
/// requests back to back do.
const BUSY_SPAN: Duration = Duration::from_millis(2);
/// See [`BUSY_SPAN`].
const BUSY_GAP: Duration = Duration::from_millis(1);
/// See [`BUSY_SPAN`].
const BUSY_WAKES: u32 = 10;
/// How long [`block_on`] keeps waiting in the reactor after the last wake
/// from outside.
const BUSY_LINGER: Duration = Duration::from_millis(5);

/// The current run of wakes from outside (see [`BUSY_SPAN`]).
#[derive(Default)]
struct Load {
    /// The run's first and last wake.
    run: Option<(Instant, Instant)>,
    wakes: u32,
}

impl Load {
    fn woken(&mut self, now: Instant) {
        match &mut self.run {
            Some((_, last)) if now.duration_since(*last) <= BUSY_GAP => {
                *last = now;
                self.wakes += 1;
            }
            _ => {
                self.run = Some((now, now));
                self.wakes = 1;
            }
        }
    }

    fn busy(&self) -> bool {
        self.run
            .is_some_and(|(first, last)| last.duration_since(first) >= BUSY_SPAN)
            && self.wakes >= BUSY_WAKES
    }
}

/// Runs the executor inside `async_io::block_on`, which waits for I/O in
/// the reactor on this thread. A reactor timer stands in for the park's
/// deadline: the clocks' next one, or the end of the linger. Returns the
/// executor's output, or `None` once nothing from outside woke the thread
/// for [`BUSY_LINGER`].
async fn drive_reactor<F: Future>(
    mut future: std::pin::Pin<&mut F>,
    owner: std::thread::ThreadId,
    outside: &Arc<AtomicBool>,
) -> Option<F::Output> {
    #[cfg(test)]
    BUSY_RUNS.with(|n| n.set(n.get() + 1));
    let inner = future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
    let waker = Waker::from(Arc::new(CountingWaker {
        owner,
        outside: outside.clone(),
        inner,
    }));
    let _parked = Parked::enter(owner, &waker);
    let waker = waker.clone();
    let mut timer = async_io::Timer::never();
    let mut armed: Option<Instant> = None;
    let mut last_wake = Instant::now();
    future::poll_fn(move |cx| {
        if outside.swap(false, Ordering::AcqRel) {
            last_wake = Instant::now();
        }
        let polled = running(|| {
            run_clocks();
            match future.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(out) => Err(out),
                Poll::Pending => Ok(run_clocks()),
            }
        });
        let deadline = match polled {
            Err(out) => return Poll::Ready(Some(out)),
            Ok(deadline) => deadline,
        };
        let now = Instant::now();
        let idle_at = last_wake + BUSY_LINGER;
        if now >= idle_at && !outside.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        let at = deadline.map_or(idle_at, |deadline| deadline.min(idle_at));
        // Arming a reactor timer interrupts the reactor's wait, so the timer
        // moves only to an earlier instant, or once it fired: each wake
        // moves the linger's end, and a timer that fires before it is
        // armed again then.
        if armed.is_none_or(|armed| at < armed || now >= armed) {
            timer.set_at(at);
            armed = Some(at);
        }
        if std::pin::Pin::new(&mut timer).poll(cx).is_ready() {
            // Already due: poll again at once.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
thread_local! {
    /// How many times this thread entered [`drive_reactor`] (for the tests).
    static BUSY_RUNS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The threads waiting in [`block_on`] (parked, or in the reactor), by the
/// waker that ends their wait. A [`sleep`] that becomes the earliest timer
/// wakes the others, so that none sleeps past it; the thread that polled
/// it reads the new deadline itself before it waits. (In the node only one
/// thread runs the executor.)
static PARKED: Mutex<Vec<(std::thread::ThreadId, Waker)>> = Mutex::new(Vec::new());

/// A thread's entry in [`PARKED`], removed on drop.
struct Parked<'a>(&'a Waker);

impl<'a> Parked<'a> {
    fn enter(owner: std::thread::ThreadId, waker: &'a Waker) -> Parked<'a> {
        let mut parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        parked.push((owner, waker.clone()));
        Parked(waker)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        let mut parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = parked.iter().position(|(_, w)| w.will_wake(self.0)) {
            parked.swap_remove(i);
        }
    }
}

/// Work that falls due at moments in time, run by the thread inside
/// [`block_on`] between its tasks. A clock fires without a thread or a
/// reactor timer of its own: when it is due, the executor's thread wakes
/// from its park by itself (under load, from the reactor, on the one timer
/// it keeps), which costs one wakeup where a timer thread that sends a
/// message costs two (its own and the executor's).
pub trait Clock: Send + Sync {
    /// Does what is due at `now`, which must not block; returns when the
    /// clock next has something to do, or `None` if nothing until a task
    /// changes its state (the thread runs the clocks again after any task
    /// has run).
    fn run_due(&self, now: Instant) -> Option<Instant>;
}

/// The clocks [`block_on`] runs.
static CLOCKS: Mutex<Vec<Arc<dyn Clock>>> = Mutex::new(Vec::new());

/// Adds a clock that [`block_on`] runs until the returned handle drops.
#[must_use = "the clock is removed when its handle drops"]
pub fn add_clock(clock: Arc<dyn Clock>) -> ClockHandle {
    CLOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(clock.clone());
    ClockHandle(clock)
}

/// A clock added by [`add_clock`]; dropping it removes the clock.
pub struct ClockHandle(Arc<dyn Clock>);

impl Drop for ClockHandle {
    fn drop(&mut self) {
        let mut clocks = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        clocks.retain(|c| !Arc::ptr_eq(c, &self.0));
    }
}

/// Runs every clock's due work and wakes the due [`sleep`]s; the earliest
/// next deadline.
fn run_clocks() -> Option<Instant> {
    let clocks = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let mut timers = TIMERS.lock().unwrap_or_else(|e| e.into_inner());
    if clocks.is_empty() && timers.is_empty() {
        return None;
    }
    let now = Instant::now();
    let mut due = Vec::new();
    while let Some(entry) = timers.first_entry() {
        if entry.key().0 > now {
            break;
        }
        due.push(entry.remove());
    }
    let next_timer = timers.first_key_value().map(|((at, _), _)| *at);
    // Woken outside the lock: nothing a wakeup does may wait on it.
    drop(timers);
    due.into_iter().for_each(Waker::wake);
    clocks
        .iter()
        .filter_map(|c| c.run_due(now))
        .chain(next_timer)
        .min()
}

/// The pending [`sleep`]s, by deadline (and a number that tells equal
/// deadlines apart).
static TIMERS: Mutex<BTreeMap<(Instant, u64), Waker>> = Mutex::new(BTreeMap::new());

/// Numbers the entries of [`TIMERS`].
static TIMER_IDS: AtomicU64 = AtomicU64::new(0);

/// Waits for `duration`, on the executor's own clock: the thread inside
/// [`block_on`] wakes the task when its park times out (under load, when
/// the reactor timer it keeps for its deadlines fires). An async-io timer
/// costs the reactor thread a wakeup to arm it and another to fire it, then
/// the executor's; this costs the executor's wakeup alone, which is what a
/// periodic wait on an idle node should cost. Only tasks of this executor
/// may await it: nothing else fires it.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Waits until `deadline`; see [`sleep`].
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

/// The future of [`sleep`].
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    /// Its entry in [`TIMERS`], once polled.
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let mut timers = TIMERS.lock().unwrap_or_else(|e| e.into_inner());
        match self.key.and_then(|key| timers.get_mut(&key)) {
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                let key = (self.deadline, TIMER_IDS.fetch_add(1, Ordering::Relaxed));
                timers.insert(key, cx.waker().clone());
                self.key = Some(key);
                let earliest = timers.first_key_value().is_some_and(|(k, _)| *k == key);
                drop(timers);
                if earliest {
                    let me = std::thread::current().id();
                    let parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
                    parked
                        .iter()
                        .filter(|(owner, _)| *owner != me)
                        .for_each(|(_, waker)| waker.wake_by_ref());
                }
            }
        }
        Poll::Pending
    }
}

impl Sleep {
    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            TIMERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Watches a task the node cannot run without. If it fails, or ends while
/// `shutdown` is still open, `fatal` receives one error naming `what` and
/// the cause; the node then exits 1 (a node whose replica or transport has
/// died must not go on answering handshakes and `/health`). A panic, in the
/// binary, never gets here: the panic hook ends the process at once with one
/// sentence ([`panic_error`]); where no hook does (a library user, a unit
/// test), a panic is reported like a failure.
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

/// Turns a panic message into the error it stands for.
pub type PanicContext = Box<dyn Fn(&str) -> Error>;

thread_local! {
    /// What a panic on this thread means, while a [`with_panic_context`]
    /// call runs.
    static PANIC_CONTEXT: std::cell::RefCell<Option<PanicContext>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `context` telling the panic hook what a panic inside it
/// means: redb may panic on a file damaged outside of it, and that is a
/// damaged data dir (exit 1 naming the file), not a bug of ours.
pub fn with_panic_context<T>(context: PanicContext, f: impl FnOnce() -> T) -> T {
    let previous = PANIC_CONTEXT.with(|c| c.replace(Some(context)));
    let out = f();
    PANIC_CONTEXT.with(|c| *c.borrow_mut() = previous);
    out
}

/// The error a panic stands for, for the panic hook: the context set by
/// [`with_panic_context`] on this thread, else an internal error naming the
/// place and the message.
pub fn panic_error(message: &str, place: &str) -> Error {
    PANIC_CONTEXT
        .try_with(|c| c.borrow().as_ref().map(|make| make(message)))
        .ok()
        .flatten()
        .unwrap_or_else(|| Error::Internal(format!("panicked{place}: {message}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_end_in_deadline_order_and_a_dropped_one_leaves_no_timer() {
        let start = Instant::now();
        let order = block_on(async {
            let (tx, rx) = flume::unbounded();
            let late = spawn({
                let tx = tx.clone();
                async move {
                    sleep(Duration::from_millis(40)).await;
                    let _ = tx.send(40);
                }
            });
            let early = spawn(async move {
                sleep(Duration::from_millis(10)).await;
                let _ = tx.send(10);
            });
            late.await;
            early.await;
            rx.drain().collect::<Vec<_>>()
        });
        assert_eq!(order, [10, 40]);
        assert!(start.elapsed() >= Duration::from_millis(40));
        let key = block_on(async {
            let mut long = sleep(Duration::from_secs(3600));
            assert!(futures_lite::future::poll_once(&mut long).await.is_none());
            long.key.expect("a pending sleep is registered")
        });
        let timers = TIMERS.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!timers.contains_key(&key), "a dropped sleep left its timer");
    }

    #[test]
    fn a_run_of_wakes_makes_the_thread_busy_and_a_heartbeat_round_does_not() {
        let start = Instant::now();
        let mut load = Load::default();
        // A leader of nine: eight answers, close together or spread over
        // 3 ms, then nothing until the next heartbeat.
        for round in 0..10u32 {
            let at = start + Duration::from_millis(100) * round;
            let apart = Duration::from_micros(if round % 2 == 0 { 100 } else { 450 });
            for i in 0..8 {
                load.woken(at + apart * i);
            }
            assert!(!load.busy(), "round {round}");
        }
        // A request every 1.5 ms: never close enough together.
        let later = start + Duration::from_secs(2);
        for i in 0..20 {
            load.woken(later + Duration::from_micros(1500) * i);
            assert!(!load.busy(), "wake {i}");
        }
        // The index of the first wake, `apart` from the last, that finds
        // the thread busy.
        let first_busy = |apart: Duration| {
            let mut load = Load::default();
            (0..40u32).find(|&i| {
                load.woken(start + Duration::from_secs(3) + apart * i);
                load.busy()
            })
        };
        // Requests back to back, every 0.3 ms: busy from the 10th wake (the
        // span is 2.7 ms by then).
        assert_eq!(first_busy(Duration::from_micros(300)), Some(9));
        // Every 0.1 ms: 10 wakes span only 0.9 ms; busy once they span 2 ms.
        assert_eq!(first_busy(Duration::from_micros(100)), Some(20));
    }

    /// The times the async-io thread was put on a CPU (schedstat).
    fn reactor_thread_slices() -> u64 {
        let mut found = None;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() == "async-io" {
                let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap();
                let slices = stat.split_whitespace().nth(2).and_then(|n| n.parse().ok());
                found = Some(slices.expect("schedstat's third field"));
            }
        }
        found.expect("an async-io thread")
    }

    #[test]
    fn under_load_the_thread_waits_for_io_itself_and_still_runs_its_clocks() {
        use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
        use std::io::{Read as _, Write as _};
        /// Counts its due runs on the test's thread, on a 1 ms grid (a late
        /// run does not push the next ones back); other threads' `block_on`
        /// never see it due.
        struct EveryMs(std::thread::ThreadId, Mutex<Instant>, AtomicU64);
        impl Clock for EveryMs {
            fn run_due(&self, now: Instant) -> Option<Instant> {
                if std::thread::current().id() != self.0 {
                    return None;
                }
                let mut next = self.1.lock().unwrap();
                if now >= *next {
                    self.2.fetch_add(1, Ordering::Relaxed);
                    while *next <= now {
                        *next += Duration::from_millis(1);
                    }
                }
                Some(*next)
            }
        }
        let clock = Arc::new(EveryMs(
            std::thread::current().id(),
            Mutex::new(Instant::now()),
            0.into(),
        ));
        let added = add_clock(clock.clone());
        // The echo side is a thread of its own, off the executor: each byte
        // comes back at once, but a 2 after a pause of 4 ms.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_nodelay(true).unwrap();
            let mut byte = [0u8; 1];
            while stream.read_exact(&mut byte).is_ok() {
                if byte[0] == 2 {
                    std::thread::sleep(Duration::from_millis(4));
                }
                stream.write_all(&byte).unwrap();
            }
        });
        const ROUND_TRIPS: u64 = 3000;
        const PAUSES: u64 = 10;
        // The reactor, and with it the async-io thread, starts on first use.
        block_on(async_io::Timer::after(Duration::from_millis(1)));
        let before = reactor_thread_slices();
        // It fired the timer above, so it has run: a count of 0 would mean
        // this kernel keeps no schedstat, and the test would prove nothing.
        assert!(before > 0, "no schedstat for the async-io thread");
        let busy_before = BUSY_RUNS.with(|n| n.get());
        let runs_in_pauses = block_on(async {
            let mut stream = async_std::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut byte = [0u8; 1];
            let mut runs_in_pauses = 0;
            for i in 0..ROUND_TRIPS {
                let pause = i % (ROUND_TRIPS / PAUSES) == ROUND_TRIPS / PAUSES - 1;
                let runs = clock.2.load(Ordering::Relaxed);
                stream
                    .write_all(&[if pause { 2 } else { 1 }])
                    .await
                    .unwrap();
                stream.read_exact(&mut byte).await.unwrap();
                if pause {
                    runs_in_pauses += clock.2.load(Ordering::Relaxed) - runs;
                }
            }
            runs_in_pauses
        });
        drop(added);
        echo.join().unwrap();
        assert!(
            BUSY_RUNS.with(|n| n.get()) > busy_before,
            "the thread never waited in the reactor"
        );
        // Each round trip is two socket events here (our write's answer
        // readable, and the write itself at times). Had the async-io thread
        // waited for them, it would have woken for each: 5,981 times in one
        // run without the busy mode. Other tests' I/O only adds to it.
        let slices = reactor_thread_slices() - before;
        assert!(
            slices < ROUND_TRIPS / 2,
            "the async-io thread woke {slices} times in {ROUND_TRIPS} round trips"
        );
        // In each 4 ms pause the thread waits in the reactor (the linger is
        // 5 ms), where only the reactor timer set to the clock's deadline
        // wakes it: about 4 runs a pause (37-47 in a run). Without that
        // timer the clock runs when the answer wakes the thread (19 in a
        // run).
        assert!(
            runs_in_pauses * 2 >= 5 * PAUSES,
            "the clock ran {runs_in_pauses} times in {PAUSES} pauses of 4 ms"
        );
    }

    #[test]
    fn block_on_runs_a_clock_when_its_deadline_comes() {
        // Counts only its runs on this test's thread: other tests' threads
        // in block_on run every clock too.
        struct Every5ms(std::thread::ThreadId, std::sync::atomic::AtomicUsize);
        impl Clock for Every5ms {
            fn run_due(&self, now: Instant) -> Option<Instant> {
                if std::thread::current().id() == self.0 {
                    self.1.fetch_add(1, Ordering::Relaxed);
                }
                Some(now + Duration::from_millis(5))
            }
        }
        let clock = Arc::new(Every5ms(std::thread::current().id(), 0.into()));
        let added = add_clock(clock.clone());
        // The clock's deadlines wake the thread while it waits 100 ms for a
        // reactor timer.
        block_on(async_io::Timer::after(Duration::from_millis(100)));
        drop(added);
        let runs = clock.1.load(Ordering::Relaxed);
        assert!(
            runs >= 5,
            "the clock ran {runs} times in 100 ms of 5 ms deadlines"
        );
        // Dropping the handle removed it.
        let clocks = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!clocks
            .iter()
            .any(|c| std::ptr::addr_eq(Arc::as_ptr(c), Arc::as_ptr(&clock))));
    }

    #[test]
    fn a_panic_means_what_its_context_says_and_is_internal_otherwise() {
        let plain = panic_error("boom", " at src/x.rs:1");
        assert_eq!(plain.to_string(), "internal: panicked at src/x.rs:1: boom");
        assert_eq!(plain.exit_code(), 1);
        let inside = with_panic_context(
            Box::new(|msg: &str| Error::Storage {
                dir: "d".into(),
                reason: msg.to_string(),
            }),
            || panic_error("torn page", ""),
        );
        assert_eq!(inside.to_string(), "storage failure in d: torn page");
        // The context ends with the call.
        assert!(matches!(panic_error("x", ""), Error::Internal(_)));
    }

    #[test]
    fn a_supervised_task_that_fails_or_ends_early_is_reported() {
        let (shutdown_tx, shutdown) = flume::bounded::<()>(1);
        let (fatal_tx, fatal) = flume::unbounded();
        block_on(async {
            supervise(
                "the failing task",
                spawn(async { Err(Error::Internal("disk".into())) }),
                &shutdown,
                &fatal_tx,
            )
            .await;
            supervise("the quitter", spawn(async {}), &shutdown, &fatal_tx).await;
        });
        let errors: Vec<String> = fatal.try_iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "internal: disk",
                "internal: the quitter stopped unexpectedly"
            ]
        );
        // After shutdown, ending is what a task should do.
        drop(shutdown_tx);
        block_on(supervise(
            "the quitter",
            spawn(async {}),
            &shutdown,
            &fatal_tx,
        ));
        assert!(fatal.try_recv().is_err());
    }
}
