//! JSON Schemas of every payload, generated from the Rust types.
//!
//! The files under `schemas/json/` are what phone and integration developers read; the
//! test `json_schemas_match_types` keeps them equal to what this module generates.

use schemars::{JsonSchema, schema_for};
use serde_json::Value;

use crate::payload::ErrorNotice;
use crate::payload::{
    Ack, AssignmentOffer, AssignmentStatus, Event, EvidenceMeta, Heartbeat, IntegrationReport, LookupReply,
    LookupRequest, MAX_BACKLOG, Notice, OwnTracksLocation, Presence, Receipt, Report,
};

/// What `jd/v1/dev/{dev}/hb` carries: one heartbeat, or an offline backlog of 1..=1000.
#[derive(JsonSchema)]
#[schemars(rename = "Heartbeats")]
#[serde(untagged)]
#[allow(dead_code)]
enum HeartbeatUpload {
    /// A single live heartbeat.
    One(Heartbeat),
    /// An offline backlog, in any order; the platform stores each point once.
    Backlog(#[schemars(length(min = 1, max = MAX_BACKLOG))] Vec<Heartbeat>),
}

/// Every payload's JSON Schema (draft 2020-12) with its file name stem, e.g. `evidence-meta`.
pub fn json_schemas() -> Vec<(&'static str, Value)> {
    let mut heartbeat = schema_for!(HeartbeatUpload).to_value();
    // The two branches are disjoint (object vs array), so say so.
    if let Some(obj) = heartbeat.as_object_mut()
        && let Some(any) = obj.remove("anyOf")
    {
        obj.insert("oneOf".to_owned(), any);
    }
    vec![
        ("heartbeat", heartbeat),
        ("presence", schema_for!(Presence).to_value()),
        ("report", schema_for!(Report).to_value()),
        ("integration-report", schema_for!(IntegrationReport).to_value()),
        ("assignment-status", schema_for!(AssignmentStatus).to_value()),
        ("lookup", schema_for!(LookupRequest).to_value()),
        ("evidence-meta", schema_for!(EvidenceMeta).to_value()),
        ("ack", schema_for!(Ack).to_value()),
        ("assignment-offer", schema_for!(AssignmentOffer).to_value()),
        ("receipt", schema_for!(Receipt).to_value()),
        ("lookup-reply", schema_for!(LookupReply).to_value()),
        ("error", schema_for!(ErrorNotice).to_value()),
        ("notice", schema_for!(Notice).to_value()),
        ("event", schema_for!(Event).to_value()),
        ("owntracks-location", schema_for!(OwnTracksLocation).to_value()),
    ]
}
