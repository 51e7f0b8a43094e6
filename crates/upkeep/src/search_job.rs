//! `begin_search` / `end_search`: WUA's asynchronous search (`ISearchJob`) on the job engine.

use upkeep_job::{Callbacks, Job};
use upkeep_types::{HResult, OperationResultCode};

pub use upkeep_job::AsyncState;

use crate::error::{Error, Result};
use crate::session::UpdateSearcher;
use crate::SearchResult;

/// `ISearchCompletedCallbackArgs`: reserved, no members.
#[derive(Debug, Default)]
pub struct SearchCompletedCallbackArgs {
    _reserved: (),
}

callback_trait!(
    /// `ISearchCompletedCallback`. Closures `Fn(&SearchJob, &SearchCompletedCallbackArgs)`
    /// implement it; pass `()` for no callback.
    SearchCompletedCallback(SearchJob, SearchCompletedCallbackArgs),
    /// Called once, on the job's callback thread, when the search has completed.
);

type Inner = Job<(), Result<SearchResult>>;

/// WUA's `ISearchJob`: a search running in the background. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SearchJob(Inner);

impl SearchJob {
    /// `AsyncState`: the value given to `begin_search`, until `end_search` releases it.
    pub fn async_state(&self) -> AsyncState {
        self.0.async_state()
    }
    /// `IsCompleted`.
    pub fn is_completed(&self) -> bool {
        self.0.is_completed()
    }
    /// `RequestAbort`: returns at once; the search then ends with `Aborted` at its next
    /// checkpoint (before and after the refresh).
    pub fn request_abort(&self) {
        self.0.request_abort()
    }
    /// `CleanUp`: waits for the search and its callback to finish, then releases the
    /// callback. From inside the job's own callback: `WU_E_INVALID_OPERATION`.
    pub fn clean_up(&self) -> Result<()> {
        Ok(self.0.clean_up()?)
    }
    /// Waits up to `timeout`; true if the search has completed.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        self.0.wait_timeout(timeout)
    }
    /// Completes when the search does.
    pub async fn wait(&self) {
        self.0.wait().await
    }
    /// The search's result once it is complete, for `async` callers: what `end_search`
    /// returns (and, as it, releases `AsyncState`); taken once, by either.
    pub async fn result(&self) -> Result<SearchResult> {
        self.0.result().await?
    }
}

/// `job.await`: the search's result, as [`SearchJob::result`] gives it (taken once;
/// `end_search` afterwards is `WU_E_INVALID_OPERATION`).
impl std::future::IntoFuture for SearchJob {
    type Output = Result<SearchResult>;
    type IntoFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<SearchResult>> + Send>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.result().await })
    }
}

fn aborted() -> SearchResult {
    SearchResult::new(OperationResultCode::Aborted, Default::default(), Vec::new())
}

impl UpdateSearcher {
    /// `BeginSearch`: starts a search in the background and returns at once. Invalid
    /// criteria surface from [`UpdateSearcher::end_search`], as in WUA.
    ///
    /// ```no_run
    /// # fn f(searcher: upkeep::UpdateSearcher) -> upkeep::Result<()> {
    /// use upkeep::AsyncState;
    /// let job = searcher.begin_search(
    ///     "IsInstalled=0",
    ///     |job: &upkeep::SearchJob, _args: &upkeep::SearchCompletedCallbackArgs| {
    ///         println!("done: {}", job.is_completed());
    ///     },
    ///     AsyncState::new(7u32),
    /// )?;
    /// let result = searcher.end_search(&job)?;
    /// # Ok(()) }
    /// ```
    pub fn begin_search(
        &self,
        criteria: &str,
        on_completed: impl SearchCompletedCallback,
        state: AsyncState,
    ) -> Result<SearchJob> {
        let searcher = self.clone();
        let criteria = criteria.to_string();
        let callbacks = Callbacks::none().on_completed(move |job: &Inner| {
            on_completed.invoke(
                &SearchJob(job.clone()),
                &SearchCompletedCallbackArgs::default(),
            )
        });
        let job = Job::spawn("upkeep-search", (), state, callbacks, move |ctx| {
            if ctx.is_abort_requested() {
                return Ok(aborted());
            }
            let result = searcher.search(&criteria);
            if ctx.is_abort_requested() {
                return Ok(aborted());
            }
            result
        })
        .map_err(|e| {
            Error::new(
                HResult::E_FAIL,
                format!("cannot start a search thread: {e}"),
            )
        })?;
        Ok(SearchJob(job))
    }

    /// `EndSearch`: waits for the job, returns its result and releases its state. Criteria
    /// and repository errors of the search surface here; a second call for the same job is
    /// `WU_E_INVALID_OPERATION`.
    pub fn end_search(&self, job: &SearchJob) -> Result<SearchResult> {
        job.0.take_result()?
    }
}
