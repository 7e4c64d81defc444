//! Ingest: turns what phones send into durable records. Owns heartbeat batching into the live
//! (`device_position`) and history (`position_history`) tables with end-to-end `inbox/ack`, and
//! evidence assembly, hashing and signed receipts (DESIGN §2–§4).
//!
//! Status: the crate exists so the workspace has its final shape; the heartbeat and evidence
//! issues fill it. `jiandu serve --roles` does not offer `ingest` until then.
