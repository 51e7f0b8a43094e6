//! HTTP transport for metadata and targets: one pooled async `reqwest` client on a tokio
//! runtime (the agent's, or one of its own), behind the synchronous [`Transport`] seam
//! that the TUF client reads through. The body streams from the runtime to the reader
//! through a small bounded channel: the blocking adapter is the reader, at the outer edge,
//! and no blocking HTTP client (which would panic inside an async runtime) is used.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Transport;
use crate::error::TransportError;

/// A runtime the transport started for itself (when it was given none), shut down in the
/// background when the last clone goes: never a panic, whatever thread drops it.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Fetches over HTTP(S) with one pooled, keep-alive client. 403 and 404 are "not found".
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
    _own: Option<Arc<OwnRuntime>>,
    min_rate: u64,
    window: Duration,
    connect: Duration,
    response: Duration,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTransport")
    }
}

impl HttpTransport {
    /// A transport with a 10 s connect timeout and a 30 s response timeout, on a runtime
    /// of its own (one worker thread).
    pub fn new() -> Result<HttpTransport, TransportError> {
        HttpTransport::with_timeouts(Duration::from_secs(10), Duration::from_secs(30))
    }

    /// A transport that fails a request when the server does not accept the connection
    /// within `connect`, or, connected, sends nothing for `response` — before its answer
    /// or within a body (a read timeout, so a long body that keeps coming is not cut;
    /// the minimum rate bounds a trickle). On a runtime of its own.
    pub fn with_timeouts(
        connect: Duration,
        response: Duration,
    ) -> Result<HttpTransport, TransportError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("upkeep-tuf-http")
            .enable_all()
            .build()
            .map_err(|e| TransportError::Connection {
                url: String::new(),
                message: format!("cannot start the HTTP runtime: {e}"),
            })?;
        let handle = rt.handle().clone();
        let mut t = HttpTransport::on(handle, connect, response)?;
        t._own = Some(Arc::new(OwnRuntime(Some(rt))));
        Ok(t)
    }

    /// [`with_timeouts`](Self::with_timeouts) on the runtime of `handle` (the agent's
    /// one runtime), which another thread must drive (a multi-thread runtime, or a
    /// current-thread one that a thread of its own runs): [`Transport::fetch`] blocks its
    /// caller until the answer comes.
    pub fn on(
        handle: tokio::runtime::Handle,
        connect: Duration,
        response: Duration,
    ) -> Result<HttpTransport, TransportError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .user_agent(concat!("upkeep/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Connection {
                url: String::new(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(HttpTransport {
            client,
            handle,
            _own: None,
            min_rate: 1024,
            window: Duration::from_secs(30),
            connect,
            response,
        })
    }

    /// Drops a response whose body arrives slower than `bytes_per_second` averaged over
    /// `window` (default 1024 over 30 s; 0 disables): a server trickling bytes cannot hold
    /// a refresh, and a body of at most L bytes (the client's length limits) takes at most
    /// about L / `bytes_per_second` + `window`.
    pub fn with_min_rate(mut self, bytes_per_second: u64, window: Duration) -> HttpTransport {
        self.min_rate = bytes_per_second;
        self.window = window;
        self
    }
}

/// Waits on this thread for `f`, which a task on the HTTP runtime completes. Unlike
/// tokio's `blocking_recv`, this works on any thread — a plain one, or one inside async
/// code (a `#[tokio::test]`, a D-Bus method) — as long as that thread is not the one
/// driving the HTTP runtime: the calling thread parks until the task's wake.
fn wait<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => return v,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

/// The reading end of a body streamed by the runtime: blocks for the next chunk. Dropping
/// it stops the transfer (the task's next send fails).
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl Read for ChannelBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match wait(self.rx.recv()) {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        Ok(n)
    }
}

/// A body reader that fails once the transfer falls below a minimum rate.
struct Paced<R> {
    inner: R,
    url: String,
    min_rate: u64,
    window: Duration,
    since: std::time::Instant,
    bytes: u64,
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        let span = self.since.elapsed();
        if self.min_rate > 0 && span >= self.window {
            if self.bytes < self.min_rate.saturating_mul(span.as_secs().max(1)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{}: too slow: {} bytes in {span:.0?}, below the minimum of {} bytes/s",
                        self.url, self.bytes, self.min_rate
                    ),
                ));
            }
            self.since = std::time::Instant::now();
            self.bytes = 0;
        }
        Ok(n)
    }
}

impl Transport for HttpTransport {
    fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| TransportError::InvalidUrl {
            url: url.to_string(),
        })?;
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        let (body_tx, body_rx) = tokio::sync::mpsc::channel(8);
        let (client, response, connect) = (self.client.clone(), self.response, self.connect);
        let shown = url.to_string();
        self.handle.spawn(async move {
            // The answer within `response`; then each chunk within `response` of the last.
            let resp = match tokio::time::timeout(response, client.get(parsed).send()).await {
                Err(_) => Err(format!(
                    "no answer within {response:?} (response_timeout_seconds)"
                )),
                Ok(Err(e)) if e.is_timeout() && e.is_connect() => Err(format!(
                    "no connection within {connect:?} (connect_timeout_seconds): {}",
                    describe(&e)
                )),
                Ok(Err(e)) => Err(describe(&e)),
                Ok(Ok(r)) => Ok(r),
            };
            let mut resp = match resp {
                Ok(r) => {
                    let status = r.status().as_u16();
                    if head_tx.send(Ok(status)).is_err() || status != 200 {
                        return;
                    }
                    r
                }
                Err(m) => {
                    let _ = head_tx.send(Err(m));
                    return;
                }
            };
            loop {
                let next = match tokio::time::timeout(response, resp.chunk()).await {
                    Ok(Ok(Some(c))) => Ok(c),
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => Err(std::io::Error::other(format!("{shown}: {}", describe(&e)))),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{shown}: nothing received for {response:?} (response_timeout_seconds)"
                        ),
                    )),
                };
                let failed = next.is_err();
                if body_tx.send(next).await.is_err() || failed {
                    return; // the reader went away, or was told why it ends
                }
            }
        });
        let status = match wait(head_rx) {
            Ok(Ok(status)) => status,
            Ok(Err(message)) => {
                return Err(TransportError::Connection {
                    url: url.to_string(),
                    message,
                })
            }
            Err(_) => {
                return Err(TransportError::Connection {
                    url: url.to_string(),
                    message: "the HTTP runtime stopped".into(),
                })
            }
        };
        match status {
            200 => Ok(Box::new(Paced {
                inner: ChannelBody {
                    rx: body_rx,
                    chunk: bytes::Bytes::new(),
                },
                url: url.to_string(),
                min_rate: self.min_rate,
                window: self.window,
                since: std::time::Instant::now(),
                bytes: 0,
            })),
            403 | 404 => Err(TransportError::NotFound {
                url: url.to_string(),
                status,
            }),
            _ => Err(TransportError::Status {
                url: url.to_string(),
                status,
            }),
        }
    }
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

/// Reads files from a local directory (`file://`-style repositories and tests).
#[derive(Clone, Debug)]
pub struct FileTransport;

impl Transport for FileTransport {
    fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        let path = url.strip_prefix("file://").unwrap_or(url);
        let decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| TransportError::InvalidUrl { url: url.into() })?
            .into_owned();
        match upkeep_fs::open(&decoded) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.is_not_found() => Err(TransportError::NotFound {
                url: url.into(),
                status: 404,
            }),
            Err(e) => Err(TransportError::Connection {
                url: url.into(),
                message: e.to_string(),
            }),
        }
    }
}
