//! HTTP transport for metadata and targets over a pooled `reqwest` blocking client.

use std::io::Read;
use std::time::Duration;

use crate::client::Transport;
use crate::error::TransportError;

/// Fetches over HTTP(S) with one pooled, keep-alive client. 403 and 404 are "not found".
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::blocking::Client,
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
    /// A transport with a 10 s connect timeout and a 30 s response timeout.
    pub fn new() -> Result<HttpTransport, TransportError> {
        HttpTransport::with_timeouts(Duration::from_secs(10), Duration::from_secs(30))
    }

    /// A transport that fails a request when the server does not accept the connection
    /// within `connect`, or, connected, sends nothing for `response` — before its answer
    /// or within a body (a read timeout, so a long body that keeps coming is not cut;
    /// the minimum rate bounds a trickle).
    pub fn with_timeouts(
        connect: Duration,
        response: Duration,
    ) -> Result<HttpTransport, TransportError> {
        // The blocking client's `timeout` bounds each operation — waiting for the answer,
        // each read of the body — not the whole request.
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(connect)
            .timeout(response)
            .user_agent(concat!("upkeep/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Connection {
                url: String::new(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(HttpTransport {
            client,
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
        let resp = self
            .client
            .get(parsed)
            .send()
            .map_err(|e| TransportError::Connection {
                url: url.to_string(),
                message: if e.is_timeout() && e.is_connect() {
                    format!(
                        "no connection within {:?} (connect_timeout_seconds): {}",
                        self.connect,
                        describe(&e)
                    )
                } else if e.is_timeout() {
                    format!(
                        "no answer within {:?} (response_timeout_seconds): {}",
                        self.response,
                        describe(&e)
                    )
                } else {
                    describe(&e)
                },
            })?;
        let status = resp.status().as_u16();
        match status {
            200 => Ok(Box::new(Paced {
                inner: resp,
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
        match std::fs::File::open(&decoded) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TransportError::NotFound {
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
