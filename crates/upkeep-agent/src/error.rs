//! The library's error: a message naming what was wrong, and its WUA code.

use upkeep_types::HResult;

/// What kind of failure an [`Error`] is, for code that must tell causes apart beyond the
/// HRESULT (many TUF refusals share `WU_E_INVALID_UPDATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The repository could not be reached, or answered an HTTP error.
    Network,
    /// Metadata that is not valid JSON or TUF.
    InvalidMetadata,
    /// Fewer valid signatures than the role's threshold.
    Threshold,
    /// Expired metadata (a freeze attack, or a repository no one renewed).
    Expired,
    /// A version older than the trusted one (a rollback attack).
    Rollback,
    /// A version other than the one signed metadata names (mix-and-match).
    VersionMismatch,
    /// A length other than the signed one.
    Length,
    /// A hash other than the signed one.
    Hash,
    /// Metadata longer than its limit (endless data).
    TooLarge,
    /// The snapshot does not list a role it must.
    MissingMeta,
    /// A configured limit was reached.
    Limit,
    /// Not set up: no trusted root, no repository, no local metadata.
    NotInitialized,
    /// Local files could not be read or written.
    Io,
    /// Anything else: the HRESULT and the message say what.
    Other,
}

/// An error with its WUA result code. `Display` gives the message; [`Error::hresult`] the
/// code that scripts and WUA-literate people read; [`Error::kind`] the kind of failure;
/// [`std::error::Error::source`] the error it came from, when there is one.
#[derive(Debug, Clone)]
pub struct Error {
    code: HResult,
    message: String,
    kind: ErrorKind,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// An error with a code and a message.
    pub fn new(code: HResult, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            kind: ErrorKind::Other,
            source: None,
        }
    }
    /// The same error, of `kind`.
    pub fn with_kind(mut self, kind: ErrorKind) -> Error {
        self.kind = kind;
        self
    }
    /// The WUA result code.
    pub fn hresult(&self) -> HResult {
        self.code
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::criteria::CriteriaError> for Error {
    fn from(e: crate::criteria::CriteriaError) -> Self {
        Error::new(e.hresult(), e.to_string())
    }
}

impl From<upkeep_types::IndexError> for Error {
    fn from(e: upkeep_types::IndexError) -> Self {
        Error::new(e.hresult(), e.to_string())
    }
}

/// The WUA code for a TUF failure.
pub fn tuf_hresult(e: &upkeep_tuf::Error) -> HResult {
    use upkeep_tuf::{Error as T, TransportError as X};
    match e {
        T::Transport(X::NotFound { status, .. }) | T::Transport(X::Status { status, .. }) => {
            HResult::from_http_status(*status)
        }
        T::Transport(X::Connection { .. }) => HResult::WU_E_PT_SOAPCLIENT_CONNECT,
        T::Transport(X::InvalidUrl { .. }) => HResult::WU_E_PT_INVALID_URL,
        T::Parse { .. } | T::TooLarge { .. } => HResult::WU_E_PT_INVALID_FORMAT,
        T::Threshold { .. }
        | T::Expired { .. }
        | T::Version { .. }
        | T::EqualVersion { .. }
        | T::MissingMeta { .. }
        | T::LengthOrHash { .. } => HResult::WU_E_INVALID_UPDATE,
        T::Io { .. } => HResult::WU_E_DS_UNEXPECTED,
        T::Limit(_) => HResult::WU_E_OUTOFRANGE,
        T::State(_) => HResult::WU_E_NOT_INITIALIZED,
    }
}

impl From<upkeep_job::JobError> for Error {
    fn from(e: upkeep_job::JobError) -> Self {
        Error::new(e.code, e.message)
    }
}

impl From<upkeep_store::StoreError> for Error {
    fn from(e: upkeep_store::StoreError) -> Self {
        Error::new(e.hresult(), e.to_string())
    }
}

impl From<upkeep_install::InstallError> for Error {
    fn from(e: upkeep_install::InstallError) -> Self {
        Error::new(e.hresult, e.message)
    }
}

/// The kind of a TUF failure: which check refused the repository.
pub fn tuf_kind(e: &upkeep_tuf::Error) -> ErrorKind {
    use upkeep_tuf::Error as T;
    match e {
        T::Transport(upkeep_tuf::TransportError::InvalidUrl { .. }) => ErrorKind::NotInitialized,
        T::Transport(_) => ErrorKind::Network,
        T::Parse { .. } => ErrorKind::InvalidMetadata,
        T::Threshold { .. } => ErrorKind::Threshold,
        T::Expired { .. } => ErrorKind::Expired,
        T::Version { expected, .. } if expected.starts_with(">=") => ErrorKind::Rollback,
        T::Version { .. } | T::EqualVersion { .. } => ErrorKind::VersionMismatch,
        T::LengthOrHash { reason, .. } if reason.contains("length") => ErrorKind::Length,
        T::LengthOrHash { .. } => ErrorKind::Hash,
        T::TooLarge { .. } => ErrorKind::TooLarge,
        T::MissingMeta { .. } => ErrorKind::MissingMeta,
        T::Io { .. } => ErrorKind::Io,
        T::Limit(_) => ErrorKind::Limit,
        T::State(_) => ErrorKind::NotInitialized,
    }
}

impl From<upkeep_tuf::Error> for Error {
    fn from(e: upkeep_tuf::Error) -> Self {
        let code = tuf_hresult(&e);
        let message = if e.is_verification_failure() {
            format!("repository refused: {e}")
        } else {
            e.to_string()
        };
        Error {
            code,
            message,
            kind: tuf_kind(&e),
            source: Some(std::sync::Arc::new(e)),
        }
    }
}
