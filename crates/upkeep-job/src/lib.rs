//! The generic job engine behind every asynchronous upkeep operation (search, download,
//! install), implementing the "Job semantics" of the design:
//!
//! - The work runs on its own thread. Callbacks run on a dispatcher thread that is neither
//!   the caller's nor the worker's; for one job they never run concurrently.
//! - Progress callbacks coalesce to the latest snapshot when the callback is slower than the
//!   work, and come at most every [`MIN_PROGRESS_INTERVAL`]. Every progress callback runs
//!   before the job completes: [`Job::is_completed`] (and `wait`, `take_result`) turn true
//!   only once the last snapshot has been delivered, and then the completion callback runs,
//!   exactly once, with `is_completed` already true.
//! - Inside a callback a caller may read the job, take [`Job::progress`], call
//!   [`Job::request_abort`], and take the result ([`Job::take_result`], the engine of
//!   `end_*`) from the completion callback. [`Job::clean_up`] from inside the job's own
//!   callback returns `WU_E_INVALID_OPERATION` instead of deadlocking. A panicking callback is
//!   caught and logged; the job goes on.
//! - [`Job::take_result`] blocks until the job is complete, may be called from any thread,
//!   and releases the caller's [`AsyncState`]; a second call returns
//!   `WU_E_INVALID_OPERATION`.
//! - [`Job::progress`] returns an owned snapshot that never changes after it is taken.
//! - [`Job::request_abort`] returns at once; the work sees it through
//!   [`JobContext::is_abort_requested`] or [`JobContext::abort_requested`].
//! - Dropping every handle of a running job does not cancel it.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use upkeep_types::HResult;

/// The caller's value attached to a job (WUA's `AsyncState`): read-only once attached,
/// released when the result is taken. Cheap to clone.
#[derive(Clone, Default)]
pub struct AsyncState(Option<Arc<dyn Any + Send + Sync>>);

impl AsyncState {
    /// Attaches `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> AsyncState {
        AsyncState(Some(Arc::new(value)))
    }
    /// No state.
    pub fn none() -> AsyncState {
        AsyncState(None)
    }
    /// The value, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|v| v.downcast_ref::<T>())
    }
    /// True when no state is attached (or it was released).
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for AsyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "AsyncState(..)"
        } else {
            "AsyncState(none)"
        })
    }
}

/// A misuse of a job handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// The WUA code (`WU_E_INVALID_OPERATION`).
    pub code: HResult,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {}

fn invalid(message: &str) -> JobError {
    JobError {
        code: HResult::WU_E_INVALID_OPERATION,
        message: message.to_string(),
    }
}

type ProgressFn<P, R> = Box<dyn Fn(&Job<P, R>, &P) + Send + Sync>;
type CompletedFn<P, R> = Box<dyn FnOnce(&Job<P, R>) + Send>;
type PanicFn<P, R> = Box<dyn FnOnce(&P, String) -> R + Send>;

struct State<P, R> {
    progress: P,
    /// The work panicked and no `on_panic` made a result: the panic's message.
    panicked: Option<String>,
    /// Bumped by every report; the dispatcher delivers when it differs from `delivered`.
    generation: u64,
    delivered: u64,
    /// The work has returned (its result is in `result`); the job completes once the
    /// dispatcher has delivered every progress snapshot.
    work_done: bool,
    /// `IsCompleted`: set by the dispatcher after the last progress callback, just before
    /// the completion callback.
    completed: bool,
    result: Option<R>,
    result_taken: bool,
    async_state: AsyncState,
    dispatch_done: bool,
    /// The dispatcher is blocked waiting for a new snapshot (so a report must wake it).
    dispatcher_waiting: bool,
    wakers: Vec<Waker>,
}

/// Progress callbacks of one job are at most this frequent: snapshots reported in between
/// coalesce into the latest (a UI redraws at 20 Hz; a transfer reports per chunk). The last
/// snapshot is still delivered before completion, without waiting.
pub const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);

struct Shared<P, R> {
    state: Mutex<State<P, R>>,
    changed: Condvar,
    abort: AtomicBool,
    abort_waiters: Mutex<Vec<Waker>>,
    callback_thread: Mutex<Option<ThreadId>>,
    started: Instant,
    /// The progress stream of [`Job::subscribe`]: fed by the dispatcher with the snapshots
    /// it delivers, dropped at completion (which ends every subscriber's stream).
    watch: Mutex<Option<tokio::sync::watch::Sender<P>>>,
}

