//! Oversight: the registries an inspector checks on site (party members, public-institution
//! staff, official vehicles, departments' power and responsibility lists) and the audited,
//! need-to-know look-ups in them (DESIGN §2), and disciplinary cases with working-day deadlines,
//! reminders and overdue alarms ([`cases`]), and the integrity index per unit ([`integrity`]).
//!
//! How it fits: registries change only through [`import::import_csv`] (`jiandu import`), each
//! import a new version in `store` with a ledger entry. Phones look up over MQTT: the look-up
//! role ([`run`]) answers from an in-memory [`RegistryIndex`] and audits in batches behind the
//! answers ([`audit`]). The web's REST look-ups use [`lookup_at`] (same matching, from the
//! database, at any past moment) and audit through the same store call. Plates are matched
//! after [`plate::normalise`], misreadings through [`plate::candidate_plates`].

pub mod audit;
pub mod cases;
pub mod generate;
pub mod import;
pub mod index;
pub mod integrity;
pub mod plate;
pub mod ratelimit;
mod service;

use std::path::PathBuf;
use std::time::Duration;

use jiandu_store::StoreError;

pub use import::{Encoding, ImportDiff, ImportOptions, ImportOutcome, RowError, import_csv};
pub use index::{Answer, Hit, RegistryIndex, lookup_at};
pub use service::run;

/// Settings of the look-up role (`[lookup]` in `jiandu.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct LookupConfig {
    /// Sustained look-ups per device and minute; 0 turns the limit off.
    pub rate_per_minute: u32,
    /// Look-ups a device may make at once before the sustained rate applies.
    pub burst: u32,
    /// Most audit rows written in one transaction (and committed by one ledger entry).
    pub audit_batch: usize,
    /// How often the role checks for a new registry version.
    pub refresh: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig { rate_per_minute: 120, burst: 30, audit_batch: 5000, refresh: Duration::from_secs(1) }
    }
}

/// Everything that can go wrong in oversight, in the operator's terms.
#[derive(Debug, thiserror::Error)]
pub enum OversightError {
    /// The file's bytes are not text in the encoding asked for.
    #[error("line {line}: cannot read the file as {encoding}: {reason}")]
    Decode {
        /// Encoding tried.
        encoding: &'static str,
        /// First line with a problem.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Rows or columns of an import are wrong; nothing was imported.
    #[error("{total} problem(s) in the file, nothing imported:\n{}{}", .errors.iter().map(|e| format!("  {e}\n")).collect::<String>(), if *.total > .errors.len() { format!("  … and {} more\n", .total - .errors.len()) } else { String::new() })]
    Rows {
        /// Problems found (all of them).
        total: usize,
        /// The first problems, each naming its row and column.
        errors: Vec<RowError>,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A value (a case field, a calendar or stage file entry) is wrong; names the field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault, e.g. `holidays[0].to`, `days`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The caller's role may not do this (e.g. approve a stage).
    #[error("not allowed: {reason}")]
    Forbidden {
        /// Who tried what, and which roles may.
        reason: String,
    },
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
