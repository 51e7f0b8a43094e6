//! A small HTTP/1.1 static file server for development and tests: keep-alive, `HEAD`,
//! single `Range` requests with `If-Range`, `ETag` and `Last-Modified`, path traversal
//! refused. Production repositories can use any static server or CDN.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Most connections served at once; more are answered 503.
const MAX_CONNECTIONS: usize = 256;
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// The longest a client may take to send a request head, counted from when the server
/// starts waiting for it (keep-alive idle time included): a client trickling its headers
/// cannot hold a connection slot longer than this.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);

/// A socket whose reads fail once a deadline has passed, however the bytes trickle in.
struct Timed {
    stream: TcpStream,
    deadline: Option<std::time::Instant>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received in time",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

/// URL prefix → directory.
#[derive(Clone, Debug)]
pub struct Mount {
    /// URL path prefix such as `/metadata/`.
    pub prefix: String,
    /// Directory served under it.
    pub dir: PathBuf,
}

/// The mounts for a repository directory: `/metadata/` and `/targets/`.
pub fn repository_mounts(repo_dir: &Path) -> Vec<Mount> {
    vec![
        Mount {
            prefix: "/metadata/".into(),
            dir: repo_dir.join("metadata"),
        },
        Mount {
            prefix: "/targets/".into(),
            dir: repo_dir.join("targets"),
        },
    ]
}

/// A running server. Dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    requests: Arc<AtomicUsize>,
}

impl Server {
    /// Binds `listen` (port 0 picks a free port) and serves `mounts` on a background thread.
    pub fn start(listen: SocketAddr, mounts: Vec<Mount>) -> io::Result<Server> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let mounts = Arc::new(mounts);
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::Builder::new()
            .name("upkeep-serve".into())
            .spawn(move || accept_loop(listener, mounts, stop2, requests2))?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
            requests,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Requests answered so far.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Blocks until the server stops (it stops only when dropped from another thread or
    /// the process ends).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops accepting connections and waits for the accept thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: TcpListener,
    mounts: Arc<Vec<Mount>>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (mounts, stop, active, requests) = (
            mounts.clone(),
            stop.clone(),
            active.clone(),
            requests.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("upkeep-serve-conn".into())
            .spawn(move || {
                let _ = handle_connection(stream, &mounts, &stop, &requests);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            tracing::warn!("cannot spawn a connection thread");
        }
    }
}

struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    range: Option<String>,
    if_range: Option<String>,
}

fn read_request(reader: &mut BufReader<Timed>) -> io::Result<Option<Request>> {
    reader.get_mut().deadline = Some(std::time::Instant::now() + HEAD_DEADLINE);
    let r = read_head(reader);
    reader.get_mut().deadline = None;
    r
}

fn read_head(reader: &mut BufReader<Timed>) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            return Ok(None);
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                head.clear(); // tolerate a blank line between requests
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let mut keep_alive = version == "HTTP/1.1";
    let (mut range, mut if_range) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
            "range" => range = Some(value.to_string()),
            "if-range" => if_range = Some(value.to_string()),
            _ => {}
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Ok(Some(Request {
        method: method.to_string(),
        path,
        keep_alive,
        range,
        if_range,
    }))
}

fn handle_connection(
    stream: TcpStream,
    mounts: &[Mount],
    stop: &AtomicBool,
    requests: &AtomicUsize,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(Timed {
        stream,
        deadline: None,
    });
    while !stop.load(Ordering::SeqCst) {
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                let _ = simple(&mut writer, 408, "Request Timeout", false);
                return Ok(());
            }
            Err(_) => {
                let _ = simple(&mut writer, 400, "Bad Request", false);
                return Ok(());
            }
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let keep = respond(&mut writer, &req, mounts)? && req.keep_alive;
        if !keep {
            return Ok(());
        }
    }
    Ok(())
}

fn simple(w: &mut TcpStream, code: u16, reason: &str, keep: bool) -> io::Result<bool> {
    let body = format!("{code} {reason}\n");
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {}\r\n\r\n{body}",
        body.len(),
        if keep { "keep-alive" } else { "close" }
    )?;
    Ok(keep)
}

/// Maps a URL path to a file under one of the mounts, refusing traversal.
fn resolve(mounts: &[Mount], url_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(url_path)
        .decode_utf8()
        .ok()?;
    for m in mounts {
        if let Some(rest) = decoded.strip_prefix(m.prefix.as_str()) {
            let ok = !rest.is_empty()
                && !rest.contains('\0')
                && !rest.contains('\\')
                && rest
                    .split('/')
                    .all(|s| !s.is_empty() && s != "." && s != ".." && !s.starts_with('.'));
            return ok.then(|| m.dir.join(rest));
        }
    }
    None
}

/// Parses a single byte range against a file length: `Ok(None)` means serve the whole file.
fn parse_range(spec: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(r) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if r.contains(',') {
        return Ok(None); // multiple ranges: answer with the whole file
    }
    let (a, b) = r.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.checked_sub(1).ok_or(())?
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if range.0 >= len || range.0 > range.1 {
        return Err(());
    }
    Ok(Some(range))
}

fn respond(w: &mut TcpStream, req: &Request, mounts: &[Mount]) -> io::Result<bool> {
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => return simple(w, 405, "Method Not Allowed", false),
    };
    let Some(path) = resolve(mounts, &req.path) else {
        return simple(w, 404, "Not Found", req.keep_alive);
    };
    let Ok(mut file) = upkeep_fs::open(&path) else {
        return simple(w, 404, "Not Found", req.keep_alive);
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return simple(w, 404, "Not Found", req.keep_alive);
    }
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let etag = format!("\"{:x}-{:x}\"", len, mtime.as_nanos());
    let last_modified = jiff::Timestamp::from_second(mtime.as_secs() as i64)
        .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default();
    let ctype = if path.extension().is_some_and(|e| e == "json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    // If-Range: the range applies only if the validator still matches.
    let range_allowed = match &req.if_range {
        None => true,
        Some(v) => v == &etag || v == &last_modified,
    };
    let range = match (&req.range, range_allowed) {
        (Some(spec), true) => match parse_range(spec, len) {
            Ok(r) => r,
            Err(()) => {
                write!(
                    w,
                    "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{len}\r\ncontent-length: 0\r\n\r\n"
                )?;
                return Ok(req.keep_alive);
            }
        },
        _ => None,
    };
    let conn = if req.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    let (status, start, count) = match range {
        Some((a, b)) => ("206 Partial Content", a, b - a + 1),
        None => ("200 OK", 0, len),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {count}\r\naccept-ranges: bytes\r\netag: {etag}\r\nlast-modified: {last_modified}\r\nconnection: {conn}\r\n"
    );
    if let Some((a, b)) = range {
        head.push_str(&format!("content-range: bytes {a}-{b}/{len}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if !head_only {
        file.seek(SeekFrom::Start(start))?;
        let sent = io::copy(&mut file.take(count), w)?;
        if sent != count {
            return Ok(false); // file shrank underneath us: the client sees a short body
        }
    }
    Ok(req.keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-2", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn traversal_is_refused() {
        let m = vec![Mount {
            prefix: "/t/".into(),
            dir: "/srv".into(),
        }];
        assert_eq!(
            resolve(&m, "/t/a/b.json"),
            Some(PathBuf::from("/srv/a/b.json"))
        );
        assert_eq!(resolve(&m, "/t/../etc/passwd"), None);
        assert_eq!(resolve(&m, "/t/%2e%2e/x"), None);
        assert_eq!(resolve(&m, "/t/.lock"), None);
        assert_eq!(resolve(&m, "/keys/root.json"), None);
    }
}
