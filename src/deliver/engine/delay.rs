//! The delay warning: one RFC 3464 report (`Action: delayed`) to the sender of a message that
//! is still queued `delay_warning_time` after its arrival, listing the recipients still being
//! retried with their last reason and when the server gives up.
//!
//! At most one per message, across restarts too: the entry's state file records that the
//! warning went (`warned`). The warning is queued first and recorded second, with the
//! deferral in the same state replacement. The other order (record, then queue) would lose
//! the warning to a crash in between; this one can only repeat it once: a crash after the
//! warning is durable and before the record leaves an entry that is warned again at its next
//! deferral after the restart. A warning that cannot be queued (spool full) is tried again
//! at the next deferral; one that is queued while the record cannot be written is remembered
//! in memory (`Recorded::delay_warned`) and written with the next record.

use std::time::SystemTime;

use log::{info, warn};

use super::{Engine, Enqueued, QueueStore, human, split_status};
use crate::daemon::events;
use crate::date::rfc5322_date;
use crate::deliver::bounce::{self, FailedRecipient};
use crate::mail::{Envelope, QueueId};

impl Engine {
    /// Queues the delay warning for an entry being deferred if it is due: warnings are on,
    /// the sender is not the null sender, recipients are pending (`pending`: each with its
    /// last reason) and the entry has waited `delay_warning_time`. The caller checks that
    /// none went before. Queued under `ticket` (`QueueStore::enqueue`): returns where it
    /// stands and its size; `None` when not due or not queued.
    pub(super) fn delay_warning(
        &mut self,
        id: &QueueId,
        env: &Envelope,
        pending: &[(usize, String)],
        store: &mut dyn QueueStore,
        wall: SystemTime,
        ticket: usize,
    ) -> Option<(Enqueued, u64)> {
        let after = self.policy.delay_warning;
        let age = wall.duration_since(env.arrival).unwrap_or_default();
        if after.is_zero() || age < after || env.sender.is_empty() || pending.is_empty() {
            return None;
        }
        let delayed: Vec<FailedRecipient> = pending
            .iter()
            .map(|(idx, reason)| {
                let (status, text) = delayed_status(reason);
                FailedRecipient {
                    address: env.recipients.get(*idx).cloned().unwrap_or_default(),
                    status,
                    reason: text,
                }
            })
            .collect();
        let head = super::read_head(store, id);
        let until = env
            .arrival
            .checked_add(self.policy.queue_lifetime)
            .unwrap_or(env.arrival);
        let report = bounce::build_delay_warning(
            &bounce::BounceInput {
                hostname: &self.policy.hostname,
                queue_id: &id.0,
                sender: &env.sender,
                arrival_date: &rfc5322_date(env.arrival),
                date: &rfc5322_date(wall),
                failed: &delayed,
                original_headers: bounce::header_section(&head),
            },
            &rfc5322_date(until),
        );
        let notice_env = self.notice_envelope(env, wall);
        match store.enqueue(&notice_env, &report, ticket) {
            Ok(queued) => Some((queued, report.len() as u64)),
            Err(e) => {
                warn!("{id}: cannot queue the delay warning: {e:?}; will retry");
                None
            }
        }
    }

    /// The delay warning about `id` (`size` octets) is durable as `new_id`: logged, and due
    /// for delivery.
    pub(super) fn delay_warning_queued(
        &mut self,
        id: &QueueId,
        env: &Envelope,
        new_id: &QueueId,
        size: u64,
        wall: SystemTime,
    ) {
        let age = wall.duration_since(env.arrival).unwrap_or_default();
        events::log(&events::queued(&new_id.0, "", size, 1));
        events::log(&events::delay_notice(&id.0, &new_id.0));
        info!(
            "{id}: not delivered after {}: delay warning queued as {new_id}",
            human(age)
        );
        self.schedule.due_now(new_id.clone());
    }
}

/// The RFC 3463 status and the text of a delayed recipient's reason: `4.7.1 text`, or a
/// remote reply `451 4.7.1 text` (kept whole as the text). RFC 3464 §2.3.4: a delayed
/// recipient has a transient status, so anything else is `4.0.0` with the whole reason.
fn delayed_status(reason: &str) -> (String, String) {
    if let Some((code, rest)) = reason.split_once(' ') {
        let reply_code = code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
        if reply_code {
            let (status, _) = split_status(rest, "");
            if status.starts_with("4.") {
                return (status, reason.to_string());
            }
        }
    }
    match split_status(reason, "") {
        (status, text) if status.starts_with("4.") => (status, text),
        _ => ("4.0.0".to_string(), reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::delayed_status;

    #[test]
    fn a_delayed_recipient_always_has_a_transient_status() {
        let s = |r: &str| delayed_status(r);
        assert_eq!(
            s("4.2.2 mailbox full"),
            ("4.2.2".into(), "mailbox full".into())
        );
        assert_eq!(
            s("451 4.7.1 greylisted"),
            ("4.7.1".into(), "451 4.7.1 greylisted".into())
        );
        assert_eq!(s("needs a relay"), ("4.0.0".into(), "needs a relay".into()));
        assert_eq!(s("550 5.1.1 odd"), ("4.0.0".into(), "550 5.1.1 odd".into()));
        assert_eq!(s("5.1.1 odd"), ("4.0.0".into(), "5.1.1 odd".into()));
        assert_eq!(s(""), ("4.0.0".into(), "".into()));
    }
}
