//! WUA result codes (`HRESULT`s from `wuerror.h`) as a typed value.

use std::fmt;

/// A Windows `HRESULT`: a signed 32-bit result code. Failure codes have the high bit set;
/// Windows Update codes live in facility `0x24` (`0x8024xxxx`).
///
/// `Display` prints the symbolic name and the hex value, e.g.
/// `WU_E_NO_UPDATE (0x80240024)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HResult(pub i32);

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        impl HResult {
            $( $(#[$doc])* pub const $name: HResult = HResult($value as u32 as i32); )*

            /// The symbolic name of a known code (`"WU_E_NO_UPDATE"`), if this is one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 as u32 {
                    $( v if v == $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// A one-line description of a known code.
            pub fn description(self) -> Option<&'static str> {
                match self.0 as u32 {
                    $( v if v == $value => Some($text), )*
                    _ => None,
                }
            }

            /// Every code this crate names, in table order.
            pub fn all() -> &'static [HResult] {
                &[$( HResult::$name, )*]
            }
        }
    };
}

codes! {
    /// Success.
    S_OK = 0x0000_0000u32, "success";
    /// Operation succeeded but a restart is needed to complete it.
    WU_S_REBOOT_REQUIRED = 0x0024_0005u32, "a restart is needed to complete the operation";
    /// The update to install is already installed.
    WU_S_ALREADY_INSTALLED = 0x0024_0006u32, "the update is already installed";
    /// The update to remove is not installed.
    WU_S_ALREADY_UNINSTALLED = 0x0024_0007u32, "the update is not installed";
    /// The update to download was already downloaded.
    WU_S_ALREADY_DOWNLOADED = 0x0024_0008u32, "the update was already downloaded";
    /// Unspecified failure.
    E_FAIL = 0x8000_4005u32, "unspecified failure";
    /// Catastrophic failure: the operation stopped on an internal error (a bug).
    E_UNEXPECTED = 0x8000_FFFFu32, "unexpected failure";
    /// An argument was invalid.
    E_INVALIDARG = 0x8007_0057u32, "an argument is invalid";
    /// Access denied: a state directory other users could change.
    E_ACCESSDENIED = 0x8007_0005u32, "access denied";
    /// `HRESULT_FROM_WIN32(ERROR_FILE_EXISTS)`: a path the update writes belongs to
    /// another installed update that it does not supersede.
    E_FILE_EXISTS = 0x8007_0050u32, "a path belongs to another installed update";
    /// `HRESULT_FROM_WIN32(ERROR_DISK_FULL)`: not enough free space for the operation.
    E_DISK_FULL = 0x8007_0070u32, "not enough free disk space";
    /// The agent could not provide the service.
    WU_E_NO_SERVICE = 0x8024_0001u32, "the agent could not provide the service";
    /// An ID was not found.
    WU_E_UNKNOWN_ID = 0x8024_0003u32, "an ID was not found";
    /// The object could not be initialized (no usable repository metadata).
    WU_E_NOT_INITIALIZED = 0x8024_0004u32, "the object could not be initialized";
    /// Invalid collection index.
    WU_E_INVALIDINDEX = 0x8024_0007u32, "invalid collection index";
    /// Key for the queried item not found.
    WU_E_ITEMNOTFOUND = 0x8024_0008u32, "the item was not found";
    /// A conflicting operation is in progress.
    WU_E_OPERATIONINPROGRESS = 0x8024_0009u32, "a conflicting operation is in progress";
    /// The operation was cancelled.
    WU_E_CALL_CANCELLED = 0x8024_000Bu32, "the operation was cancelled";
    /// Nothing needed to be done.
    WU_E_NOOP = 0x8024_000Cu32, "nothing needed to be done";
    /// Required data is missing from the update metadata.
    WU_E_XML_MISSINGDATA = 0x8024_000Du32, "required data is missing from the update metadata";
    /// Invalid data in the update metadata.
    WU_E_XML_INVALID = 0x8024_000Eu32, "invalid data in the update metadata";
    /// Circular update relationships in metadata.
    WU_E_CYCLE_DETECTED = 0x8024_000Fu32, "circular update relationships in the metadata";
    /// Tried to add a duplicate item.
    WU_E_DUPLICATE_ITEM = 0x8024_0013u32, "duplicate item";
    /// Install attempted while another was running or a restart is pending.
    WU_E_INSTALL_NOT_ALLOWED = 0x8024_0016u32, "another install is running or a restart is pending";
    /// No applicable updates.
    WU_E_NOT_APPLICABLE = 0x8024_0017u32, "no applicable updates";
    /// An exclusive update cannot be installed with others.
    WU_E_EXCLUSIVE_INSTALL_CONFLICT = 0x8024_0019u32, "an exclusive update cannot be installed together with others";
    /// The update has invalid metadata.
    WU_E_INVALID_UPDATE = 0x8024_001Du32, "the update has invalid metadata";
    /// Network connection unavailable.
    WU_E_NO_CONNECTION = 0x8024_001Fu32, "network connection unavailable";
    /// The operation timed out.
    WU_E_TIME_OUT = 0x8024_0021u32, "the operation timed out";
    /// The operation failed for every update.
    WU_E_ALL_UPDATES_FAILED = 0x8024_0022u32, "the operation failed for every update";
    /// License terms were declined.
    WU_E_EULAS_DECLINED = 0x8024_0023u32, "license terms were not accepted";
    /// There are no updates.
    WU_E_NO_UPDATE = 0x8024_0024u32, "there are no updates";
    /// Invalid update type.
    WU_E_INVALID_UPDATE_TYPE = 0x8024_0026u32, "invalid update type";
    /// Uninstall is not allowed for this update.
    WU_E_UNINSTALL_NOT_ALLOWED = 0x8024_0028u32, "the update cannot be uninstalled";
    /// The file has the wrong format.
    WU_E_INVALID_FILE = 0x8024_0031u32, "the file has the wrong format";
    /// The search criteria string is invalid.
    WU_E_INVALID_CRITERIA = 0x8024_0032u32, "the search criteria are invalid";
    /// License terms could not be located.
    WU_E_EULA_UNAVAILABLE = 0x8024_0033u32, "the license terms could not be located";
    /// The update failed to download.
    WU_E_DOWNLOAD_FAILED = 0x8024_0034u32, "the update failed to download";
    /// The object's current state does not allow the operation.
    WU_E_INVALID_OPERATION = 0x8024_0036u32, "the current state does not allow the operation";
    /// Functionality not supported.
    WU_E_NOT_SUPPORTED = 0x8024_0037u32, "not supported";
    /// The update service is not registered.
    WU_E_UNKNOWN_SERVICE = 0x8024_0042u32, "the update service is not registered";
    /// The URL does not point to a file.
    WU_E_BAD_FILE_URL = 0x8024_0046u32, "the URL does not point to a file";
    /// Data out of range.
    WU_E_OUTOFRANGE = 0x8024_0049u32, "data out of range";
    /// Failure not covered by another code.
    WU_E_UNEXPECTED = 0x8024_0FFFu32, "unexpected failure";
    /// The update does not support the requested action.
    WU_E_UH_DOESNOTSUPPORTACTION = 0x8024_2004u32, "the update does not support the requested action";
    /// The update has invalid handler metadata.
    WU_E_UH_INVALIDMETADATA = 0x8024_2006u32, "the update has invalid handler metadata";
    /// The handler operation was cancelled.
    WU_E_UH_OPERATIONCANCELLED = 0x8024_2008u32, "the handler operation was cancelled";
    /// The installer failed to install or uninstall the update.
    WU_E_UH_INSTALLERFAILURE = 0x8024_200Bu32, "the installer failed";
    /// The update must be downloaded again.
    WU_E_UH_NEEDANOTHERDOWNLOAD = 0x8024_200Du32, "the update must be downloaded again";
    /// The handler operation timed out.
    WU_E_UH_TIMEOUT = 0x8024_2027u32, "the handler operation timed out";
    /// Other handler error.
    WU_E_UH_UNEXPECTED = 0x8024_2FFFu32, "unexpected handler error";
    /// Cannot connect to the server.
    WU_E_PT_SOAPCLIENT_CONNECT = 0x8024_4004u32, "cannot connect to the server";
    /// HTTP 400.
    WU_E_PT_HTTP_STATUS_BAD_REQUEST = 0x8024_4016u32, "HTTP 400 bad request";
    /// HTTP 401.
    WU_E_PT_HTTP_STATUS_DENIED = 0x8024_4017u32, "HTTP 401 denied";
    /// HTTP 403.
    WU_E_PT_HTTP_STATUS_FORBIDDEN = 0x8024_4018u32, "HTTP 403 forbidden";
    /// HTTP 404.
    WU_E_PT_HTTP_STATUS_NOT_FOUND = 0x8024_4019u32, "HTTP 404 not found";
    /// HTTP 500.
    WU_E_PT_HTTP_STATUS_SERVER_ERROR = 0x8024_401Fu32, "HTTP 500 server error";
    /// HTTP 503.
    WU_E_PT_HTTP_STATUS_SERVICE_UNAVAIL = 0x8024_4022u32, "HTTP 503 service unavailable";
    /// An HTTP status not mapped to another code.
    WU_E_PT_HTTP_STATUS_NOT_MAPPED = 0x8024_402Bu32, "HTTP status not mapped";
    /// The repository's data has an invalid format.
    WU_E_PT_INVALID_FORMAT = 0x8024_0439u32, "the server returned data in an invalid format";
    /// The repository URL is invalid.
    WU_E_PT_INVALID_URL = 0x8024_043Au32, "the URL is invalid";
    /// Other protocol error.
    WU_E_PT_UNEXPECTED = 0x8024_4FFFu32, "unexpected protocol error";
    /// The requested file has no URL.
    WU_E_DM_URLNOTAVAILABLE = 0x8024_6001u32, "the file has no URL";
    /// The file digest does not match.
    WU_E_DM_INCORRECTFILEHASH = 0x8024_6002u32, "the downloaded file's hash does not match";
    /// Unrecognised hash algorithm in the metadata.
    WU_E_DM_UNKNOWNALGORITHM = 0x8024_6003u32, "unrecognised hash algorithm";
    /// Network unavailable.
    WU_E_DM_NONETWORK = 0x8024_6005u32, "network unavailable";
    /// The update has not been downloaded.
    WU_E_DM_NOTDOWNLOADED = 0x8024_6007u32, "the update has not been downloaded";
    /// Other download-manager error.
    WU_E_DM_UNEXPECTED = 0x8024_6FFFu32, "unexpected download error";
    /// Data store unavailable.
    WU_E_DS_SHUTDOWN = 0x8024_8000u32, "the data store is shutting down";
    /// The data store is locked by another process for too long.
    WU_E_DS_INUSE = 0x8024_8001u32, "the data store is in use";
    /// Hiding refused: the update is mandatory or has a deadline.
    WU_E_DS_DECLINENOTALLOWED = 0x8024_8016u32, "a mandatory update cannot be hidden";
    /// Other data-store error.
    WU_E_DS_UNEXPECTED = 0x8024_8FFFu32, "unexpected data store error";
}

