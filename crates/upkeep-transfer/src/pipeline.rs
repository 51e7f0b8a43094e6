//! Where received bytes go: written to the partial file and hashed while they stream.
//!
//! Large files use a writer thread and a hasher thread, each fed by a bounded channel of
//! the received `Bytes` (cheap clones of one buffer), so the receiving thread only moves
//! buffers; this is the design that kept up with `curl -o` in the measurements of
//! `bench-notes.md`. Small files are collected in memory and then written and hashed in one
//! go on the blocking pool, where two threads per file would cost more than they save; the
//! receiving thread only receives either way. Memory is bounded by the channels, or by the
//! small-file threshold, whatever the file size.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use upkeep_types::ContentFile;

/// Chunks in flight per channel.
const DEPTH: usize = 16;

/// The running hashes of every signed algorithm: [`upkeep_fs::Verifier`], the one
/// verifier every crate uses.
#[derive(Clone)]
pub(crate) struct Digests {
    inner: upkeep_fs::Verifier,
}

impl Digests {
    /// Hashers for every hash of `file`; `None` if one of them is an algorithm this build
    /// cannot check or there is none (the transfer must not be trusted then).
    pub(crate) fn for_file(file: &ContentFile) -> Option<Digests> {
        upkeep_fs::Verifier::new(file.hashes.iter())
            .ok()
            .map(|inner| Digests { inner })
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// Hashes the first `len` bytes of `f` (a resumed prefix).
    fn update_from(&mut self, f: &File, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; (len as usize).min(1 << 20)];
        let mut at = 0u64;
        while at < len {
            let want = ((len - at) as usize).min(buf.len());
            let n = f.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the partial file shrank while it was hashed",
                ));
            }
            self.update(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }

    /// `Err(alg)` names the first signed hash that does not match.
    pub(crate) fn check(self, _file: &ContentFile) -> Result<(), String> {
        self.inner.finish().map_err(|e| match e {
            upkeep_fs::VerifyError::Mismatch(alg) | upkeep_fs::VerifyError::Unsupported(alg) => alg,
            upkeep_fs::VerifyError::NoUsableHash => "none".into(),
        })
    }
}

/// Why a sink failed: the local file could not be read or written.
pub(crate) type SinkError = io::Error;

/// Receives the bytes of one attempt.
pub(crate) enum Sink {
    Buffered {
        file: File,
        have: u64,
        digests: Box<Digests>,
        chunks: Vec<Bytes>,
    },
    Threads {
        to_writer: mpsc::Sender<Bytes>,
        to_hasher: mpsc::Sender<Bytes>,
        writer: oneshot::Receiver<io::Result<()>>,
        hasher: oneshot::Receiver<io::Result<Digests>>,
    },
}

impl Sink {
    /// A sink appending at `have` to `file` (the locked partial file) whose hashes start
    /// with its first `have` bytes. `threaded` picks the writer and hasher threads.
    pub(crate) fn start(
        file: &File,
        have: u64,
        digests: Digests,
        threaded: bool,
    ) -> io::Result<Sink> {
        let mut out = file.try_clone()?;
        out.set_len(have)?;
        out.seek(SeekFrom::Start(have))?;
        if !threaded {
            return Ok(Sink::Buffered {
                file: out,
                have,
                digests: Box::new(digests),
                chunks: Vec::new(),
            });
        }
        let reader = file.try_clone()?;
        let (to_writer, mut writer_rx) = mpsc::channel::<Bytes>(DEPTH);
        let (to_hasher, mut hasher_rx) = mpsc::channel::<Bytes>(DEPTH);
        let (writer_done, writer) = oneshot::channel();
        let (hasher_done, hasher) = oneshot::channel();
        std::thread::Builder::new()
            .name("upkeep-writer".into())
            .spawn(move || {
                let mut r = Ok(());
                while let Some(b) = writer_rx.blocking_recv() {
                    if let Err(e) = out.write_all(&b) {
                        r = Err(e);
                        break;
                    }
                }
                let _ = writer_done.send(r);
            })?;
        std::thread::Builder::new()
            .name("upkeep-hasher".into())
            .spawn(move || {
                let mut digests = digests;
                let r = digests.update_from(&reader, have).map(|()| {
                    while let Some(b) = hasher_rx.blocking_recv() {
                        digests.update(&b);
                    }
                    digests
                });
                let _ = hasher_done.send(r);
            })?;
        Ok(Sink::Threads {
            to_writer,
            to_hasher,
            writer,
            hasher,
        })
    }

    /// Takes one chunk. An error means the writer or hasher failed; `finish` says how.
    pub(crate) async fn push(&mut self, chunk: Bytes) -> Result<(), ()> {
        match self {
            Sink::Buffered { chunks, .. } => {
                chunks.push(chunk);
                Ok(())
            }
            Sink::Threads {
                to_writer,
                to_hasher,
                ..
            } => {
                to_writer.send(chunk.clone()).await.map_err(|_| ())?;
                to_hasher.send(chunk).await.map_err(|_| ())
            }
        }
    }

    /// Ends the attempt: waits until every pushed byte is written and hashed. The partial
    /// file is never written to after this returns.
    pub(crate) async fn finish(self) -> Result<Digests, SinkError> {
        match self {
            Sink::Buffered {
                mut file,
                have,
                mut digests,
                chunks,
            } => {
                let work = move || {
                    digests.update_from(&file, have)?;
                    for c in &chunks {
                        digests.update(c);
                        file.write_all(c)?;
                    }
                    file.flush()?;
                    Ok(*digests)
                };
                tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
                    Err(io::Error::other(format!("a transfer task failed: {e}")))
                })
            }
            Sink::Threads {
                to_writer,
                to_hasher,
                writer,
                hasher,
            } => {
                drop(to_writer);
                drop(to_hasher);
                let gone = || io::Error::other("a transfer thread ended without a result");
                let w = writer.await.unwrap_or_else(|_| Err(gone()));
                let h = hasher.await.unwrap_or_else(|_| Err(gone()));
                w?;
                h
            }
        }
    }
}
