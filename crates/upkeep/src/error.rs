//! The library's error: a message naming what was wrong, and its WUA code.

use upkeep_types::HResult;

/// An error with its WUA result code. `Display` gives the message; [`Error::hresult`] the
/// code that scripts and WUA-literate people read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: HResult,
    message: String,
}

impl Error {
    /// An error with a code and a message.
    pub fn new(code: HResult, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }
    /// The WUA result code.
    pub fn hresult(&self) -> HResult {
        self.code
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
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

impl From<upkeep_types::StateError> for Error {
    fn from(e: upkeep_types::StateError) -> Self {
        Error::new(e.hresult, e.message)
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

impl From<upkeep_tuf::Error> for Error {
    fn from(e: upkeep_tuf::Error) -> Self {
        let code = tuf_hresult(&e);
        let message = if e.is_verification_failure() {
            format!("repository refused: {e}")
        } else {
            e.to_string()
        };
        Error::new(code, message)
    }
}
