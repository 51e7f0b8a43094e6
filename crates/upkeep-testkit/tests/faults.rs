//! Each fault of the testkit's server does exactly what it says.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use upkeep_testkit::faults::{Fault, FaultServer, Logged};

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
    timed_out: bool,
}

fn get(server: &FaultServer, path: &str, extra: &str) -> Reply {
    let addr = server
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n").unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let timed_out = loop {
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break true
            }
            Err(_) => break false,
        }
    };
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head,
        body: raw[split..].to_vec(),
        timed_out,
    }
}

fn data() -> Vec<u8> {
    (0..5000u32).map(|i| (i % 253) as u8).collect()
}

#[test]
fn every_fault_does_what_it_says() {
    let s = FaultServer::start();
    s.put("/f", data());

    let ok = get(&s, "/f", "");
    assert_eq!((ok.status, ok.body.clone()), (200, data()));

    s.push_fault("/f", Fault::DropAfter(100));
    let r = get(&s, "/f", "");
    assert!(r.head.contains("content-length: 5000"));
    assert_eq!(r.body, &data()[..100]);
    assert!(!r.timed_out);

    s.push_fault("/f", Fault::StallAfter(10));
    let r = get(&s, "/f", "");
    assert_eq!(r.body, &data()[..10]);
    assert!(r.timed_out, "the connection stays open without data");

    s.push_fault("/f", Fault::Status(503));
    assert_eq!(get(&s, "/f", "").status, 503);

    s.push_fault("/f", Fault::ShortBody(4000));
    assert_eq!(get(&s, "/f", "").body.len(), 4000);

    s.push_fault("/f", Fault::ExtraBytes(7));
    let r = get(&s, "/f", "");
    assert_eq!(r.body.len(), 5007);
    assert_eq!(&r.body[..5000], &data()[..]);

    s.push_fault("/f", Fault::WrongByte(42));
    let r = get(&s, "/f", "");
    assert_eq!(r.body.len(), 5000);
    assert_ne!(r.body[42], data()[42]);

    let r = get(&s, "/f", "range: bytes=4000-\r\n");
    assert_eq!(r.status, 206);
    assert!(r.head.contains("content-range: bytes 4000-4999/5000"));
    assert_eq!(r.body, &data()[4000..]);

    s.push_fault("/f", Fault::IgnoreRange);
    let r = get(&s, "/f", "range: bytes=4000-\r\n");
    assert_eq!((r.status, r.body.len()), (200, 5000));

    let r = get(&s, "/f", "range: bytes=10-\r\nif-range: \"stale\"\r\n");
    assert_eq!(
        r.status, 200,
        "a stale If-Range validator gets the whole file"
    );

    assert_eq!(get(&s, "/missing", "").status, 404);
    assert_eq!(s.pending_faults("/f"), 0);
    let log = s.log();
    assert_eq!(log.len(), 11);
    assert_eq!(
        log[7],
        Logged {
            path: "/f".into(),
            range: Some("bytes=4000-".into()),
            if_range: None
        }
    );
}