impl HResult {
    /// True for success codes (high bit clear).
    pub fn is_success(self) -> bool {
        self.0 >= 0
    }

    /// True for failure codes (high bit set).
    pub fn is_failure(self) -> bool {
        self.0 < 0
    }

    /// The code as an unsigned 32-bit value, as it is written in hex.
    pub fn as_u32(self) -> u32 {
        self.0 as u32
    }

    /// The code for an HTTP status returned by a repository.
    pub fn from_http_status(status: u16) -> HResult {
        match status {
            400 => Self::WU_E_PT_HTTP_STATUS_BAD_REQUEST,
            401 => Self::WU_E_PT_HTTP_STATUS_DENIED,
            403 => Self::WU_E_PT_HTTP_STATUS_FORBIDDEN,
            404 => Self::WU_E_PT_HTTP_STATUS_NOT_FOUND,
            500 => Self::WU_E_PT_HTTP_STATUS_SERVER_ERROR,
            503 => Self::WU_E_PT_HTTP_STATUS_SERVICE_UNAVAIL,
            _ => Self::WU_E_PT_HTTP_STATUS_NOT_MAPPED,
        }
    }

    /// Parses `0x80240024`, `80240024`, a signed decimal or a symbolic name.
    pub fn parse(text: &str) -> Option<HResult> {
        let t = text.trim();
        if let Some(code) = Self::all().iter().find(|c| c.name() == Some(t)) {
            return Some(*code);
        }
        let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"));
        if let Some(h) = hex {
            return u32::from_str_radix(h, 16).ok().map(|v| HResult(v as i32));
        }
        t.parse::<i32>().ok().map(HResult)
    }
}

