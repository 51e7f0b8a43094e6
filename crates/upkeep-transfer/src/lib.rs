//! upkeep's transfer engine: downloads content whose length and hashes come from signed
//! metadata into a content-addressed cache, resuming and retrying until the bytes are right
//! or a precise error says why not.
//!
//! - **Cache.** `objects/<sha256>` holds verified content; a file appears there only by
//!   rename after its hashes matched. `partial/<sha256>.part` holds an unfinished transfer
//!   and `partial/<sha256>.meta` the validator (`ETag` or `Last-Modified`) it was fetched
//!   with, so a transfer resumes across process restarts.
//! - **Resume.** A partial file is continued with `Range: bytes=N-` and `If-Range`; a `206`
//!   must carry the matching `Content-Range`; a `200` (server ignored the range, or the file
//!   changed) restarts from zero.
//! - **Never past the signed length.** Bytes beyond it are not read, let alone written.
//! - **Retries** with exponential backoff on dropped connections, stalls (no data for
//!   [`TransferOptions::stall_timeout`], not a whole-body timeout), 5xx, short bodies and
//!   hash mismatches, rotating through mirrors; a `404` from every mirror is final.
//! - **Abort** is honoured between chunks and while waiting; the partial file is kept.

mod cache;
mod fetch;
mod pipeline;
mod sched;

pub use cache::{key as cache_key, ContentCache};
pub use fetch::{Engine, Phase, TransferError, TransferOptions, TransferProgress};
