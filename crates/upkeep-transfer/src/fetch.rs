//! One verified, resumable transfer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use upkeep_types::{ContentFile, DownloadPriority, HResult};

use crate::cache::{key, ContentCache};
use crate::pipeline::{Digests, Sink};
use crate::sched::{RateLimiter, Scheduler};

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
    /// The slowest acceptable transfer, in bytes per second, averaged over
    /// `min_rate_window` (curl's `--speed-limit` / `--speed-time`): a slower one — a
    /// server trickling bytes to hold the agent — is retried, so no transfer of a signed
    /// length L lasts longer than about L / `min_rate` + `min_rate_window` per attempt.
    /// 0 disables it. Default 1024 (1 KiB/s).
    pub min_rate: u64,
    /// The window `min_rate` is measured over. Default 30 s.
    pub min_rate_window: Duration,
    /// Free space a download leaves on the cache's filesystem (so that the state
    /// database, history and searches keep working on a full disk): a file that does not
    /// fit above it is not started. Default 64 MiB.
    pub disk_reserve: u64,
    /// Transfers running at once per engine; the rest wait in priority order. Default 8.
    pub parallel: usize,
    /// A bandwidth cap shared by every `Low` priority transfer, in bytes per second.
    /// Default none.
    pub low_priority_bytes_per_second: Option<u64>,
    /// Transfers with less than this many bytes to go are collected in memory, then written
    /// and hashed in one go on the blocking pool; larger ones stream through a writer and a
    /// hasher thread. Files smaller than
    /// this are not resumed across restarts (within a transfer they are). Default 1 MiB.
    pub inline_below: u64,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            retries: 5,
            backoff: Duration::from_millis(200),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            min_rate: 1024,
            min_rate_window: Duration::from_secs(30),
            disk_reserve: 64 << 20,
            parallel: 8,
            low_priority_bytes_per_second: None,
            inline_below: 1 << 20,
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
    /// The disk holding the cache has no room for the file (plus the reserve).
    #[error("{path}: {message}")]
    DiskFull {
        /// Target path.
        path: String,
        /// What was needed and what was free.
        message: String,
    },
    /// The cache could not be written.
    /// (The path and its cause are said in the message; not a `source()`, so that they
    /// are said once.)
    #[error("{0}")]
    Io(upkeep_fs::PathError),
}

impl From<upkeep_fs::PathError> for TransferError {
    fn from(e: upkeep_fs::PathError) -> TransferError {
        TransferError::Io(e)
    }
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
            TransferError::DiskFull { .. } => HResult::E_DISK_FULL,
            TransferError::Io(e)
                if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                HResult::E_DISK_FULL
            }
            TransferError::Io(_) => HResult::WU_E_DM_UNEXPECTED,
        }
    }
}

/// Copies a local repository's file into the cache: at most the signed length is read,
/// the signed hashes are checked, and only then is it renamed into `objects/`.
fn copy_verified(
    src: &Path,
    file: &ContentFile,
    tmp: &Path,
    obj: &Path,
    what: &str,
) -> Result<PathBuf, TransferError> {
    use std::io::{Read, Write};
    let mut input = match upkeep_fs::open(src) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TransferError::NotFound {
                path: what.to_string(),
                mirrors: 1,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let mut digests = Digests::for_file(file).ok_or_else(|| TransferError::NoUsableHash {
        path: what.to_string(),
    })?;
    let mut out = upkeep_fs::open_with(
        std::fs::OpenOptions::new().write(true).create_new(true),
        tmp,
    )
    .map_err(TransferError::from)?;
    let result = (|| {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = input.read(&mut buf).map_err(io_err(src))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > file.length {
                return Err(TransferError::Network {
                    path: what.to_string(),
                    message: format!("{} is longer than the signed length", src.display()),
                });
            }
            digests.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(tmp))?;
        }
        if total != file.length {
            return Err(TransferError::Network {
                path: what.to_string(),
                message: format!(
                    "{} has {total} bytes, the signed length is {}",
                    src.display(),
                    file.length
                ),
            });
        }
        digests
            .check(file)
            .map_err(|alg| TransferError::HashMismatch {
                path: what.to_string(),
                alg,
            })?;
        drop(out);
        upkeep_fs::rename(tmp, obj).map_err(TransferError::from)?;
        Ok(obj.to_path_buf())
    })();
    if result.is_err() {
        let _ = upkeep_fs::remove_file(tmp);
    }
    result
}

