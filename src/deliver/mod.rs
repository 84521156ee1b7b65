//! Delivery: how queued mail reaches its recipients (Maildir now; relay later), and the
//! schedule of when each queue entry is tried again.

pub mod bounce;
pub mod engine;
pub mod local;
pub mod schedule;
pub mod store;

/// The result of one delivery attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later (back-off); carries the reason shown by `postling -q`.
    Temporary(String),
    /// Give up and bounce; the reason starts with its RFC 3463 status (e.g. `5.1.1 ...`).
    Permanent(String),
}
