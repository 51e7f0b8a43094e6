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
    /// The caller's input is wrong: arguments, criteria, a file, a URL, an id that is not
    /// the right one here.
    InvalidInput,
    /// What the caller named does not exist: an update id, a service.
    NotFound,
    /// The caller may not do this: a read-only session, a state directory of another user.
    Denied,
    /// Not now: another install runs, or a restart must come first.
    Busy,
    /// The caller asked the operation to stop.
    Cancelled,
    /// No room on the disk.
    DiskFull,
    /// The state database is damaged, of a newer agent, or failed.
    State,
    /// The install engine or a handler failed or refused (the update's own result says why).
    Install,
    /// A content transfer failed (after retries and mirrors).
    Transfer,
    /// Anything else: the HRESULT and the message say what.
    Other,
}

impl ErrorKind {
    /// The kind an HRESULT stands for, when nothing more precise is known (the table that
    /// [`Error::new`] uses).
    pub fn of(code: HResult) -> ErrorKind {
        match code {
            HResult::WU_E_INVALID_CRITERIA
            | HResult::WU_E_INVALID_FILE
            | HResult::WU_E_PT_INVALID_URL
            | HResult::WU_E_NOT_APPLICABLE
            | HResult::WU_E_DUPLICATE_ITEM
            | HResult::E_INVALIDARG => ErrorKind::InvalidInput,
            HResult::WU_E_UNKNOWN_ID | HResult::WU_E_UNKNOWN_SERVICE => ErrorKind::NotFound,
            HResult::E_ACCESSDENIED
            | HResult::WU_E_INVALID_OPERATION
            | HResult::WU_E_DS_DECLINENOTALLOWED => ErrorKind::Denied,
            HResult::WU_E_INSTALL_NOT_ALLOWED | HResult::WU_E_EXCLUSIVE_INSTALL_CONFLICT => {
                ErrorKind::Busy
            }
            HResult::WU_E_CALL_CANCELLED => ErrorKind::Cancelled,
            HResult::E_DISK_FULL => ErrorKind::DiskFull,
            HResult::WU_E_NOT_INITIALIZED => ErrorKind::NotInitialized,
            HResult::WU_E_DS_UNEXPECTED => ErrorKind::State,
            _ => ErrorKind::Other,
        }
    }

    /// The D-Bus error name the daemon answers a failed call of this kind with (the
    /// message carries the HRESULT).
    pub fn dbus_name(self) -> &'static str {
        match self {
            ErrorKind::Network => "org.upkeep.Agent1.Error.Network",
            ErrorKind::InvalidMetadata
            | ErrorKind::Threshold
            | ErrorKind::Expired
            | ErrorKind::Rollback
            | ErrorKind::VersionMismatch
            | ErrorKind::Length
            | ErrorKind::Hash
            | ErrorKind::TooLarge
            | ErrorKind::MissingMeta => "org.upkeep.Agent1.Error.RepositoryRefused",
            ErrorKind::Limit => "org.upkeep.Agent1.Error.Limit",
            ErrorKind::NotInitialized => "org.upkeep.Agent1.Error.NotInitialized",
            ErrorKind::Io => "org.upkeep.Agent1.Error.Io",
            ErrorKind::InvalidInput => "org.upkeep.Agent1.Error.InvalidArgs",
            ErrorKind::NotFound => "org.upkeep.Agent1.Error.NotFound",
            ErrorKind::Denied => "org.upkeep.Agent1.Error.AccessDenied",
            ErrorKind::Busy => "org.upkeep.Agent1.Error.Busy",
            ErrorKind::Cancelled => "org.upkeep.Agent1.Error.Cancelled",
            ErrorKind::DiskFull => "org.upkeep.Agent1.Error.DiskFull",
            ErrorKind::State => "org.upkeep.Agent1.Error.State",
            ErrorKind::Install => "org.upkeep.Agent1.Error.Install",
            ErrorKind::Transfer => "org.upkeep.Agent1.Error.Transfer",
            ErrorKind::Other => "org.upkeep.Agent1.Error.Failed",
        }
    }
}

/// An error with its WUA result code. `Display` gives the whole message (naming what was
/// wrong and why); [`Error::hresult`] the code that scripts and WUA-literate people read;
/// [`Error::kind`] the kind of failure; [`Error::cause`] the typed error of the layer it
/// came from (TUF, the store, the install engine, the transfer engine), for code that
/// tells causes apart by downcasting. As `std::io::Error` does with a custom error, its
/// `source()` is the cause's own source, not the cause, whose message `Display` already
/// says: a report that walks the chain says each cause once.
#[derive(Debug, Clone)]
pub struct Error {
    code: HResult,
    message: String,
    kind: ErrorKind,
    cause: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().and_then(|e| e.source())
    }
}

