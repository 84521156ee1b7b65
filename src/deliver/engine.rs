//! The delivery engine: takes due queue entries from the schedule, resolves each pending
//! recipient, delivers into Maildirs, records per-recipient progress durably, and finally
//! removes the entry, defers it with back-off, or bounces what failed for good.

use std::collections::HashSet;
use std::io::{self, Read};
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};

use super::Outcome;
use super::bounce::{self, FailedRecipient};
use super::maildir::Maildirs;
use super::schedule::{Schedule, backoff};
use crate::date::rfc5322_date;
use crate::directory::{Directory, ResolveError, Resolved};
use crate::spool::{BodyType, Envelope, QueueId, SpoolError};

/// One queue entry as delivery sees it.
pub struct Entry {
    pub envelope: Envelope,
    /// Indices into `envelope.recipients` still to be delivered.
    pub pending: Vec<usize>,
    /// Failed attempts so far (drives the back-off).
    pub attempts: u32,
}

/// What the engine needs from the spool. The real spool implements it in `hosts.rs`; tests
/// use an in-memory fake.
pub trait QueueStore {
    fn load(&mut self, id: &QueueId) -> io::Result<Entry>;
    /// The stored message data (CRLF line endings), from its first byte.
    fn open_data(&mut self, id: &QueueId) -> io::Result<Box<dyn Read>>;
    /// Durably records the recipients finished in this attempt and when to try the rest.
    fn record_attempt(
        &mut self,
        id: &QueueId,
        delivered: &[usize],
        failed: &[(usize, String)],
        attempts: u32,
        last_error: &str,
        next_attempt: SystemTime,
    ) -> io::Result<()>;
    fn remove(&mut self, id: &QueueId) -> io::Result<()>;
    /// Queue a new message (a bounce) and make it durable before returning its id.
    fn enqueue(&mut self, envelope: &Envelope, data: &[u8]) -> Result<QueueId, SpoolError>;
}

pub struct DeliveryPolicy {
    pub hostname: String,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub queue_lifetime: Duration,
}

pub struct Engine {
    pub schedule: Schedule,
    maildirs: Maildirs,
    policy: DeliveryPolicy,
}

/// Splits `"5.1.1 text"` into its RFC 3463 status and the text.
fn split_status(reason: &str, default: &str) -> (String, String) {
    let mut parts = reason.splitn(2, ' ');
    let first = parts.next().unwrap_or("");
    let is_status = first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if is_status {
        (first.to_string(), parts.next().unwrap_or("").to_string())
    } else {
        (default.to_string(), reason.to_string())
    }
}

impl Engine {
    pub fn new(maildirs: Maildirs, policy: DeliveryPolicy) -> Engine {
        Engine {
            schedule: Schedule::default(),
            maildirs,
            policy,
        }
    }

    pub fn set_policy(&mut self, policy: DeliveryPolicy, maildirs: Maildirs) {
        self.policy = policy;
        self.maildirs = maildirs;
    }

    /// Attempts up to `budget` due entries; returns how many were attempted.
    pub fn run(
        &mut self,
        budget: usize,
        store: &mut dyn QueueStore,
        dir: &Directory,
        now: Instant,
        wall: SystemTime,
    ) -> usize {
        let mut done = 0;
        while done < budget {
            let Some(id) = self.schedule.next_due(now) else {
                break;
            };
            self.attempt(&id, store, dir, now, wall);
            done += 1;
        }
        done
    }

