//! Value types shared by every upkeep crate.
//!
//! This crate owns the vocabulary of the Windows Update Agent model as Rust values:
//! [`HResult`] and the table of WUA result codes, the WUA enumerations
//! ([`OperationResultCode`], [`UpdateType`], [`InstallationImpact`], …), the signed update
//! metadata schema ([`UpdateMetadata`]) and the caller-facing [`Update`] and
//! [`UpdateCollection`]. It does no I/O.

pub mod applicability;
mod enums;
mod hashes;
mod hresult;
pub mod text;
mod update;

pub use applicability::{Applicability, FileRule, Machine, OsRule, RuleCheck};
pub use enums::*;
pub use hashes::Hashes;
pub use hresult::*;
pub use update::*;
