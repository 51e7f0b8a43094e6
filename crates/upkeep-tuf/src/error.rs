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
    /// A version older than the trusted one (a rollback attack).
    #[error("{role}: version {got}, expected >= {trusted}")]
    Rollback {
        /// The role.
        role: String,
        /// The version trusted (or listed by trusted metadata).
        trusted: u64,
        /// What arrived.
        got: u64,
    },
    /// A version other than the one that signed metadata names (mix-and-match), or not
    /// the next root.
    #[error("{role}: version {got}, expected {expected}")]
    Version {
        /// The role.
        role: String,
        /// The version the trusted metadata demands.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// Same version as the trusted copy (not an error for the caller: keep the trusted one).
    #[error("{role}: same version as the trusted copy")]
    EqualVersion {
        /// The role.
        role: String,
    },
    /// A length other than the signed one.
    #[error("{what}: {reason}")]
    Length {
        /// The file.
        what: String,
        /// What the lengths were.
        reason: String,
    },
    /// A hash other than the signed one, or no hash that this build can check.
    #[error("{what}: {reason}")]
    Hash {
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
    /// (The path and its cause are said in the message; not a `source()`, so that they
    /// are said once.)
    #[error("{0}")]
    Io(upkeep_fs::PathError),
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

    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Error {
        Error::Io(upkeep_fs::at(&path.into())(cause))
    }

    /// True when the metadata itself was refused (signatures, versions, expiry, hashes,
    /// format): the repository is not trustworthy right now, as opposed to unreachable.
    pub fn is_verification_failure(&self) -> bool {
        !matches!(self, Error::Transport(_) | Error::Io(_) | Error::State(_))
    }
}

impl From<upkeep_fs::PathError> for Error {
    fn from(e: upkeep_fs::PathError) -> Error {
        Error::Io(e)
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