    fn attempt(
        &mut self,
        id: &QueueId,
        store: &mut dyn QueueStore,
        dir: &Directory,
        now: Instant,
        wall: SystemTime,
    ) {
        let entry = match store.load(id) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(
                    "{id}: cannot read queue entry: {e}; retrying in {:?}",
                    self.policy.retry_max
                );
                self.schedule.defer(id.clone(), now + self.policy.retry_max);
                return;
            }
        };
        let env = &entry.envelope;
        let expired =
            wall.duration_since(env.arrival).unwrap_or_default() >= self.policy.queue_lifetime;
        let mut delivered = Vec::new();
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut temporary: Option<String> = None;
        // One copy per local user per attempt, however many recipients resolve to them.
        let mut users_done: HashSet<String> = HashSet::new();

        for &idx in &entry.pending {
            let Some(rcpt) = env.recipients.get(idx) else {
                continue;
            };
            let outcome = match dir.resolve(rcpt) {
                Err(ResolveError::UnknownUser) => Outcome::Permanent("5.1.1 unknown user".into()),
                Err(ResolveError::AliasLoop(name)) => {
                    Outcome::Permanent(format!("5.4.6 alias loop at {name}"))
                }
                Err(ResolveError::NotLocal) => {
                    Outcome::Temporary(format!("{rcpt} is not local and no relay is configured"))
                }
                Ok(targets) => {
                    self.deliver_targets(id, env, rcpt, &targets, store, &mut users_done, wall)
                }
            };
            match outcome {
                Outcome::Delivered => delivered.push(idx),
                Outcome::Permanent(r) => failed.push((idx, r)),
                Outcome::Temporary(r) if expired => failed.push((
                    idx,
                    format!(
                        "4.4.7 message expired after {}; last error: {r}",
                        human(self.policy.queue_lifetime)
                    ),
                )),
                Outcome::Temporary(r) => temporary = Some(format!("{rcpt}: {r}")),
            }
        }

        if !failed.is_empty() {
            if env.sender.is_empty() {
                info!(
                    "{id}: {} recipient(s) failed; no bounce for the null sender",
                    failed.len()
                );
            } else if let Err(e) = self.bounce(id, env, &failed, store, wall) {
                // Keep the failed recipients pending so the bounce is not lost; retry later.
                warn!("{id}: cannot queue the bounce: {e:?}; will retry");
                temporary.get_or_insert_with(|| format!("cannot queue bounce: {e:?}"));
                failed.clear();
            }
        }
        let finished = delivered.len() + failed.len();
        if finished == entry.pending.len() {
            for (idx, r) in &failed {
                info!("{id}: to <{}> failed: {r}", env.recipients[*idx]);
            }
            match store.remove(id) {
                Ok(()) => info!(
                    "{id}: done ({} delivered, {} bounced)",
                    delivered.len(),
                    failed.len()
                ),
                Err(e) => warn!("{id}: delivered but cannot remove the queue entry: {e}"),
            }
            return;
        }
        let attempts = entry.attempts + 1;
        let delay = backoff(attempts, self.policy.retry_min, self.policy.retry_max);
        let reason = temporary.unwrap_or_else(|| "temporary failure".into());
        if let Err(e) =
            store.record_attempt(id, &delivered, &failed, attempts, &reason, wall + delay)
        {
            warn!("{id}: cannot record the delivery attempt: {e}");
        }
        info!("{id}: deferred for {}: {reason}", human(delay));
        self.schedule.defer(id.clone(), now + delay);
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_targets(
        &mut self,
        id: &QueueId,
        env: &Envelope,
        rcpt: &str,
        targets: &[Resolved],
        store: &mut dyn QueueStore,
        users_done: &mut HashSet<String>,
        wall: SystemTime,
    ) -> Outcome {
        let mut result = Outcome::Delivered;
        for t in targets {
            let outcome = match t {
                Resolved::Local { user } => {
                    if users_done.contains(user) {
                        continue;
                    }
                    match store.open_data(id) {
                        Ok(mut data) => {
                            self.maildirs
                                .deliver(user, &env.sender, rcpt, &mut data, wall)
                        }
                        Err(e) => Outcome::Temporary(format!("cannot read queued message: {e}")),
                    }
                }
                Resolved::Remote { address } => Outcome::Temporary(format!(
                    "forwarding to {address} needs a relay, and none is configured"
                )),
            };
            match (&outcome, t) {
                (Outcome::Delivered, Resolved::Local { user }) => {
                    users_done.insert(user.clone());
                }
                (Outcome::Temporary(_), _) => result = outcome,
                (Outcome::Permanent(_), _) if !matches!(result, Outcome::Temporary(_)) => {
                    result = outcome
                }
                _ => {}
            }
        }
        result
    }

    fn bounce(
        &mut self,
        id: &QueueId,
        env: &Envelope,
        failed: &[(usize, String)],
        store: &mut dyn QueueStore,
        wall: SystemTime,
    ) -> Result<QueueId, SpoolError> {
        let failed: Vec<FailedRecipient> = failed
            .iter()
            .map(|(idx, reason)| {
                let (status, text) = split_status(reason, "5.0.0");
                FailedRecipient {
                    address: env.recipients.get(*idx).cloned().unwrap_or_default(),
                    status,
                    reason: text,
                }
            })
            .collect();
        let mut head = [0u8; bounce::MAX_RETURNED_HEADERS];
        let mut n = 0;
        if let Ok(mut data) = store.open_data(id) {
            while n < head.len() {
                match data.read(&mut head[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
        }
        let report = bounce::build(&bounce::BounceInput {
            hostname: &self.policy.hostname,
            queue_id: &id.0,
            sender: &env.sender,
            arrival_date: &rfc5322_date(env.arrival),
            date: &rfc5322_date(wall),
            failed: &failed,
            original_headers: bounce::header_section(&head[..n]),
        });
        let bounce_env = Envelope {
            sender: String::new(),
            recipients: vec![env.sender.clone()],
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            helo: self.policy.hostname.clone(),
            arrival: wall,
            smtputf8: env.smtputf8,
            body: BodyType::EightBitMime,
        };
        let new_id = store.enqueue(&bounce_env, &report)?;
        info!("{id}: bounce {new_id} queued for <{}>", env.sender);
        self.schedule.due_now(new_id.clone());
        Ok(new_id)
    }
}

/// `90s` → `1m30s`-style short durations for log lines.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
