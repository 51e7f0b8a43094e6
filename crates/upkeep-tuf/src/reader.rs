//! A verifying reader for target content.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, Result};
use crate::metadata::TargetFile;

/// Streams a target while counting and hashing it. It never reads past the signed length;
/// at end of data it fails unless the length and every signed hash match. Errors surface as
/// `io::Error`s of kind `InvalidData` wrapping an [`Error`]; [`TargetReader::copy_to`]
/// returns the [`Error`] itself.
pub struct TargetReader<R> {
    what: String,
    inner: R,
    expected_len: u64,
    read: u64,
    sha256: Option<(Sha256, String)>,
    sha512: Option<(Sha512, String)>,
    done: bool,
}

impl<R: Read> TargetReader<R> {
    /// Wraps `inner`. Fails at once if the target lists a hash algorithm this build does
    /// not support, so nothing is read for a target that could never verify.
    pub fn new(what: &str, info: &TargetFile, inner: R) -> Result<Self> {
        let mut sha256 = None;
        let mut sha512 = None;
        for (alg, hex) in info.hashes.iter() {
            match alg {
                "sha256" => sha256 = Some((Sha256::new(), hex.to_ascii_lowercase())),
                "sha512" => sha512 = Some((Sha512::new(), hex.to_ascii_lowercase())),
                other => {
                    return Err(Error::Hash {
                        what: what.into(),
                        reason: format!("unsupported hash algorithm {other:?}"),
                    })
                }
            }
        }
        if sha256.is_none() && sha512.is_none() {
            return Err(Error::Hash {
                what: what.into(),
                reason: "no hashes".into(),
            });
        }
        Ok(TargetReader {
            what: what.into(),
            inner,
            expected_len: info.length,
            read: 0,
            sha256,
            sha512,
            done: false,
        })
    }

    fn fail(&self, length: bool, reason: String) -> io::Error {
        let what = self.what.clone();
        io::Error::new(
            io::ErrorKind::InvalidData,
            if length {
                Error::Length { what, reason }
            } else {
                Error::Hash { what, reason }
            },
        )
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.read != self.expected_len {
            return Err(self.fail(
                true,
                format!(
                    "got {} bytes, signed length is {}",
                    self.read, self.expected_len
                ),
            ));
        }
        if let Some((h, want)) = self.sha256.take() {
            let got = hex::encode(h.finalize());
            if got != want {
                return Err(self.fail(false, format!("sha256 {got} does not match signed {want}")));
            }
        }
        if let Some((h, want)) = self.sha512.take() {
            let got = hex::encode(h.finalize());
            if got != want {
                return Err(self.fail(false, format!("sha512 {got} does not match signed {want}")));
            }
        }
        self.done = true;
        Ok(())
    }

    /// Copies everything to `w`, returning the verified length.
    pub fn copy_to(&mut self, w: &mut impl Write) -> Result<u64> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match self.read(&mut buf) {
                Ok(0) => return Ok(self.read),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(into_error(&self.what, e)),
            };
            w.write_all(&buf[..n])
                .map_err(|e| Error::io(self.what.clone(), e))?;
        }
    }
}

/// Unwraps a verification error carried in an `io::Error`, or describes the I/O failure.
pub fn into_error(what: &str, e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return *e
            .into_inner()
            .expect("checked")
            .downcast::<Error>()
            .expect("checked");
    }
    Error::Transport(crate::error::TransportError::Connection {
        url: what.to_string(),
        message: e.to_string(),
    })
}

impl<R: Read> Read for TargetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte more than remains, to notice data past the signed length
        // without reading more than that byte.
        let remaining = self.expected_len - self.read;
        let want = buf
            .len()
            .min(usize::try_from(remaining + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.expected_len {
            return Err(self.fail(
                true,
                format!("more than the signed length {}", self.expected_len),
            ));
        }
        if let Some((h, _)) = &mut self.sha256 {
            h.update(&buf[..n]);
        }
        if let Some((h, _)) = &mut self.sha512 {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(info: &TargetFile, data: &[u8]) -> Result<Vec<u8>> {
        let mut r = TargetReader::new("t", info, data)?;
        let mut out = Vec::new();
        r.copy_to(&mut out)?;
        Ok(out)
    }

    #[test]
    fn good_data_passes_and_bad_data_fails() {
        let info = TargetFile::from_data(b"hello world", None);
        assert_eq!(read_all(&info, b"hello world").unwrap(), b"hello world");
        assert!(matches!(
            read_all(&info, b"hello worle"),
            Err(Error::Hash { .. })
        ));
        assert!(matches!(
            read_all(&info, b"hello"),
            Err(Error::Length { .. })
        ));
        assert!(matches!(
            read_all(&info, b"hello world!!"),
            Err(Error::Length { .. })
        ));
    }

    #[test]
    fn endless_data_stops_one_byte_past_the_length() {
        let info = TargetFile::from_data(b"abc", None);
        let endless = std::io::repeat(b'a');
        let mut r = TargetReader::new("t", &info, endless.take(u64::MAX)).unwrap();
        let err = r.copy_to(&mut std::io::sink()).unwrap_err();
        assert!(
            err.to_string().contains("more than the signed length"),
            "{err}"
        );
    }

    #[test]
    fn unknown_algorithm_is_refused_before_reading() {
        let mut info = TargetFile::from_data(b"abc", None);
        info.hashes.insert("blake9", "00".repeat(32));
        assert!(TargetReader::new("t", &info, &b"abc"[..]).is_err());
    }
}