impl Error {
    /// An error with a code and a message, of the kind the code stands for
    /// ([`ErrorKind::of`]).
    pub fn new(code: HResult, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            kind: ErrorKind::of(code),
            cause: None,
        }
    }
    /// A file-system failure, as `code`: the message is the `PathError`'s (it names the
    /// path and the cause), the `PathError` is the typed cause, and a full disk is
    /// `E_DISK_FULL` of kind [`ErrorKind::DiskFull`] whatever `code` says.
    pub fn fs(code: HResult, e: upkeep_fs::PathError) -> Error {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            return Error::new(HResult::E_DISK_FULL, e.to_string())
                .with_kind(ErrorKind::DiskFull)
                .with_cause(e);
        }
        Error::new(code, e.to_string()).with_cause(e)
    }
    /// The same error, converted from `cause` (whose message this one's includes).
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.cause = Some(std::sync::Arc::new(cause));
        self
    }
    /// The typed error this one was converted from, if any: `upkeep_tuf::Error`,
    /// `upkeep_store::StoreError`, `upkeep_install::InstallError`,
    /// `upkeep_transfer::TransferError` (downcast with `downcast_ref`).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
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
    /// The exit code of a command that fails with this error (README, "Exit codes"): 2
    /// for bad input, 4 when cancelled, 1 otherwise. One table with
    /// [`ErrorKind::dbus_name`].
    pub fn exit_code(&self) -> u8 {
        match (self.kind, self.code) {
            (ErrorKind::Cancelled, _) | (_, HResult::WU_E_CALL_CANCELLED) => 4,
            (ErrorKind::InvalidInput | ErrorKind::NotFound, _) => 2,
            // A TUF client refusing a URL says NotInitialized; the input was the URL.
            (_, HResult::WU_E_PT_INVALID_URL) => 2,
            _ => 1,
        }
    }
    /// The D-Bus error name for this error ([`ErrorKind::dbus_name`]).
    pub fn dbus_name(&self) -> &'static str {
        self.kind.dbus_name()
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
        | T::Rollback { .. }
        | T::Version { .. }
        | T::EqualVersion { .. }
        | T::MissingMeta { .. }
        | T::Length { .. }
        | T::Hash { .. } => HResult::WU_E_INVALID_UPDATE,
        T::Io(_) => HResult::WU_E_DS_UNEXPECTED,
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
        let kind = match &e {
            upkeep_store::StoreError::DiskFull { .. } => ErrorKind::DiskFull,
            _ => ErrorKind::State,
        };
        Error::new(e.hresult(), e.to_string())
            .with_kind(kind)
            .with_cause(e)
    }
}

impl From<upkeep_install::InstallError> for Error {
    fn from(e: upkeep_install::InstallError) -> Self {
        let kind = match ErrorKind::of(e.hresult) {
            ErrorKind::Other => ErrorKind::Install,
            k => k,
        };
        Error::new(e.hresult, e.message.clone())
            .with_kind(kind)
            .with_cause(e)
    }
}