/// A running or finished job. Cheap to clone; every clone is the same job. Dropping every
/// handle does not cancel the work.
pub struct Job<P, R> {
    shared: Arc<Shared<P, R>>,
}

impl<P, R> Clone for Job<P, R> {
    fn clone(&self) -> Self {
        Job {
            shared: self.shared.clone(),
        }
    }
}

impl<P, R> fmt::Debug for Job<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("completed", &lock(&self.shared.state).completed)
            .finish_non_exhaustive()
    }
}

/// What the work function sees: progress reporting and the abort flag.
pub struct JobContext<P, R> {
    shared: Arc<Shared<P, R>>,
}

impl<P, R> Clone for JobContext<P, R> {
    /// Another handle on the same job (for work that fans out to tasks).
    fn clone(&self) -> Self {
        JobContext {
            shared: self.shared.clone(),
        }
    }
}

impl<P: Clone + Send + Sync + 'static, R: Send + 'static> JobContext<P, R> {
    /// Publishes a new progress snapshot; the dispatcher delivers the latest one.
    pub fn report(&self, progress: P) {
        self.update(|p| *p = progress);
    }

    /// Changes the current snapshot in place and publishes it.
    pub fn update(&self, f: impl FnOnce(&mut P)) {
        let mut st = lock(&self.shared.state);
        f(&mut st.progress);
        st.generation += 1;
        // Only a dispatcher blocked for news needs a wake-up (a syscall): waiters for
        // completion are woken by completion, and a dispatcher pausing for
        // MIN_PROGRESS_INTERVAL wakes on its own.
        let wake = std::mem::take(&mut st.dispatcher_waiting);
        drop(st);
        if wake {
            self.shared.changed.notify_all();
        }
    }

    /// The current snapshot.
    pub fn progress(&self) -> P {
        lock(&self.shared.state).progress.clone()
    }

    /// True once [`Job::request_abort`] was called.
    pub fn is_abort_requested(&self) -> bool {
        self.shared.abort.load(Ordering::SeqCst)
    }

    /// A future that resolves when abort is requested (for `select!` in async work).
    pub fn abort_requested(&self) -> AbortRequested<P, R> {
        AbortRequested {
            shared: self.shared.clone(),
        }
    }
}

/// Resolves when abort is requested.
pub struct AbortRequested<P, R> {
    shared: Arc<Shared<P, R>>,
}

impl<P, R> Future for AbortRequested<P, R> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.abort.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        lock(&self.shared.abort_waiters).push(cx.waker().clone());
        if self.shared.abort.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the state inconsistent (every update is
    // a single assignment), so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Callbacks for [`Job::spawn`].
pub struct Callbacks<P, R> {
    on_progress: Option<ProgressFn<P, R>>,
    on_completed: Option<CompletedFn<P, R>>,
    on_panic: Option<PanicFn<P, R>>,
}

impl<P, R> Default for Callbacks<P, R> {
    fn default() -> Self {
        Callbacks {
            on_progress: None,
            on_completed: None,
            on_panic: None,
        }
    }
}

impl<P, R> Callbacks<P, R> {
    /// No callbacks.
    pub fn none() -> Self {
        Self::default()
    }
    /// Sets the progress callback.
    pub fn on_progress(mut self, f: impl Fn(&Job<P, R>, &P) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Box::new(f));
        self
    }
    /// Sets the completion callback.
    pub fn on_completed(mut self, f: impl FnOnce(&Job<P, R>) + Send + 'static) -> Self {
        self.on_completed = Some(Box::new(f));
        self
    }
    /// Sets what the job's result is when its work panics: `f(last progress, message)`
    /// (a caller reports the updates not finished as failed). Without it, `take_result`
    /// of a job whose work panicked is an `E_UNEXPECTED` error. Either way the job
    /// completes and its completion callback runs: nothing waits forever.
    pub fn on_panic(mut self, f: impl FnOnce(&P, String) -> R + Send + 'static) -> Self {
        self.on_panic = Some(Box::new(f));
        self
    }
}

