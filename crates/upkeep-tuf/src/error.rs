//! Errors of the TUF client. Each names the role or target it is about.

use std::path::PathBuf;

/// A failure to fetch bytes from a repository.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The server answered 404 or 403: the file does not exist (root rotation stops here).
    #[error("{url}: not found (HTTP {status})")]
    NotFound {
        /// The URL asked for.
        url: String,
        /// 403 or 404.
        status: u16,
    },
    /// Any other unsuccessful HTTP status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The status.
        status: u16,
    },
    /// The connection failed or broke.
    #[error("{url}: {message}")]
    Connection {
        /// The URL asked for.
        url: String,
        /// What happened.
        message: String,
    },
    /// The URL cannot be formed or parsed.
    #[error("invalid URL {url}")]
    InvalidUrl {
        /// The URL text.
        url: String,
    },
}

/// Everything that can go wrong while updating or reading TUF metadata.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The bytes are not valid metadata of the expected shape.
    #[error("{role}: invalid metadata: {reason}")]
    Parse {
        /// The role.
        role: String,
        /// What is wrong.
        reason: String,
    },
    /// Fewer valid signatures than the threshold.
    #[error("{role}: {valid} valid signature(s), {threshold} required")]
    Threshold {
        /// The role.
        role: String,
        /// Valid signatures from distinct authorised keys.
        valid: usize,
        /// The threshold.
        threshold: u64,
    },
    /// The metadata has expired.
    #[error("{role}: expired at {expires}")]
    Expired {
        /// The role.
        role: String,
        /// Its expiry time.
        expires: jiff::Timestamp,
    },
    /// A version went backwards (rollback attack) or does not match what was expected.
    #[error("{role}: version {got}, expected {expected}")]
    Version {
        /// The role.
        role: String,
        /// What the trusted metadata demands.
        expected: String,
        /// What arrived.
        got: u64,
    },
    /// Same version as the trusted copy (not an error for the caller: keep the trusted one).
    #[error("{role}: same version as the trusted copy")]
    EqualVersion {
        /// The role.
        role: String,
    },
    /// Length or hashes do not match the signed values.
    #[error("{what}: {reason}")]
    LengthOrHash {
        /// The file.
        what: String,
        /// Which check failed.
        reason: String,
    },
    /// Data longer than its limit.
    #[error("{what}: more than {limit} bytes")]
    TooLarge {
        /// The file.
        what: String,
        /// The limit that was hit.
        limit: u64,
    },
    /// Snapshot does not list a role that must be loaded.
    #[error("snapshot does not list {role}")]
    MissingMeta {
        /// The role.
        role: String,
    },
    /// Local metadata could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A limit of [`crate::Limits`] was reached.
    #[error("{0}")]
    Limit(String),
    /// The operation is not possible in this state (e.g. offline with no local metadata).
    #[error("{0}")]
    State(String),
}

impl Error {
    pub(crate) fn parse(role: &str, reason: impl Into<String>) -> Error {
        Error::Parse {
            role: role.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the metadata itself was refused (signatures, versions, expiry, hashes,
    /// format): the repository is not trustworthy right now, as opposed to unreachable.
    pub fn is_verification_failure(&self) -> bool {
        !matches!(
            self,
            Error::Transport(_) | Error::Io { .. } | Error::State(_)
        )
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
