//! Oversight: the registries (members, staff, vehicles, departments) and audited look-ups,
//! disciplinary cases with working-day deadlines and alarms, and the integrity index (DESIGN §2).
//!
//! Status: the crate exists so the workspace has its final shape; the registry, case and index
//! issues fill it.
