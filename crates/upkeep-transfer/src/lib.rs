//! upkeep's transfer engine: downloads content whose length and hashes come from signed
//! metadata into a content-addressed cache, resuming and retrying until the bytes are right
//! or a precise error says why not.
//!
//! - **Engine.** One per session: a pooled `reqwest` client (rustls; `HTTP(S)_PROXY`,
//!   `ALL_PROXY`, `NO_PROXY` honoured) on a current-thread tokio runtime of its own thread,
//!   and a queue of [`TransferOptions::parallel`] slots granted highest
//!   [`DownloadPriority`](upkeep_types::DownloadPriority) first, then in request order. `Low`
//!   transfers may share a bandwidth cap.
//! - **Cache.** `objects/<sha256>` holds verified content; a file appears there only by
//!   rename after its hashes matched. `partial/<sha256>.part` holds an unfinished large
//!   transfer (locked with `flock` while one runs, so two transfers of the same content, in
//!   one process or two, never interleave) and `partial/<sha256>.meta` the validator (`ETag`
//!   or `Last-Modified`) it was fetched with, so it resumes across process restarts. Small
//!   files (below [`TransferOptions::inline_below`]) are received in memory, verified, and
//!   only then written and renamed into place.
//! - **Hashing while streaming.** Large transfers feed a writer thread and a hasher thread
//!   through bounded channels; the receiving thread only moves buffers. Memory is bounded
//!   whatever the file size.
//! - **Resume.** A partial file is continued with `Range: bytes=N-` and `If-Range`; a `206`
//!   must carry the matching `Content-Range`; a `200` (server ignored the range, or the file
//!   changed) restarts from zero.
//! - **Never past the signed length.** Bytes beyond it are not read, let alone written.
//! - **Retries** with exponential backoff on dropped connections, stalls (no data for
//!   [`TransferOptions::stall_timeout`], not a whole-body timeout), 5xx, short bodies and
//!   hash mismatches, rotating through mirrors; a `404` from every mirror is final.
//! - **Abort** is honoured between chunks and every 25 ms of any wait; a large transfer's
//!   partial file is kept.
//! - **Durability.** No fsync per file: [`Engine::sync`] flushes the cache once per job.

mod cache;
mod fetch;
mod pipeline;
mod sched;

pub use cache::{key as cache_key, ContentCache};
pub use fetch::{
    Engine, Imported, Phase, Runtime, TransferError, TransferOptions, TransferProgress,
};