impl From<upkeep_transfer::TransferError> for Error {
    fn from(e: upkeep_transfer::TransferError) -> Self {
        use upkeep_transfer::TransferError as T;
        let kind = match &e {
            T::Aborted { .. } => ErrorKind::Cancelled,
            T::NotFound { .. } | T::Network { .. } => ErrorKind::Network,
            T::HashMismatch { .. } => ErrorKind::Hash,
            T::DiskFull { .. } => ErrorKind::DiskFull,
            T::Io(_) => ErrorKind::Io,
            _ => ErrorKind::Transfer,
        };
        Error::new(e.hresult(), e.to_string())
            .with_kind(kind)
            .with_cause(e)
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
        T::Rollback { .. } => ErrorKind::Rollback,
        T::Version { .. } | T::EqualVersion { .. } => ErrorKind::VersionMismatch,
        T::Length { .. } => ErrorKind::Length,
        T::Hash { .. } => ErrorKind::Hash,
        T::TooLarge { .. } => ErrorKind::TooLarge,
        T::MissingMeta { .. } => ErrorKind::MissingMeta,
        T::Io(_) => ErrorKind::Io,
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
            cause: Some(std::sync::Arc::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_variant_not_the_message() {
        let rollback = upkeep_tuf::Error::Rollback {
            role: "timestamp".into(),
            trusted: 5,
            got: 4,
        };
        let mismatch = upkeep_tuf::Error::Version {
            role: "snapshot".into(),
            expected: 5,
            got: 4,
        };
        // The same words in both messages; the kinds still differ.
        let length = upkeep_tuf::Error::Length {
            what: "t".into(),
            reason: "hash".into(),
        };
        let hash = upkeep_tuf::Error::Hash {
            what: "t".into(),
            reason: "length".into(),
        };
        assert_eq!(Error::from(rollback).kind(), ErrorKind::Rollback);
        assert_eq!(Error::from(mismatch).kind(), ErrorKind::VersionMismatch);
        assert_eq!(Error::from(length).kind(), ErrorKind::Length);
        assert_eq!(Error::from(hash).kind(), ErrorKind::Hash);
    }

    #[test]
    fn one_table_gives_kind_exit_code_and_dbus_name() {
        let e = Error::new(HResult::WU_E_INVALID_CRITERIA, "bad");
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::InvalidInput, 2));
        assert_eq!(e.dbus_name(), "org.upkeep.Agent1.Error.InvalidArgs");
        let e = Error::new(HResult::WU_E_UNKNOWN_SERVICE, "no such service");
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::NotFound, 2));
        let e = Error::new(HResult::WU_E_CALL_CANCELLED, "stopped");
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::Cancelled, 4));
        let e = Error::new(HResult::WU_E_INSTALL_NOT_ALLOWED, "another install runs");
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::Busy, 1));
        assert_eq!(e.dbus_name(), "org.upkeep.Agent1.Error.Busy");
        // A TUF client refusing the URL: not initialised, and still the caller's input.
        let e = Error::from(upkeep_tuf::Error::Transport(
            upkeep_tuf::TransportError::InvalidUrl { url: "x".into() },
        ));
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::NotInitialized, 2));
        // Every refusal of the repository is one D-Bus error, whatever check refused it.
        for k in [ErrorKind::Threshold, ErrorKind::Rollback, ErrorKind::Hash] {
            assert_eq!(k.dbus_name(), "org.upkeep.Agent1.Error.RepositoryRefused");
        }
    }

    #[test]
    fn lower_layers_keep_their_kind_and_their_typed_cause_and_say_it_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let install = upkeep_install::InstallError::io(std::path::Path::new("/r/f"), io);
        let e = Error::from(install);
        assert_eq!(e.kind(), ErrorKind::DiskFull);
        assert!(e
            .cause()
            .and_then(|c| c.downcast_ref::<upkeep_install::InstallError>())
            .is_some());
        let fs = upkeep_fs::at(std::path::Path::new("/s/state.db"))(
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        let text = fs.to_string();
        assert!(
            text.contains("/s/state.db") && text.contains("denied"),
            "{text}"
        );
        assert!(
            std::error::Error::source(&fs).is_none(),
            "the cause is in the message, said once"
        );
        // The chain of an upkeep error never repeats its message.
        let e = Error::from(upkeep_tuf::Error::Expired {
            role: "timestamp".into(),
            expires: jiff::Timestamp::UNIX_EPOCH,
        });
        let mut chain = vec![e.to_string()];
        let mut s = std::error::Error::source(&e);
        while let Some(c) = s {
            chain.push(c.to_string());
            s = c.source();
        }
        assert_eq!(chain.len(), 1, "{chain:?}");
    }

    #[test]
    fn a_file_system_error_keeps_its_path_its_cause_and_a_full_disk() {
        let p = std::path::Path::new("/s/services/x");
        let e = Error::fs(
            HResult::WU_E_DS_UNEXPECTED,
            upkeep_fs::at(p)(std::io::Error::from_raw_os_error(libc::EACCES)),
        );
        assert_eq!(e.hresult(), HResult::WU_E_DS_UNEXPECTED);
        assert_eq!(e.message().matches("/s/services/x").count(), 1, "{e}");
        assert!(e
            .cause()
            .and_then(|c| c.downcast_ref::<upkeep_fs::PathError>())
            .is_some_and(|c| c.raw_os_error() == Some(libc::EACCES)));
        let full = Error::fs(
            HResult::WU_E_DS_UNEXPECTED,
            upkeep_fs::at(p)(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        );
        assert_eq!(full.hresult(), HResult::E_DISK_FULL);
        assert_eq!(full.kind(), ErrorKind::DiskFull);
    }
}
