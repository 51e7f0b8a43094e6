//! One verified, resumable transfer.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256, Sha512};
use upkeep_types::{ContentFile, HResult};

use crate::cache::{key, ContentCache};

/// Retry, backoff and timeout settings.
#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// Attempts after the first one. Default 5.
    pub retries: u32,
    /// First backoff; it doubles per retry up to 5 s. Default 200 ms.
    pub backoff: Duration,
    /// A transfer that receives nothing for this long is retried (a low-speed timeout,
    /// not a whole-body timeout). Default 30 s.
    pub stall_timeout: Duration,
    /// TCP connect timeout. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            retries: 5,
            backoff: Duration::from_millis(200),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// WUA's download phases, as they really happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Looking at the cache, connecting.
    Initializing,
    /// Receiving bytes.
    Downloading,
    /// Hashing the complete file.
    Verifying,
}

/// A progress report of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferProgress {
    /// The phase.
    pub phase: Phase,
    /// Bytes of the file present (including resumed ones).
    pub bytes_done: u64,
    /// The signed length.
    pub bytes_total: u64,
    /// Bytes received over the network by this transfer so far.
    pub bytes_received: u64,
}

/// Why a transfer failed. Nothing unverified is ever in the cache's `objects/`.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Abort was requested; the partial file is kept for resuming.
    #[error("{path}: aborted")]
    Aborted {
        /// Target path.
        path: String,
    },
    /// Every mirror answered 404/410.
    #[error("{path}: not found on any of {mirrors} mirror(s)")]
    NotFound {
        /// Target path.
        path: String,
        /// Mirrors tried.
        mirrors: usize,
    },
    /// The network failed on every attempt; the last failure is given.
    #[error("{path}: {message}")]
    Network {
        /// Target path.
        path: String,
        /// The last failure.
        message: String,
    },
    /// The bytes did not match the signed hash on every attempt.
    #[error("{path}: the downloaded bytes do not match the signed {alg} hash")]
    HashMismatch {
        /// Target path.
        path: String,
        /// The algorithm that failed.
        alg: String,
    },
    /// The signed metadata has no hash this build can check.
    #[error("{path}: no sha256 or sha512 hash in the signed metadata")]
    NoUsableHash {
        /// Target path.
        path: String,
    },
    /// The cache could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The local file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl TransferError {
    /// The WUA code.
    pub fn hresult(&self) -> HResult {
        match self {
            TransferError::Aborted { .. } => HResult::WU_E_CALL_CANCELLED,
            TransferError::NotFound { .. } => HResult::WU_E_DM_URLNOTAVAILABLE,
            TransferError::Network { .. } => HResult::WU_E_DOWNLOAD_FAILED,
            TransferError::HashMismatch { .. } => HResult::WU_E_DM_INCORRECTFILEHASH,
            TransferError::NoUsableHash { .. } => HResult::WU_E_DM_UNKNOWNALGORITHM,
            TransferError::Io { .. } => HResult::WU_E_DM_UNEXPECTED,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How often waits look at the abort flag.
const SLICE: Duration = Duration::from_millis(25);

/// The transfer engine: one pooled HTTP client and a cache.
#[derive(Clone, Debug)]
pub struct Engine {
    client: reqwest::Client,
    cache: ContentCache,
    opts: TransferOptions,
}

enum Attempt {
    Complete,
    Retry(TransferError),
}

impl Engine {
    /// An engine over `cache`. Honours the `HTTP(S)_PROXY`/`NO_PROXY` variables.
    pub fn new(cache: ContentCache, opts: TransferOptions) -> Result<Engine, TransferError> {
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .user_agent(concat!("upkeep/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransferError::Network {
                path: String::new(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Engine {
            client,
            cache,
            opts,
        })
    }

    /// The cache.
    pub fn cache(&self) -> &ContentCache {
        &self.cache
    }

    /// Downloads `file` from the first mirror that has it (`urls` are full URLs of the same
    /// content), verifies it and commits it to the cache; returns the cached path.
    /// `abort` is polled between chunks and during waits.
    pub async fn fetch(
        &self,
        file: &ContentFile,
        urls: &[String],
        progress: &mut (dyn FnMut(TransferProgress) + Send),
        abort: &(dyn Fn() -> bool + Sync),
    ) -> Result<PathBuf, TransferError> {
        let what = file.path.clone();
        let key = key(file).ok_or_else(|| TransferError::NoUsableHash { path: what.clone() })?;
        let mut report = TransferProgress {
            phase: Phase::Initializing,
            bytes_done: 0,
            bytes_total: file.length,
            bytes_received: 0,
        };
        progress(report);
        if let Some(p) = self.cache.get(file) {
            report.bytes_done = file.length;
            progress(report);
            return Ok(p);
        }
        if urls.is_empty() {
            return Err(TransferError::NotFound {
                path: what,
                mirrors: 0,
            });
        }
        let part = self.cache.partial_path(&key);
        let mut not_found: HashSet<usize> = HashSet::new();
        let mut last = TransferError::Network {
            path: what.clone(),
            message: "no attempt was made".into(),
        };
        let mut backoff = self.opts.backoff;
        for attempt in 0..=self.opts.retries as usize {
            if attempt > 0 {
                self.sleep(backoff, abort, &what).await?;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let mirror = (0..urls.len())
                .map(|i| (attempt + i) % urls.len())
                .find(|i| !not_found.contains(i))
                .ok_or_else(|| TransferError::NotFound {
                    path: what.clone(),
                    mirrors: urls.len(),
                })?;
            match self
                .attempt(file, &key, &urls[mirror], &mut report, progress, abort)
                .await?
            {
                Attempt::Complete => {}
                Attempt::Retry(TransferError::NotFound { .. }) => {
                    not_found.insert(mirror);
                    if not_found.len() == urls.len() {
                        return Err(TransferError::NotFound {
                            path: what,
                            mirrors: urls.len(),
                        });
                    }
                    continue;
                }
                Attempt::Retry(e) => {
                    tracing::debug!(attempt, "{e}; retrying");
                    last = e;
                    continue;
                }
            }
            // Complete: verify, then commit by rename.
            report.phase = Phase::Verifying;
            progress(report);
            match verify(&part, file) {
                Ok(()) => {
                    let obj = self.cache.object_path(&key);
                    let f = std::fs::File::open(&part).map_err(io_err(&part))?;
                    f.sync_all().map_err(io_err(&part))?;
                    std::fs::rename(&part, &obj).map_err(io_err(&obj))?;
                    let _ = std::fs::remove_file(self.cache.meta_path(&key));
                    return Ok(obj);
                }
                Err(Some(alg)) => {
                    // Wrong bytes: start again from nothing (perhaps from another mirror).
                    let _ = std::fs::remove_file(&part);
                    let _ = std::fs::remove_file(self.cache.meta_path(&key));
                    last = TransferError::HashMismatch {
                        path: what.clone(),
                        alg,
                    };
                }
                Err(None) => return Err(TransferError::NoUsableHash { path: what }),
            }
        }
        Err(last)
    }

    async fn sleep(
        &self,
        d: Duration,
        abort: &(dyn Fn() -> bool + Sync),
        what: &str,
    ) -> Result<(), TransferError> {
        let mut left = d;
        while !left.is_zero() {
            if abort() {
                return Err(TransferError::Aborted { path: what.into() });
            }
            let s = left.min(SLICE);
            tokio::time::sleep(s).await;
            left -= s;
        }
        Ok(())
    }

    /// One request: resumes the partial file, appends what arrives, stops at the signed
    /// length. Returns `Complete` when the partial file has every byte.
    async fn attempt(
        &self,
        file: &ContentFile,
        key: &str,
        url: &str,
        report: &mut TransferProgress,
        progress: &mut (dyn FnMut(TransferProgress) + Send),
        abort: &(dyn Fn() -> bool + Sync),
    ) -> Result<Attempt, TransferError> {
        let what = &file.path;
        let retry = |message: String| {
            Ok(Attempt::Retry(TransferError::Network {
                path: what.clone(),
                message,
            }))
        };
        let part = self.cache.partial_path(key);
        let meta = self.cache.meta_path(key);
        let mut have = std::fs::metadata(&part).map_or(0, |m| m.len());
        let validator = std::fs::read_to_string(&meta)
            .ok()
            .filter(|v| !v.is_empty());
        if have > file.length || (have > 0 && validator.is_none()) {
            truncate(&part)?;
            have = 0;
        }
        report.bytes_done = have;
        if have == file.length {
            return Ok(Attempt::Complete);
        }
        let mut req = self.client.get(url);
        if have > 0 {
            req = req
                .header(reqwest::header::RANGE, format!("bytes={have}-"))
                .header(
                    reqwest::header::IF_RANGE,
                    validator.clone().unwrap_or_default(),
                );
        }
        let send = req.send();
        tokio::pin!(send);
        let mut waited = Duration::ZERO;
        let resp = loop {
            if abort() {
                return Err(TransferError::Aborted { path: what.clone() });
            }
            match tokio::time::timeout(SLICE, &mut send).await {
                Ok(Ok(r)) => break r,
                Ok(Err(e)) => return retry(describe(&e)),
                Err(_) => {
                    waited += SLICE;
                    if waited >= self.opts.stall_timeout {
                        return retry(format!("no response within {:?}", self.opts.stall_timeout));
                    }
                }
            }
        };
        let status = resp.status().as_u16();
        match status {
            206 => {
                let expected = format!("bytes {have}-{}/{}", file.length - 1, file.length);
                let got = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if got != expected {
                    truncate(&part)?;
                    return retry(format!(
                        "Content-Range {got:?}, expected {expected:?}; starting over"
                    ));
                }
            }
            200 => {
                if have > 0 {
                    // The server ignored the range or the file changed: start over.
                    truncate(&part)?;
                    have = 0;
                    report.bytes_done = 0;
                }
            }
            404 | 410 => {
                return Ok(Attempt::Retry(TransferError::NotFound {
                    path: what.clone(),
                    mirrors: 1,
                }))
            }
            416 => {
                truncate(&part)?;
                return retry("416 for the resume range; starting over".into());
            }
            s => return retry(format!("HTTP {s} from {url}")),
        }
        let new_validator = resp
            .headers()
            .get(reqwest::header::ETAG)
            .or_else(|| resp.headers().get(reqwest::header::LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match &new_validator {
            Some(v) => std::fs::write(&meta, v).map_err(io_err(&meta))?,
            None => {
                let _ = std::fs::remove_file(&meta);
            }
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .map_err(io_err(&part))?;
        report.phase = Phase::Downloading;
        progress(*report);
        let mut resp = resp;
        let mut idle = Duration::ZERO;
        while have < file.length {
            if abort() {
                out.flush().map_err(io_err(&part))?;
                return Err(TransferError::Aborted { path: what.clone() });
            }
            let chunk = match tokio::time::timeout(SLICE, resp.chunk()).await {
                Err(_) => {
                    idle += SLICE;
                    if idle >= self.opts.stall_timeout {
                        return retry(format!(
                            "stalled: no data for {:?} at byte {have}",
                            self.opts.stall_timeout
                        ));
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    return retry(format!(
                        "connection failed at byte {have}: {}",
                        describe(&e)
                    ))
                }
                Ok(Ok(None)) => {
                    return retry(format!(
                        "connection closed at byte {have} of {}",
                        file.length
                    ))
                }
                Ok(Ok(Some(c))) => c,
            };
            idle = Duration::ZERO;
            // Never past the signed length: the rest of an over-long body is not read.
            let take = (chunk.len() as u64).min(file.length - have) as usize;
            out.write_all(&chunk[..take]).map_err(io_err(&part))?;
            have += take as u64;
            report.bytes_done = have;
            report.bytes_received += take as u64;
            progress(*report);
        }
        out.flush().map_err(io_err(&part))?;
        Ok(Attempt::Complete)
    }
}

fn truncate(part: &Path) -> Result<(), TransferError> {
    match std::fs::remove_file(part) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TransferError::Io {
            path: part.to_path_buf(),
            source: e,
        }),
    }
}

/// Checks every signed hash; `Err(Some(alg))` names a mismatch, `Err(None)` means no hash
/// could be checked.
fn verify(part: &Path, file: &ContentFile) -> Result<(), Option<String>> {
    let mut sha256 = file
        .hashes
        .get("sha256")
        .map(|h| (Sha256::new(), h.to_ascii_lowercase()));
    let mut sha512 = file
        .hashes
        .get("sha512")
        .map(|h| (Sha512::new(), h.to_ascii_lowercase()));
    if sha256.is_none() && sha512.is_none() {
        return Err(None);
    }
    if file
        .hashes
        .iter()
        .any(|(a, _)| a != "sha256" && a != "sha512")
    {
        return Err(None);
    }
    let mut f = std::fs::File::open(part).map_err(|_| Some("sha256".to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|_| Some("sha256".to_string()))?;
        if n == 0 {
            break;
        }
        if let Some((h, _)) = &mut sha256 {
            h.update(&buf[..n]);
        }
        if let Some((h, _)) = &mut sha512 {
            h.update(&buf[..n]);
        }
    }
    if let Some((h, want)) = sha256 {
        if hex::encode(h.finalize()) != want {
            return Err(Some("sha256".into()));
        }
    }
    if let Some((h, want)) = sha512 {
        if hex::encode(h.finalize()) != want {
            return Err(Some("sha512".into()));
        }
    }
    Ok(())
}

fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