impl<P: Clone + Send + Sync + 'static, R: Send + 'static> Job<P, R> {
    /// Starts `work` on its own thread with `initial` progress, `state` attached and
    /// `callbacks` delivered on a dispatcher thread. Fails only if the OS refuses a thread.
    pub fn spawn(
        name: &str,
        initial: P,
        state: AsyncState,
        mut callbacks: Callbacks<P, R>,
        work: impl FnOnce(&JobContext<P, R>) -> R + Send + 'static,
    ) -> std::io::Result<Job<P, R>> {
        let on_panic = callbacks.on_panic.take();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                progress: initial,
                panicked: None,
                generation: 0,
                delivered: 0,
                work_done: false,
                completed: false,
                result: None,
                result_taken: false,
                async_state: state,
                dispatch_done: false,
                dispatcher_waiting: false,
                wakers: Vec::new(),
            }),
            changed: Condvar::new(),
            abort: AtomicBool::new(false),
            abort_waiters: Mutex::new(Vec::new()),
            callback_thread: Mutex::new(None),
            started: Instant::now(),
            watch: Mutex::new(None),
        });
        let job = Job {
            shared: shared.clone(),
        };
        let dispatcher = job.clone();
        std::thread::Builder::new()
            .name(format!("{name}-callbacks"))
            .spawn(move || dispatcher.dispatch(callbacks))?;
        let worker_job = job.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-work"))
            .spawn(move || {
                let ctx = JobContext {
                    shared: worker_job.shared.clone(),
                };
                match catch_unwind(AssertUnwindSafe(|| work(&ctx))) {
                    Ok(r) => worker_job.complete(Some(r)),
                    Err(payload) => {
                        let msg = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".into());
                        tracing::error!("the job's work stopped on an internal error: {msg}");
                        let r = on_panic.map(|f| f(&ctx.progress(), msg.clone()));
                        if r.is_none() {
                            lock(&worker_job.shared.state).panicked = Some(msg);
                        }
                        worker_job.complete(r);
                    }
                }
            });
        if let Err(e) = spawned {
            // Nothing ran: finish the dispatcher without a result so no thread is left.
            let mut st = lock(&shared.state);
            st.work_done = true;
            st.completed = true;
            drop(st);
            shared.changed.notify_all();
            return Err(e);
        }
        Ok(job)
    }

    /// The work returned: the dispatcher delivers what progress is left, then completes.
    fn complete(&self, result: Option<R>) {
        let mut st = self.lock();
        st.result = result;
        st.work_done = true;
        drop(st);
        self.shared.changed.notify_all();
    }

    fn dispatch(&self, callbacks: Callbacks<P, R>) {
        *lock(&self.shared.callback_thread) = Some(std::thread::current().id());
        let Callbacks {
            on_progress,
            mut on_completed,
            ..
        } = callbacks;
        let mut last_delivery: Option<Instant> = None;
        loop {
            let mut st = self.lock();
            loop {
                let wanted = on_progress.is_some() || self.is_watched();
                let pending = wanted && st.generation != st.delivered;
                if st.work_done {
                    break;
                }
                if pending {
                    let wait = last_delivery
                        .map(|t| MIN_PROGRESS_INTERVAL.saturating_sub(t.elapsed()))
                        .unwrap_or_default();
                    if wait.is_zero() {
                        break;
                    }
                    st = self
                        .shared
                        .changed
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                st.dispatcher_waiting = true;
                st = self
                    .shared
                    .changed
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner());
                st.dispatcher_waiting = false;
            }
            if (on_progress.is_some() || self.is_watched()) && st.generation != st.delivered {
                // Deliver the latest snapshot only: slower callbacks see fewer, newer ones.
                let snapshot = st.progress.clone();
                st.delivered = st.generation;
                drop(st);
                last_delivery = Some(Instant::now());
                if let Some(tx) = lock(&self.shared.watch).as_ref() {
                    tx.send_replace(snapshot.clone());
                }
                if let Some(cb) = &on_progress {
                    if catch_unwind(AssertUnwindSafe(|| cb(self, &snapshot))).is_err() {
                        tracing::error!("a progress callback panicked; the job goes on");
                    }
                }
                continue;
            }
            // The work is done and every snapshot delivered: now the job is complete, and
            // every progress stream ends.
            st.completed = true;
            let wakers = std::mem::take(&mut st.wakers);
            drop(lock(&self.shared.watch).take());
            drop(st);
            self.shared.changed.notify_all();
            wakers.into_iter().for_each(Waker::wake);
            if let Some(cb) = on_completed.take() {
                if catch_unwind(AssertUnwindSafe(|| cb(self))).is_err() {
                    tracing::error!("a completion callback panicked");
                }
            }
            break;
        }
        drop(on_progress);
        let mut st = self.lock();
        st.dispatch_done = true;
        drop(st);
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State<P, R>> {
        lock(&self.shared.state)
    }

    /// `IsCompleted`.
    pub fn is_completed(&self) -> bool {
        self.lock().completed
    }

    /// `GetProgress`: an owned snapshot.
    pub fn progress(&self) -> P {
        self.lock().progress.clone()
    }

    /// `AsyncState`; empty after the result was taken.
    pub fn async_state(&self) -> AsyncState {
        self.lock().async_state.clone()
    }

    /// `RequestAbort`: returns at once; a no-op after completion.
    pub fn request_abort(&self) {
        if self.is_completed() {
            return;
        }
        self.shared.abort.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(&mut *lock(&self.shared.abort_waiters));
        waiters.into_iter().for_each(Waker::wake);
    }

    /// True once abort was requested (before completion).
    pub fn is_abort_requested(&self) -> bool {
        self.shared.abort.load(Ordering::SeqCst)
    }

    /// When the job started.
    pub fn started(&self) -> Instant {
        self.shared.started
    }

    fn in_own_callback(&self) -> bool {
        *lock(&self.shared.callback_thread) == Some(std::thread::current().id())
    }

    /// Waits up to `timeout` for completion; true if the job is complete.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while !st.completed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Completes when the job does (for Rust `async` callers).
    pub fn wait(&self) -> WaitCompleted<P, R> {
        WaitCompleted { job: self.clone() }
    }

    /// The job's result, once it is complete (for Rust `async` callers): what
    /// [`take_result`](Self::take_result) returns, without blocking a thread. Taking it
    /// twice, by either, is `WU_E_INVALID_OPERATION`.
    pub async fn result(&self) -> Result<R, JobError> {
        self.wait().await;
        self.take_result()
    }

    /// A progress stream with `tokio::sync::watch` semantics: `borrow()` is the latest
    /// snapshot (the current one at subscription), `changed().await` waits for a newer one
    /// (snapshots coalesce as for progress callbacks, the last one always arrives), and
    /// the stream ends (`changed()` is an error) once the job is complete and its last
    /// snapshot was seen. Subscribing to a complete job gives its last snapshot, ended.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<P> {
        let st = self.lock();
        let mut w = lock(&self.shared.watch);
        if st.completed {
            let (tx, rx) = tokio::sync::watch::channel(st.progress.clone());
            drop(tx);
            return rx;
        }
        let tx = w.get_or_insert_with(|| tokio::sync::watch::channel(st.progress.clone()).0);
        tx.send_replace(st.progress.clone());
        let rx = tx.subscribe();
        drop(w);
        drop(st);
        // A dispatcher asleep with nothing to deliver learns that someone now listens.
        self.shared.changed.notify_all();
        rx
    }

    fn is_watched(&self) -> bool {
        lock(&self.shared.watch)
            .as_ref()
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// `CleanUp`: waits for the job and for its callbacks to finish, after which the
    /// callbacks are released. From inside the job's own callback it returns
    /// `WU_E_INVALID_OPERATION` instead of deadlocking.
    pub fn clean_up(&self) -> Result<(), JobError> {
        if self.in_own_callback() {
            return Err(invalid(
                "clean_up cannot be called from the job's own callback",
            ));
        }
        let mut st = self.lock();
        while !st.dispatch_done {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// The engine of `end_*`: blocks until the job is complete, then returns its result and
    /// releases the caller's state. A second call returns `WU_E_INVALID_OPERATION`, and so
    /// does a call from a progress callback of the job before it is complete (the job
    /// completes only after its progress callbacks, so waiting there would never end).
    pub fn take_result(&self) -> Result<R, JobError> {
        if self.in_own_callback() && !self.is_completed() {
            return Err(invalid(
                "take_result cannot wait inside the job's own progress callback (the job completes after its progress callbacks); call it from the completion callback",
            ));
        }
        let mut st = self.lock();
        if st.result_taken {
            return Err(invalid(
                "the result of this job was already taken (end_* called twice)",
            ));
        }
        while !st.completed {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        if st.result_taken {
            return Err(invalid(
                "the result of this job was already taken (end_* called twice)",
            ));
        }
        st.result_taken = true;
        st.async_state = AsyncState::none();
        if let Some(msg) = st.panicked.take() {
            return Err(JobError {
                code: HResult::E_UNEXPECTED,
                message: format!("the job stopped on an internal error: {msg}"),
            });
        }
        st.result
            .take()
            .ok_or_else(|| invalid("the job ended without a result"))
    }
}

/// Resolves when the job completes.
pub struct WaitCompleted<P, R> {
    job: Job<P, R>,
}

impl<P: Clone + Send + Sync + 'static, R: Send + 'static> Future for WaitCompleted<P, R> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.job.lock();
        if st.completed {
            Poll::Ready(())
        } else {
            st.wakers.push(cx.waker().clone());
            Poll::Pending
        }
    }
}