impl ContentCache {
    /// Copies the local file `src` into the cache as `file` (WUA's `CopyToCache`): at most
    /// the signed length is read, every signed hash is checked, and only then is it
    /// committed to `objects/` and stamped, like a download.
    pub fn import(&self, src: &Path, file: &ContentFile) -> Result<PathBuf, TransferError> {
        let key = key(file).ok_or_else(|| TransferError::NoUsableHash {
            path: file.path.clone(),
        })?;
        let obj = copy_verified(
            src,
            file,
            &self.temp_path(&key),
            &self.object_path(&key),
            &file.path,
        )?;
        self.stamp(&key).map_err(TransferError::from)?;
        Ok(obj)
    }
}

/// What [`ContentCache::import_candidate`] made of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Imported {
    /// Copied in as this content file, at this path of the cache.
    New(ContentFile, PathBuf),
    /// It is this content file, which the cache holds already.
    Already(ContentFile),
    /// Its length or SHA-256 is no candidate's.
    Unmatched,
    /// Not a regular file (what it is): a FIFO, a device, a symbolic link, a directory.
    NotRegular(&'static str),
}

impl ContentCache {
    /// Imports the local file `src` as whichever of `candidates` its length and SHA-256
    /// name (WUA's `CopyToCache`). It is opened once — `O_NOFOLLOW | O_NONBLOCK`, so that
    /// neither a symbolic link nor a FIFO renamed over it after a directory walk is
    /// followed or waited on — checked with `fstat` to be a regular file, then read from
    /// that one descriptor, once: hashed while it is copied to a temporary file in
    /// `partial/`, at most its length plus one byte. Only a file whose every signed hash
    /// matches is committed to `objects/` and stamped, like a download; anything else
    /// leaves nothing behind.
    pub fn import_candidate(
        &self,
        src: &Path,
        candidates: &[ContentFile],
    ) -> Result<Imported, TransferError> {
        use std::io::{Read, Write};
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let mut input = match upkeep_fs::open_with(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK),
            src,
        ) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Imported::NotRegular("a symbolic link"))
            }
            Err(e) => return Err(e.into()),
        };
        let meta = input.metadata().map_err(io_err(src))?;
        let t = meta.file_type();
        if !t.is_file() {
            return Ok(Imported::NotRegular(if t.is_fifo() {
                "a FIFO"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_socket() {
                "a socket"
            } else {
                "a device"
            }));
        }
        let len = meta.len();
        let same_len: Vec<&ContentFile> = candidates.iter().filter(|c| c.length == len).collect();
        if same_len.is_empty() {
            return Ok(Imported::Unmatched);
        }
        let tmp = self.temp_path("import");
        let mut out = upkeep_fs::open_with(
            std::fs::OpenOptions::new().write(true).create_new(true),
            &tmp,
        )
        .map_err(TransferError::from)?;
        let result = (|| {
            use sha2::Digest;
            let mut sha = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            let mut limited = (&mut input).take(len + 1);
            loop {
                let n = match limited.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(src)(e)),
                };
                total += n as u64;
                sha.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io_err(&tmp))?;
            }
            if total != len {
                return Err(TransferError::Network {
                    path: src.display().to_string(),
                    message: format!("changed while it was read ({len} bytes, then {total})"),
                });
            }
            let hex = hex::encode(sha.finalize());
            let Some(file) = same_len
                .iter()
                .find(|c| c.hashes.get("sha256") == Some(&hex))
            else {
                return Ok(Imported::Unmatched);
            };
            if file.hashes.iter().count() > 1 {
                // Other signed algorithms too: all of them, over the copy just written.
                let mut all =
                    Digests::for_file(file).ok_or_else(|| TransferError::NoUsableHash {
                        path: file.path.clone(),
                    })?;
                let mut copy = upkeep_fs::open(&tmp).map_err(TransferError::from)?;
                loop {
                    let n = copy.read(&mut buf).map_err(io_err(&tmp))?;
                    if n == 0 {
                        break;
                    }
                    all.update(&buf[..n]);
                }
                all.check(file).map_err(|alg| TransferError::HashMismatch {
                    path: file.path.clone(),
                    alg,
                })?;
            }
            let key = key(file).ok_or_else(|| TransferError::NoUsableHash {
                path: file.path.clone(),
            })?;
            if self.get(file).is_some() {
                return Ok(Imported::Already((*file).clone()));
            }
            drop(out);
            let obj = self.object_path(&key);
            upkeep_fs::rename(&tmp, &obj).map_err(TransferError::from)?;
            self.stamp(&key).map_err(TransferError::from)?;
            Ok(Imported::New((*file).clone(), obj))
        })();
        if !matches!(result, Ok(Imported::New(..))) {
            let _ = upkeep_fs::remove_file(&tmp);
        }
        result
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |cause| TransferError::Io(upkeep_fs::at(path)(cause))
}

