//! Dispatcher: the live spatial index of available inspectors and the assignment state machine
//! (offer, accept, arrive, complete; re-dispatch on timeout or decline; escalation), DESIGN §2.
//!
//! Status: the crate exists so the workspace has its final shape; the dispatcher issue fills it.
//! `jiandu serve --roles` does not offer `dispatcher` until then.
