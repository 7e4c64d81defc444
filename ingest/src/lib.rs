//! Ingest: turns what phones send into durable records. Owns heartbeat batching into the live
//! (`device_position`) and history (`position_history`) tables with end-to-end `inbox/ack`, and
//! evidence assembly, hashing and signed receipts (DESIGN §2–§4).

mod error;

pub use error::IngestError;
pub mod evidence;
pub mod heartbeat;
mod seq_ranges;