impl fmt::Display for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (0x{:08X})", self.as_u32()),
            None => write!(f, "0x{:08X}", self.as_u32()),
        }
    }
}

impl fmt::Debug for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for HResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{:08X}", self.as_u32()))
    }
}

impl<'de> serde::Deserialize<'de> for HResult {
    /// From its serialised form (`"0x80240024"`), or a number.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HResult, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Text(String),
            Number(i64),
        }
        let bad = |what: &str| serde::de::Error::custom(format!("not an HRESULT: {what}"));
        match Wire::deserialize(d)? {
            Wire::Text(t) => {
                let hex = t
                    .strip_prefix("0x")
                    .or_else(|| t.strip_prefix("0X"))
                    .ok_or_else(|| bad(&t))?;
                u32::from_str_radix(hex, 16)
                    .map(|v| HResult(v as i32))
                    .map_err(|_| bad(&t))
            }
            Wire::Number(n) => i32::try_from(n)
                .or_else(|_| u32::try_from(n).map(|v| v as i32))
                .map(HResult)
                .map_err(|_| bad(&n.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_hex_and_back() {
        let j = serde_json::to_string(&HResult::WU_E_NO_UPDATE).unwrap();
        assert_eq!(j, "\"0x80240024\"");
        assert_eq!(
            serde_json::from_str::<HResult>(&j).unwrap(),
            HResult::WU_E_NO_UPDATE
        );
        assert_eq!(serde_json::from_str::<HResult>("0").unwrap(), HResult::S_OK);
        assert!(serde_json::from_str::<HResult>("\"80240024\"").is_err());
    }

    #[test]
    fn codes_have_documented_values() {
        assert_eq!(HResult::WU_E_NO_UPDATE.as_u32(), 0x8024_0024);
        assert_eq!(HResult::WU_E_INVALID_CRITERIA.as_u32(), 0x8024_0032);
        assert_eq!(HResult::WU_E_INSTALL_NOT_ALLOWED.0, -2145124330);
        assert!(HResult::WU_E_NO_UPDATE.is_failure());
        assert!(HResult::WU_S_REBOOT_REQUIRED.is_success());
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(
            HResult::WU_E_NO_UPDATE.to_string(),
            "WU_E_NO_UPDATE (0x80240024)"
        );
        assert_eq!(HResult(0x8024_7777u32 as i32).to_string(), "0x80247777");
    }

    #[test]
    fn every_name_is_unique_and_parses_back() {
        let all = HResult::all();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b, "duplicate value {a}");
            }
            assert_eq!(HResult::parse(a.name().unwrap()), Some(*a));
            assert_eq!(HResult::parse(&format!("0x{:08x}", a.as_u32())), Some(*a));
        }
    }
}