/// How often waits look at the abort flag.
const SLICE: Duration = Duration::from_millis(25);

/// The runtime every transfer of an engine runs on — and, in the agent, every HTTP request
/// of its TUF client: by default one current-thread tokio runtime on a thread of its own
/// (measured faster than a multi-thread runtime for this work), so the pooled HTTP
/// clients' connections always live on the runtime that made them; or a host's runtime
/// ([`Runtime::from_handle`]). Cheap to clone; the thread stops when the last clone goes.
#[derive(Clone)]
pub struct Runtime(Arc<RuntimeThread>);

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

impl Runtime {
    /// A current-thread runtime on a new thread named `upkeep-transfer`.
    pub fn start() -> std::io::Result<Runtime> {
        Ok(Runtime(Arc::new(RuntimeThread::start()?)))
    }

    /// The host's runtime (a daemon's): it must be driven by threads of its own (a
    /// multi-thread runtime, or a current-thread one run by another thread), since the
    /// blocking forms wait for work spawned there.
    pub fn from_handle(handle: tokio::runtime::Handle) -> Runtime {
        Runtime(Arc::new(RuntimeThread { handle, stop: None }))
    }

    /// Its handle.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.0.handle
    }
}

struct RuntimeThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RuntimeThread {
    fn start() -> std::io::Result<RuntimeThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("upkeep-transfer".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(RuntimeThread {
            handle,
            stop: Some(stop),
        })
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        // The thread leaves `block_on` and drops the runtime, cancelling what is left (nothing
        // is: every transfer holds the engine, and so this).
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

struct Inner {
    client: reqwest::Client,
    cache: ContentCache,
    opts: TransferOptions,
    sched: Arc<Scheduler>,
    low_cap: Option<RateLimiter>,
    rt: Runtime,
}

/// The transfer engine: one pooled HTTP client, a priority queue of transfer slots, and a
/// cache. Cheap to clone; clones share all of it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cache", &self.inner.cache)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Complete,
    Retry(TransferError),
}

/// One transfer as each of its attempts sees it: the file, whether it is held to the
/// `Low` bandwidth cap, and its reporter (the progress it has reached, where progress goes,
/// and whether to stop).
struct Transfer<'a> {
    file: &'a ContentFile,
    capped: bool,
    report: TransferProgress,
    progress: &'a mut (dyn FnMut(TransferProgress) + Send),
    abort: &'a (dyn Fn() -> bool + Sync),
}

impl Transfer<'_> {
    /// Reports the progress reached.
    fn publish(&mut self) {
        (self.progress)(self.report)
    }
}

