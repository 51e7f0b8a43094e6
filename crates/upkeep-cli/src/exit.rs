//! Exit codes, documented in the README.

use std::process::ExitCode;

use upkeep::{Error, OperationResultCode};

/// What the process exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything succeeded.
    Success,
    /// 1: the operation failed.
    Failure,
    /// 2: bad usage or bad input (arguments, criteria, files).
    Usage,
    /// 3: partial success (`SucceededWithErrors`).
    Partial,
    /// 4: aborted.
    Aborted,
    /// 5: success, and a restart is required.
    RebootRequired,
}

impl Exit {
    /// The code for an operation result.
    pub fn for_result(code: OperationResultCode) -> Exit {
        match code {
            OperationResultCode::Succeeded => Exit::Success,
            OperationResultCode::SucceededWithErrors => Exit::Partial,
            OperationResultCode::Aborted => Exit::Aborted,
            _ => Exit::Failure,
        }
    }

    /// Prints `e` to stderr (as JSON with `json`) and picks the exit code from the agent's
    /// one table of kinds and codes ([`Error::exit_code`]): bad input (criteria, files,
    /// URLs, ids, service names) is 2, cancelled 4, everything else 1.
    pub fn from_error(e: &Error, json: bool) -> Exit {
        report(e, json);
        match e.exit_code() {
            2 => Exit::Usage,
            4 => Exit::Aborted,
            _ => Exit::Failure,
        }
    }
}

/// Prints an error to stderr.
pub fn report(e: &Error, json: bool) {
    let code = e.hresult();
    if json {
        let v = serde_json::json!({
            "error": {
                "message": e.message(),
                "hresult": format!("0x{:08X}", code.as_u32()),
                "name": code.name(),
                "kind": format!("{:?}", e.kind()),
            }
        });
        eprintln!("{v}");
    } else {
        crate::logs::error!("{} [{code}]", crate::output::t(e.message()));
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(match e {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Partial => 3,
            Exit::Aborted => 4,
            Exit::RebootRequired => 5,
        })
    }
}
