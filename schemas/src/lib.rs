//! The wire contract of jiandu, version 1 (DESIGN §3), as Rust types.
//!
//! This crate owns everything two parties must agree on to talk over MQTT: the topic names
//! ([`topic`]), the payload types that travel on them ([`payload`]), the JSON Schemas published
//! for phone and integration developers ([`json_schemas`], committed under `json/`), and the
//! field-level validation that turns raw bytes into typed, checked values ([`parse`]). Other
//! crates never look at raw JSON: they call a `parse_*` function here and either get a value whose
//! latitude, timestamps and ids are known to be sane, or a [`PayloadError`] naming the field that
//! is wrong, which is what gets sent back to the device on `inbox/error`.
//!
//! The crate does no I/O. It also cleans citizens' photos of their metadata ([`photo`]): like
//! the payloads, hostile bytes from outside, parsed once here.

#![warn(missing_docs)]

pub mod parse;
pub mod payload;
pub mod photo;
pub mod public;
mod schema;
pub mod topic;

pub use parse::{
    check_chunk, parse_assignment_status, parse_evidence_meta, parse_heartbeats, parse_integration_report,
    parse_lookup, parse_owntracks, parse_presence, parse_report,
};
pub use payload::*;
pub use photo::{STRIPPABLE_PHOTO_TYPES, StrippedPhoto, strip_metadata};
pub use public::{PUBLIC_TIP_KINDS, PublicTip, parse_public_tip};
pub use schema::json_schemas;
pub use topic::{EventKind, InboxKind, Topic};

/// Everything that can go wrong in this crate, in the terms of the party that sent the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A topic string that is not one of the v1 topics (or not well formed).
    #[error("topic {topic:?}: {reason}")]
    Topic {
        /// The topic as received.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A kind segment (`inbox/{kind}`, `events/{kind}`) that is not in the contract.
    #[error("unknown {what} kind {got:?}; expected one of {expected}")]
    UnknownKind {
        /// Which kind list was consulted (`inbox` or `event`).
        what: &'static str,
        /// The text received.
        got: String,
        /// The accepted values, comma-separated.
        expected: &'static str,
    },
    /// A payload that failed to parse or validate; names the field.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// A payload rejected at one field: `field` is a path such as `hb[3].lat`, `message` says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PayloadError {
    /// Path of the offending field, starting at the payload's root name (`hb`, `report`, `meta`…).
    pub field: String,
    /// What is wrong and, where it helps, what was expected.
    pub message: String,
}

impl PayloadError {
    /// Builds an error for `field` with `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}
