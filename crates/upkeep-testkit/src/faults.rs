//! A fault-injecting HTTP/1.1 server for download tests: serves files from memory and,
//! per path, follows a script of faults — drop the connection mid-body, stall, answer
//! 500/503, send a short body, send extra bytes, send wrong bytes, ignore `Range`. Every
//! request is logged (path and `Range`) so tests can assert how a client resumed.
//! Listens on 127.0.0.1 only; stops when dropped.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to do to one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send headers and this many body bytes, then close the connection.
    DropAfter(u64),
    /// Send headers and this many body bytes, then send nothing more (for at most a
    /// minute, or until the server stops or the client goes away).
    StallAfter(u64),
    /// Answer with this status and no body.
    Status(u16),
    /// Declare the full length but send only this many bytes, then close.
    ShortBody(u64),
    /// Send the body followed by this many extra bytes (the declared length includes them).
    ExtraBytes(u64),
    /// Flip the byte at this offset of the file.
    WrongByte(u64),
    /// Answer a `Range` request with `200` and the whole file.
    IgnoreRange,
    /// Send headers and this many body bytes, then one byte per interval (never idle long
    /// enough to look stalled) until the body is sent, a minute passes, the client goes
    /// away or the server stops.
    Trickle(u64, Duration),
}

/// One logged request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The URL path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-Range` header, if any.
    pub if_range: Option<String>,
}

#[derive(Default)]
struct Script {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, VecDeque<Fault>>,
    log: Vec<Logged>,
}

/// The server. Dropping it stops it.
pub struct FaultServer {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(s: &Mutex<Script>) -> std::sync::MutexGuard<'_, Script> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultServer {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(Mutex::new(Script::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (script.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let (s3, st3) = (s2.clone(), st2.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &s3, &st3);
                });
            }
        });
        FaultServer {
            addr,
            script,
            stop,
            thread: Some(thread),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves `data` at `path` (e.g. `/a/file.bin`).
    pub fn put(&self, path: &str, data: Vec<u8>) {
        lock(&self.script).files.insert(path.to_string(), data);
    }

    /// Serves every file under `dir` at its relative path (`dir/a/b` at `/a/b`), e.g. a
    /// repository directory so that a test can stall one of its files.
    pub fn put_dir(&self, dir: &std::path::Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let (Ok(rel), Ok(data)) = (p.strip_prefix(dir), std::fs::read(&p)) {
                    self.put(&format!("/{}", rel.display()), data);
                }
            }
        }
    }

    /// Queues `fault` for the next request of `path` (faults are used in order, one per
    /// request; with none queued, responses are correct).
    pub fn push_fault(&self, path: &str, fault: Fault) {
        lock(&self.script)
            .faults
            .entry(path.to_string())
            .or_default()
            .push_back(fault);
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        lock(&self.script).log.clone()
    }

    /// Faults not used yet for `path`.
    pub fn pending_faults(&self, path: &str) -> usize {
        lock(&self.script).faults.get(path).map_or(0, VecDeque::len)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, script: &Mutex<Script>, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            match n.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "if-range" => if_range = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let (data, fault) = {
        let mut s = lock(script);
        s.log.push(Logged {
            path: path.clone(),
            range: range.clone(),
            if_range: if_range.clone(),
        });
        let fault = s.faults.get_mut(&path).and_then(VecDeque::pop_front);
        (s.files.get(&path).cloned(), fault)
    };
    let Some(mut data) = data else {
        return w.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    };
    if let Some(Fault::Status(code)) = fault {
        return write!(
            w,
            "HTTP/1.1 {code} Fault\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }
    if let Some(Fault::WrongByte(at)) = fault {
        if let Some(b) = data.get_mut(at as usize) {
            *b ^= 0xff;
        }
    }
    let etag = format!("\"{}\"", data.len());
    let len = data.len() as u64;
    let mut start = 0u64;
    let mut status = "200 OK";
    let mut content_range = None;
    let range_ok = if_range.as_deref().is_none_or(|v| v == etag);
    if let (Some(spec), true, false) = (&range, range_ok, fault == Some(Fault::IgnoreRange)) {
        if let Some(from) = spec
            .strip_prefix("bytes=")
            .and_then(|s| s.strip_suffix('-'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            if from >= len {
                return write!(w, "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{len}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
            start = from;
            status = "206 Partial Content";
            content_range = Some(format!("bytes {from}-{}/{len}", len - 1));
        }
    }
    let mut body = data[start as usize..].to_vec();
    if let Some(Fault::ExtraBytes(n)) = fault {
        body.extend(std::iter::repeat_n(b'X', n as usize));
    }
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\netag: {etag}\r\naccept-ranges: bytes\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(cr) = content_range {
        head.push_str(&format!("content-range: {cr}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    let send = match fault {
        Some(Fault::DropAfter(n))
        | Some(Fault::ShortBody(n))
        | Some(Fault::StallAfter(n))
        | Some(Fault::Trickle(n, _)) => (n as usize).min(body.len()),
        _ => body.len(),
    };
    w.write_all(&body[..send])?;
    w.flush()?;
    if let Some(Fault::Trickle(_, every)) = fault {
        let until = Instant::now() + Duration::from_secs(60);
        for b in &body[send..] {
            if Instant::now() >= until || stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(every);
            // A failed write means the client went away.
            w.write_all(std::slice::from_ref(b))?;
            w.flush()?;
        }
        return Ok(());
    }
    if let Some(Fault::StallAfter(_)) = fault {
        let until = Instant::now() + Duration::from_secs(60);
        let mut probe = [0u8; 1];
        r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)))?;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            // A read of 0 means the client went away.
            match std::io::Read::read(r.get_mut(), &mut probe) {
                Ok(0) => break,
                _ => continue,
            }
        }
    }
    Ok(())
}