impl Engine {
    /// An engine over `cache`, with its own transfer thread. Honours the
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` variables (and lowercase forms).
    pub fn new(cache: ContentCache, opts: TransferOptions) -> Result<Engine, TransferError> {
        let rt = Runtime::start()
            .map_err(|e| TransferError::Io(upkeep_fs::at(Path::new("<transfer thread>"))(e)))?;
        Engine::with_runtime(cache, opts, rt)
    }

    /// [`Engine::new`] on `rt` (the agent's one runtime).
    pub fn with_runtime(
        cache: ContentCache,
        opts: TransferOptions,
        rt: Runtime,
    ) -> Result<Engine, TransferError> {
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .user_agent(concat!("upkeep/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransferError::Network {
                path: String::new(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Engine {
            inner: Arc::new(Inner {
                client,
                sched: Scheduler::new(opts.parallel),
                low_cap: opts.low_priority_bytes_per_second.map(RateLimiter::new),
                cache,
                opts,
                rt,
            }),
        })
    }

    /// The cache.
    pub fn cache(&self) -> &ContentCache {
        &self.inner.cache
    }

    /// The options.
    pub fn options(&self) -> &TransferOptions {
        &self.inner.opts
    }

    /// Transfers waiting for a slot right now.
    pub fn waiting(&self) -> usize {
        self.inner.sched.waiting()
    }

    /// Runs `work` on the engine's transfer thread and blocks the caller until it is done.
    /// Every [`Engine::fetch`] must run there (or in a task spawned from there). Must not be
    /// called from the transfer thread itself.
    pub fn block_on<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        // The engine (and so the runtime) lives as long as this call, so the task always
        // runs to completion and the result is always sent.
        let task = self.inner.rt.handle().spawn(work);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.rt.handle().spawn(async move {
            let _ = tx.send(task.await);
        });
        match rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            _ => unreachable!("the transfer runtime outlives its engine"),
        }
    }

    /// [`Engine::fetch`] from a thread outside the engine: runs it on the transfer thread.
    pub fn fetch_blocking(
        &self,
        file: &ContentFile,
        urls: &[String],
        priority: DownloadPriority,
        mut progress: impl FnMut(TransferProgress) + Send + 'static,
        abort: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<PathBuf, TransferError> {
        let (me, file, urls) = (self.clone(), file.clone(), urls.to_vec());
        self.block_on(async move {
            me.fetch(&file, &urls, priority, &mut progress, &abort)
                .await
        })
    }

    /// Flushes everything committed to the cache to disk (one `syncfs`, instead of an
    /// `fsync` per file). Blocking.
    pub fn sync(&self) -> Result<(), TransferError> {
        upkeep_fs::syncfs(self.inner.cache.dir()).map_err(TransferError::from)
    }

    /// Downloads `file` from the first mirror that has it (`urls` are full URLs of the same
    /// content), verifies it and commits it to the cache; returns the cached path.
    ///
    /// The transfer first waits for a slot (at most [`TransferOptions::parallel`] run at
    /// once, the highest `priority` first), then takes the partial file's lock, so two
    /// transfers of the same content — in this process or another — never interleave: the
    /// second finds the first one's result in the cache. `abort` is polled between chunks
    /// and every 25 ms of any wait. `progress` is first called when the transfer starts
    /// running, or once with every byte done when the cache already has the file. Runs on
    /// the engine's transfer thread.
    ///
    /// Before any byte is received the cache's filesystem must have room for the rest of
    /// the file plus [`TransferOptions::disk_reserve`] (else [`TransferError::DiskFull`]);
    /// a disk that fills during the transfer removes the partial file, so the agent's own
    /// state keeps room to work.
    pub async fn fetch(
        &self,
        file: &ContentFile,
        urls: &[String],
        priority: DownloadPriority,
        progress: &mut (dyn FnMut(TransferProgress) + Send),
        abort: &(dyn Fn() -> bool + Sync),
    ) -> Result<PathBuf, TransferError> {
        let r = self
            .fetch_inner(file, urls, priority, progress, abort)
            .await;
        if let Err(TransferError::Io(cause)) = &r {
            if matches!(cause.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                let c = &self.inner.cache;
                if let Some(k) = key(file) {
                    let _ = upkeep_fs::remove_file(c.partial_path(&k));
                    let _ = upkeep_fs::remove_file(c.meta_path(&k));
                }
                return Err(TransferError::DiskFull {
                    path: file.path.clone(),
                    message: format!(
                        "the disk holding {} filled up during the transfer; its partial file was removed",
                        c.dir().display()
                    ),
                });
            }
        }
        r
    }

    async fn fetch_inner(
        &self,
        file: &ContentFile,
        urls: &[String],
        priority: DownloadPriority,
        progress: &mut (dyn FnMut(TransferProgress) + Send),
        abort: &(dyn Fn() -> bool + Sync),
    ) -> Result<PathBuf, TransferError> {
        let what = file.path.clone();
        let key = key(file).ok_or_else(|| TransferError::NoUsableHash { path: what.clone() })?;
        let digests = Digests::for_file(file)
            .ok_or_else(|| TransferError::NoUsableHash { path: what.clone() })?;
        let mut report = TransferProgress {
            phase: Phase::Initializing,
            bytes_done: 0,
            bytes_total: file.length,
            bytes_received: 0,
        };
        if let Some(p) = self.inner.cache.get(file) {
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
        if let Some(local) = urls.iter().find_map(|u| u.strip_prefix("file://")) {
            // A local repository: copied (never past the signed length), verified, and
            // committed like a download.
            report.phase = Phase::Downloading;
            progress(report);
            let src = PathBuf::from(
                percent_encoding::percent_decode_str(local)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
            let (file2, cache) = (file.clone(), self.inner.cache.clone());
            let copied = tokio::task::spawn_blocking(move || cache.import(&src, &file2))
                .await
                .map_err(|e| TransferError::Network {
                    path: what.clone(),
                    message: format!("the copy stopped: {e}"),
                })?;
            let obj = copied?;
            report.phase = Phase::Verifying;
            report.bytes_done = file.length;
            report.bytes_received = file.length;
            progress(report);
            return Ok(obj);
        }
        let _slot = {
            let acquire = self.inner.sched.acquire(priority);
            tokio::pin!(acquire);
            loop {
                if abort() {
                    return Err(TransferError::Aborted { path: what });
                }
                if let Ok(slot) = tokio::time::timeout(SLICE, &mut acquire).await {
                    break slot;
                }
            }
        };
        // The first report comes once the transfer runs (not while it waits for a slot).
        progress(report);
        let mut part = if file.length < self.inner.opts.inline_below {
            Partial::Memory {
                chunks: Vec::new(),
                len: 0,
                validator: None,
            }
        } else {
            let locked = self.lock_partial(&key, abort, &what).await?;
            if let Some(p) = self.inner.cache.get(file) {
                // Another transfer finished it while this one waited.
                if locked.metadata().is_ok_and(|m| m.len() == 0) {
                    let _ = upkeep_fs::remove_file(self.inner.cache.partial_path(&key));
                }
                report.bytes_done = file.length;
                progress(report);
                return Ok(p);
            }
            let meta = self.inner.cache.meta_path(&key);
            Partial::Disk(DiskPartial {
                validator: upkeep_fs::read_to_string(&meta)
                    .ok()
                    .filter(|v| !v.is_empty()),
                file: locked,
                path: self.inner.cache.partial_path(&key),
                meta,
            })
        };
        let need = file.length.saturating_sub(part.len()?);
        let reserve = self.inner.opts.disk_reserve;
        let avail = upkeep_fs::free_space(self.inner.cache.dir()).map_err(TransferError::from)?;
        if avail < need.saturating_add(reserve) {
            return Err(TransferError::DiskFull {
                path: what,
                message: format!(
                    "{} bytes to download, {avail} bytes free on the disk holding {} (and {reserve} are kept in reserve for the agent's own state)",
                    need,
                    self.inner.cache.dir().display()
                ),
            });
        }
        let mut transfer = Transfer {
            file,
            capped: priority == DownloadPriority::Low,
            report,
            progress,
            abort,
        };
        let mut not_found: HashSet<usize> = HashSet::new();
        let mut last = TransferError::Network {
            path: what.clone(),
            message: "no attempt was made".into(),
        };
        let mut backoff = self.inner.opts.backoff;
        for attempt in 0..=self.inner.opts.retries as usize {
            if attempt > 0 {
                sleep(backoff, abort, &what).await?;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let mirror = (0..urls.len())
                .map(|i| (attempt + i) % urls.len())
                .find(|i| !not_found.contains(i))
                .ok_or_else(|| TransferError::NotFound {
                    path: what.clone(),
                    mirrors: urls.len(),
                })?;
            let (outcome, digests) = self
                .attempt(&mut transfer, &mut part, digests.clone(), &urls[mirror])
                .await?;
            match outcome {
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
            let obj = self.inner.cache.object_path(&key);
            let checked = match (&mut part, digests) {
                (Partial::Disk(d), Some(digests)) => match digests.check(file) {
                    Ok(()) => {
                        upkeep_fs::rename(&d.path, &obj).map_err(TransferError::from)?;
                        let _ = upkeep_fs::remove_file(&d.meta);
                        Ok(())
                    }
                    Err(alg) => Err(alg),
                },
                (Partial::Memory { chunks, .. }, _) => {
                    let tmp = self.inner.cache.temp_path(&key);
                    commit_from_memory(std::mem::take(chunks), digests_for(file)?, file, tmp, &obj)
                        .await?
                }
                (Partial::Disk(_), None) => unreachable!("a complete attempt has its digests"),
            };
            match checked {
                Ok(()) => {
                    self.inner.cache.stamp(&key).map_err(TransferError::from)?;
                    return Ok(obj);
                }
                Err(alg) => {
                    // Wrong bytes: start again from nothing (perhaps from another mirror).
                    part.restart()?;
                    last = TransferError::HashMismatch {
                        path: what.clone(),
                        alg,
                    };
                }
            }
        }
        Err(last)
    }

    /// Opens and locks `partial/<key>.part`, waiting (and polling `abort`) while another
    /// transfer holds it; the lock is released when the returned file is dropped.
    async fn lock_partial(
        &self,
        key: &str,
        abort: &(dyn Fn() -> bool + Sync),
        what: &str,
    ) -> Result<std::fs::File, TransferError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.inner.cache.partial_path(key);
        loop {
            let Some(f) = upkeep_fs::try_lock(&path).map_err(TransferError::from)? else {
                sleep(SLICE, abort, what).await?;
                continue;
            };
            // The holder may have renamed (committed) the file meanwhile: only the file
            // still at the path counts.
            let mine = f.metadata().map_err(io_err(&path))?.ino();
            if upkeep_fs::metadata(&path).is_ok_and(|m| m.ino() == mine) {
                return Ok(f);
            }
        }
    }

    /// One request: resumes the partial file, streams what arrives into the sink, stops at
    /// the signed length. Returns `Complete` with the digests when the partial file has
    /// every byte.
    async fn attempt(
        &self,
        t: &mut Transfer<'_>,
        part: &mut Partial,
        digests: Digests,
        url: &str,
    ) -> Result<(Attempt, Option<Digests>), TransferError> {
        let (file, capped, abort) = (t.file, t.capped, t.abort);
        let what = &file.path;
        let retry = |message: String| {
            Ok((
                Attempt::Retry(TransferError::Network {
                    path: what.clone(),
                    message,
                }),
                None,
            ))
        };
        let part_path = part.path();
        let mut have = part.len()?;
        if have > file.length || (have > 0 && part.validator().is_none()) {
            part.restart()?;
            have = 0;
        }
        t.report.bytes_done = have;
        if have == file.length {
            // Every byte arrived before (the process stopped before the commit): verify.
            t.report.phase = Phase::Verifying;
            t.publish();
            let d = match part {
                Partial::Disk(d) => Some(
                    Sink::start(&d.file, have, digests, false)
                        .map_err(io_err(&part_path))?
                        .finish()
                        .await
                        .map_err(io_err(&part_path))?,
                ),
                Partial::Memory { .. } => None,
            };
            return Ok((Attempt::Complete, d));
        }
        let mut req = self.inner.client.get(url);
        if have > 0 {
            req = req
                .header(reqwest::header::RANGE, format!("bytes={have}-"))
                .header(
                    reqwest::header::IF_RANGE,
                    part.validator().unwrap_or_default().to_string(),
                );
        }
        let send = req.send();
        tokio::pin!(send);
        let mut waited = Duration::ZERO;
        let stall = self.inner.opts.stall_timeout;
        let resp = loop {
            if abort() {
                return Err(TransferError::Aborted { path: what.clone() });
            }
            match tokio::time::timeout(SLICE, &mut send).await {
                Ok(Ok(r)) => break r,
                Ok(Err(e)) => return retry(describe(&e)),
                Err(_) => {
                    waited += SLICE;
                    if waited >= stall {
                        return retry(format!("no response within {stall:?}"));
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
                    part.restart()?;
                    return retry(format!(
                        "Content-Range {got:?}, expected {expected:?}; starting over"
                    ));
                }
            }
            200 => {
                if have > 0 {
                    // The server ignored the range or the file changed: start over.
                    have = 0;
                    t.report.bytes_done = 0;
                }
            }
            404 | 410 => {
                return Ok((
                    Attempt::Retry(TransferError::NotFound {
                        path: what.clone(),
                        mirrors: 1,
                    }),
                    None,
                ))
            }
            416 => {
                part.restart()?;
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
        part.set_validator(new_validator)?;
        let threaded = file.length - have >= self.inner.opts.inline_below;
        let mut sink = match part {
            Partial::Disk(d) => {
                Some(Sink::start(&d.file, have, digests, threaded).map_err(io_err(&part_path))?)
            }
            Partial::Memory { chunks, len, .. } => {
                if have == 0 {
                    chunks.clear();
                    *len = 0;
                }
                None
            }
        };
        t.report.phase = Phase::Downloading;
        t.publish();
        let mut resp = resp;
        let mut idle = Duration::ZERO;
        // The minimum rate; a capped transfer is held to what its share of the cap allows.
        let opts = &self.inner.opts;
        let min_rate = match (capped, opts.low_priority_bytes_per_second) {
            (true, Some(cap)) => opts.min_rate.min(cap / (2 * opts.parallel.max(1) as u64)),
            _ => opts.min_rate,
        };
        let mut window = (std::time::Instant::now(), 0u64);
        let mut failed: Option<Result<(Attempt, Option<Digests>), TransferError>> = None;
        while have < file.length {
            if abort() {
                failed = Some(Err(TransferError::Aborted { path: what.clone() }));
                break;
            }
            let chunk = match tokio::time::timeout(SLICE, resp.chunk()).await {
                Err(_) => {
                    idle += SLICE;
                    if idle >= stall {
                        failed = Some(retry(format!(
                            "stalled: no data for {stall:?} at byte {have}"
                        )));
                        break;
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    failed = Some(retry(format!(
                        "connection failed at byte {have}: {}",
                        describe(&e)
                    )));
                    break;
                }
                Ok(Ok(None)) => {
                    failed = Some(retry(format!(
                        "connection closed at byte {have} of {}",
                        file.length
                    )));
                    break;
                }
                Ok(Ok(Some(c))) => c,
            };
            idle = Duration::ZERO;
            // Never past the signed length: the rest of an over-long body is not read.
            let take = (chunk.len() as u64).min(file.length - have) as usize;
            let chunk = chunk.slice(..take);
            match (&mut sink, &mut *part) {
                (Some(sink), _) => {
                    if sink.push(chunk).await.is_err() {
                        break; // `finish` reports the write error.
                    }
                }
                (None, Partial::Memory { chunks, len, .. }) => {
                    *len += chunk.len() as u64;
                    chunks.push(chunk);
                }
                (None, Partial::Disk(_)) => unreachable!("a disk partial has a sink"),
            }
            have += take as u64;
            t.report.bytes_done = have;
            t.report.bytes_received += take as u64;
            window.1 += take as u64;
            let span = window.0.elapsed();
            if min_rate > 0 && span >= opts.min_rate_window {
                if window.1 < min_rate.saturating_mul(span.as_secs().max(1)) {
                    failed = Some(retry(format!(
                        "too slow: {} bytes in {span:.0?} at byte {have}, below the minimum of {min_rate} bytes/s",
                        window.1
                    )));
                    break;
                }
                window = (std::time::Instant::now(), 0);
            }
            t.publish();
            if capped {
                if let Some(cap) = &self.inner.low_cap {
                    let at = cap.reserve(take as u64);
                    let now = std::time::Instant::now();
                    if at > now {
                        if let Err(e) = sleep(at - now, abort, what).await {
                            failed = Some(Err(e));
                            break;
                        }
                    }
                }
            }
        }
        if failed.is_none() && have == file.length {
            t.report.phase = Phase::Verifying;
            t.publish();
        }
        // Whatever happened, every received byte is on disk before the next attempt.
        let digests = match sink {
            Some(sink) => Some(sink.finish().await.map_err(io_err(&part_path))?),
            None => None,
        };
        match failed {
            Some(f) => f,
            None if have == file.length => Ok((Attempt::Complete, digests)),
            None => retry(format!("the transfer stopped at byte {have}")),
        }
    }
}

/// The received part of one transfer: for files of at least
/// [`TransferOptions::inline_below`] bytes, the locked partial file and the validator its
/// bytes came with, kept on disk (`.meta`) to resume across restarts; for smaller files,
/// the bytes in memory — verified before anything is written, and refetched from zero after
/// a restart, which costs less than a lock, a partial file and a validator file each.
enum Partial {
    Disk(DiskPartial),
    Memory {
        chunks: Vec<bytes::Bytes>,
        len: u64,
        validator: Option<String>,
    },
}

struct DiskPartial {
    file: std::fs::File,
    path: PathBuf,
    meta: PathBuf,
    validator: Option<String>,
}

impl Partial {
    fn path(&self) -> PathBuf {
        match self {
            Partial::Disk(d) => d.path.clone(),
            Partial::Memory { .. } => PathBuf::from("<memory>"),
        }
    }

    fn len(&self) -> Result<u64, TransferError> {
        match self {
            Partial::Disk(d) => Ok(d.file.metadata().map_err(io_err(&d.path))?.len()),
            Partial::Memory { len, .. } => Ok(*len),
        }
    }

    fn validator(&self) -> Option<&str> {
        match self {
            Partial::Disk(d) => d.validator.as_deref(),
            Partial::Memory { validator, .. } => validator.as_deref(),
        }
    }

    /// Drops every byte and the validator.
    fn restart(&mut self) -> Result<(), TransferError> {
        match self {
            Partial::Disk(d) => d.file.set_len(0).map_err(io_err(&d.path))?,
            Partial::Memory { chunks, len, .. } => {
                chunks.clear();
                *len = 0;
            }
        }
        self.set_validator(None)
    }

    fn set_validator(&mut self, v: Option<String>) -> Result<(), TransferError> {
        match self {
            Partial::Disk(d) => {
                if d.validator == v {
                    return Ok(());
                }
                match &v {
                    Some(v) => upkeep_fs::write(&d.meta, v).map_err(TransferError::from)?,
                    None => {
                        let _ = upkeep_fs::remove_file(&d.meta);
                    }
                }
                d.validator = v;
            }
            Partial::Memory { validator, .. } => *validator = v,
        }
        Ok(())
    }
}

fn digests_for(file: &ContentFile) -> Result<Digests, TransferError> {
    Digests::for_file(file).ok_or_else(|| TransferError::NoUsableHash {
        path: file.path.clone(),
    })
}

/// Verifies a small file received in memory and, if it is right, writes it to a private
/// temporary file and renames that into `objects/` — on the blocking pool, so the transfer
/// thread goes on receiving. `Ok(Err(alg))` is a hash mismatch (nothing was written).
async fn commit_from_memory(
    chunks: Vec<bytes::Bytes>,
    mut digests: Digests,
    file: &ContentFile,
    tmp: PathBuf,
    obj: &Path,
) -> Result<Result<(), String>, TransferError> {
    let (file, obj) = (file.clone(), obj.to_path_buf());
    let tmp2 = tmp.clone();
    let work = move || -> Result<Result<(), String>, upkeep_fs::PathError> {
        for c in &chunks {
            digests.update(c);
        }
        if let Err(alg) = digests.check(&file) {
            return Ok(Err(alg));
        }
        let mut f = upkeep_fs::open_with(
            std::fs::OpenOptions::new().write(true).create_new(true),
            &tmp2,
        )?;
        for c in &chunks {
            std::io::Write::write_all(&mut f, c).map_err(upkeep_fs::at(&tmp2))?;
        }
        drop(f);
        upkeep_fs::rename(&tmp2, &obj)?;
        Ok(Ok(()))
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            let _ = upkeep_fs::remove_file(&tmp);
            Err(e.into())
        }
        Err(e) => Err(io_err(&tmp)(std::io::Error::other(format!(
            "a transfer task failed: {e}"
        )))),
    }
}

async fn sleep(
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
