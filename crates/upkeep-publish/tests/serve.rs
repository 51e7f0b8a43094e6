//! The development server over a real socket: keep-alive, HEAD, Range, If-Range, 416, 404.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use upkeep_publish::serve::{Mount, Server};

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(conn: &mut BufReader<TcpStream>, head: &str, has_body: bool) -> Response {
    conn.get_mut().write_all(head.as_bytes()).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':').unwrap();
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; if has_body { len } else { 0 }];
    conn.read_exact(&mut body).unwrap();
    Response {
        status,
        headers,
        body,
    }
}

#[test]
fn keep_alive_head_range_if_range_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("blob.bin"), &data).unwrap();
    let server = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        vec![Mount {
            prefix: "/t/".into(),
            dir: dir.path().to_path_buf(),
        }],
    )
    .unwrap();
    let mut conn = BufReader::new(TcpStream::connect(server.local_addr()).unwrap());

    // All of these travel on one connection.
    let full = request(
        &mut conn,
        "GET /t/blob.bin HTTP/1.1\r\nhost: x\r\n\r\n",
        true,
    );
    assert_eq!(full.status, 200);
    assert_eq!(full.body, data);
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").unwrap().to_string();

    let head = request(
        &mut conn,
        "HEAD /t/blob.bin HTTP/1.1\r\nhost: x\r\n\r\n",
        false,
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10000"));

    let part = request(
        &mut conn,
        "GET /t/blob.bin HTTP/1.1\r\nhost: x\r\nrange: bytes=9000-\r\n\r\n",
        true,
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 9000-9999/10000"));
    assert_eq!(part.body, &data[9000..]);

    let same = request(
        &mut conn,
        &format!(
            "GET /t/blob.bin HTTP/1.1\r\nhost: x\r\nrange: bytes=0-9\r\nif-range: {etag}\r\n\r\n"
        ),
        true,
    );
    assert_eq!(same.status, 206);
    assert_eq!(same.body, &data[..10]);

    let stale = request(
        &mut conn,
        "GET /t/blob.bin HTTP/1.1\r\nhost: x\r\nrange: bytes=0-9\r\nif-range: \"old\"\r\n\r\n",
        true,
    );
    assert_eq!(stale.status, 200, "a stale validator gets the whole file");
    assert_eq!(stale.body.len(), 10_000);

    let bad = request(
        &mut conn,
        "GET /t/blob.bin HTTP/1.1\r\nhost: x\r\nrange: bytes=20000-\r\n\r\n",
        true,
    );
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), Some("bytes */10000"));

    let missing = request(&mut conn, "GET /t/nope HTTP/1.1\r\nhost: x\r\n\r\n", true);
    assert_eq!(missing.status, 404);
    let escape = request(
        &mut conn,
        "GET /t/../Cargo.toml HTTP/1.1\r\nhost: x\r\n\r\n",
        true,
    );
    assert_eq!(escape.status, 404);
    let post = request(
        &mut conn,
        "POST /t/blob.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        true,
    );
    assert_eq!(post.status, 405);
    assert_eq!(server.request_count(), 9);
}

#[test]
fn slow_clients_lose_their_slot_at_the_head_deadline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"content").unwrap();
    let server = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        vec![Mount {
            prefix: "/t/".into(),
            dir: dir.path().to_path_buf(),
        }],
    )
    .unwrap();
    let addr = server.local_addr();
    // Every slot held by a client that sends its head one byte now and then.
    let mut slow: Vec<TcpStream> = (0..256)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    let started = std::time::Instant::now();
    let get = || {
        let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
        c.get_mut()
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        request(&mut c, "GET /t/f HTTP/1.1\r\nhost: x\r\n\r\n", true).status
    };
    // Until the slow clients' deadline, the server is full. (Bounded: the deadline is
    // 10 s; give up after 30.)
    let mut full = 0;
    let status = loop {
        let st = get();
        if st != 503 || started.elapsed() > std::time::Duration::from_secs(30) {
            break st;
        }
        full += 1;
        // Keep trickling, as a slow-loris client does.
        for s in &mut slow {
            let _ = s.write_all(b"E");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(full > 0, "the slots were held at first");
    assert_eq!(status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= upkeep_publish::serve::HEAD_DEADLINE - std::time::Duration::from_secs(1),
        "{waited:?}"
    );
    // The slow clients were told why.
    let mut c = BufReader::new(slow.remove(0));
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 408"), "{line:?}");
}
