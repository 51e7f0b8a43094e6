//! WUA enumerations with their documented numeric values.
//!
//! Each enum serialises (in update metadata and `--json` output) as the WUA name without its
//! prefix, e.g. `UpdateType::Software` ⇄ `"Software"`, and converts to its numeric value with
//! `as i32`.

use serde::{Deserialize, Serialize};

macro_rules! wua_enum {
    ($(#[$doc:meta])* $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $value:expr ),* $(,)? } default $default:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[repr(i32)]
        pub enum $name {
            $( $(#[$vdoc])* $variant = $value, )*
        }

        impl $name {
            /// The WUA name of the value (`"Software"`).
            pub fn as_str(self) -> &'static str {
                match self { $( Self::$variant => stringify!($variant), )* }
            }

            /// Parses the WUA name, ignoring ASCII case.
            pub fn from_name(name: &str) -> Option<Self> {
                $( if name.eq_ignore_ascii_case(stringify!($variant)) { return Some(Self::$variant); } )*
                None
            }

            /// The value with this number.
            pub fn from_i32(n: i32) -> Option<Self> {
                $( if n == $value { return Some(Self::$variant); } )*
                None
            }

            /// Every value, in numeric order.
            pub fn all() -> &'static [Self] {
                &[$( Self::$variant, )*]
            }
        }

        impl Default for $name {
            fn default() -> Self { Self::$default }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wua_enum! {
    /// The outcome of a search, download, install or uninstall (`OperationResultCode`).
    OperationResultCode {
        /// Not started.
        NotStarted = 0,
        /// In progress.
        InProgress = 1,
        /// Completed successfully.
        Succeeded = 2,
        /// Completed, but one or more errors occurred.
        SucceededWithErrors = 3,
        /// Failed to complete.
        Failed = 4,
        /// Cancelled.
        Aborted = 5,
    } default NotStarted
}

wua_enum! {
    /// The kind of an update (`UpdateType`).
    UpdateType {
        /// Software.
        Software = 1,
        /// A device driver or device content.
        Driver = 2,
    } default Software
}

wua_enum! {
    /// How much an installation affects the machine (`InstallationImpact`).
    InstallationImpact {
        /// Typical impact.
        Normal = 0,
        /// Insignificant: no restart, no UI.
        Minor = 1,
        /// Must be installed alone.
        RequiresExclusiveHandling = 2,
    } default Normal
}

wua_enum! {
    /// Whether an installation needs a restart (`InstallationRebootBehavior`).
    InstallationRebootBehavior {
        /// Never requires a restart.
        NeverReboots = 0,
        /// Always requires a restart after success.
        AlwaysRequiresReboot = 1,
        /// May request a restart after success.
        CanRequestReboot = 2,
    } default NeverReboots
}

wua_enum! {
    /// The action an update is deployed for (`DeploymentAction`).
    DeploymentAction {
        /// No explicit action.
        None = 0,
        /// Should be installed.
        Installation = 1,
        /// Should be uninstalled.
        Uninstallation = 2,
        /// Deployed only to evaluate applicability.
        Detection = 3,
        /// May be installed.
        OptionalInstallation = 4,
    } default Installation
}

wua_enum! {
    /// The priority of a download (`DownloadPriority`).
    DownloadPriority {
        /// Low priority; may take a bandwidth cap.
        Low = 1,
        /// Normal priority (the default).
        Normal = 2,
        /// High priority.
        High = 3,
        /// Extra-high priority.
        ExtraHigh = 4,
    } default Normal
}

wua_enum! {
    /// The phase of the update currently downloading (`DownloadPhase`).
    DownloadPhase {
        /// Initializing the download.
        Initializing = 1,
        /// Transferring bytes.
        Downloading = 2,
        /// Verifying the content.
        Verifying = 3,
    } default Initializing
}

wua_enum! {
    /// What a download fetches (`DownloadType`).
    DownloadType {
        /// All content.
        Full = 0,
        /// Only the update's bootstrapper.
        UpdateBootstrapper = 1,
    } default Full
}

wua_enum! {
    /// The operation recorded in a history entry (`UpdateOperation`).
    UpdateOperation {
        /// Installation.
        Installation = 1,
        /// Uninstallation.
        Uninstallation = 2,
    } default Installation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_values_match_wuapi_h() {
        assert_eq!(OperationResultCode::Aborted as i32, 5);
        assert_eq!(DownloadPhase::Verifying as i32, 3);
        assert_eq!(DownloadPriority::ExtraHigh as i32, 4);
        assert_eq!(InstallationImpact::RequiresExclusiveHandling as i32, 2);
        assert_eq!(UpdateType::Driver as i32, 2);
    }

    #[test]
    fn names_round_trip_case_insensitively() {
        for t in UpdateType::all() {
            assert_eq!(UpdateType::from_name(&t.as_str().to_lowercase()), Some(*t));
        }
        assert_eq!(UpdateType::from_name("Firmware"), None);
        assert_eq!(
            serde_json::to_string(&UpdateType::Software).unwrap(),
            "\"Software\""
        );
    }
}
