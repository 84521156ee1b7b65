//! The logged-in side of a POP session, shared by POP3 and POP2: the login itself (after the
//! password check: ask for the mailbox, `Next::AwaitMailbox`) and the snapshot with its
//! deletion marks.
//!
//! Message numbers are 1-based over the snapshot taken at login and never change during the
//! session; a message marked deleted keeps its number but is invisible until RSET. Nothing is
//! removed until the session's UPDATE (QUIT), which hands the marked indices to the host.

use crate::proto::{AuthVerdict, MailboxRequest};

use crate::mail::MessageInfo;

/// How a password check ended, for a login.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// Authenticated: the session asks for this mailbox (`Next::AwaitMailbox`) and is logged
    /// in once it is opened.
    Open(MailboxRequest),
    /// Unknown user or wrong password: answer after the failure delay.
    Rejected,
    /// The client address has failed too often: answer after the delay, then close.
    Throttled,
    /// The client address has tried too often: answer after the delay, then close.
    TooManyAttempts,
    /// The password could not be checked now (temporary; not counted as a failure).
    CheckFailed,
}

/// A refused login, answered only after `auth_failure_delay` (`Next::Sleep`): a refusal
/// answered at once would let one client loop logins as fast as the reactor answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delayed {
    /// Unknown user or wrong password.
    Rejected,
    /// `Login::Throttled`: the connection closes after the reply.
    Throttled,
    /// `Login::TooManyAttempts`: the connection closes after the reply.
    TooManyAttempts,
    /// A right password, but the mailbox is in use by another session (`[IN-USE]`).
    InUse,
}

/// What a login does once the password check (`Next::AwaitAuth`) answered.
pub fn login(verdict: AuthVerdict) -> Login {
    match verdict {
        AuthVerdict::Accepted(name) => Login::Open(MailboxRequest::Open(name)),
        AuthVerdict::Rejected => Login::Rejected,
        AuthVerdict::Throttled => Login::Throttled,
        AuthVerdict::TooManyAttempts => Login::TooManyAttempts,
        AuthVerdict::Unavailable => Login::CheckFailed,
    }
}

/// Why a message number does not name a visible message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Zero, or past the end of the snapshot.
    NoSuchMessage,
    /// Marked deleted in this session.
    Deleted,
}

/// The login snapshot with this session's deletion marks. Allocated once at login (sized by
/// the mailbox, never by client input) and never grown.
#[derive(Debug)]
pub struct Maildrop {
    messages: Vec<MessageInfo>,
    total_octets: u64,
    deleted: Vec<bool>,
    deleted_count: usize,
    deleted_octets: u64,
}

impl Maildrop {
    pub fn new(messages: Vec<MessageInfo>) -> Maildrop {
        let deleted = vec![false; messages.len()];
        // Saturating: sizes come from the host, and a wrapped total would be a lie.
        let total_octets = messages.iter().fold(0u64, |t, m| t.saturating_add(m.size));
        Maildrop {
            messages,
            total_octets,
            deleted,
            deleted_count: 0,
            deleted_octets: 0,
        }
    }

    /// Messages in the snapshot, deleted or not (the highest message number).
    pub fn total_count(&self) -> usize {
        self.messages.len()
    }

    /// Octets of the whole snapshot, deleted or not.
    pub fn total_octets(&self) -> u64 {
        self.total_octets
    }

    /// Messages not marked deleted.
    pub fn live_count(&self) -> usize {
        self.messages.len() - self.deleted_count
    }

    /// Octets of the messages not marked deleted.
    pub fn live_octets(&self) -> u64 {
        self.total_octets.saturating_sub(self.deleted_octets)
    }

    /// The 0-based index of visible message `number` (1-based).
    pub fn lookup(&self, number: u64) -> Result<usize, Missing> {
        let index = usize::try_from(number)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < self.messages.len())
            .ok_or(Missing::NoSuchMessage)?;
        if self.is_deleted(index) {
            return Err(Missing::Deleted);
        }
        Ok(index)
    }

    /// The message at a 0-based index, deleted or not.
    pub fn info(&self, index: usize) -> Option<&MessageInfo> {
        self.messages.get(index)
    }

    pub fn is_deleted(&self, index: usize) -> bool {
        self.deleted.get(index).copied().unwrap_or(false)
    }

    /// Marks a message deleted; false if it already was (or does not exist).
    pub fn delete(&mut self, index: usize) -> bool {
        let size = self.messages.get(index).map_or(0, |m| m.size);
        match self.deleted.get_mut(index) {
            Some(mark) if !*mark => {
                *mark = true;
                self.deleted_count += 1;
                self.deleted_octets = self.deleted_octets.saturating_add(size);
                true
            }
            _ => false,
        }
    }

    /// RSET: every mark is removed.
    pub fn undelete_all(&mut self) {
        self.deleted.iter_mut().for_each(|d| *d = false);
        self.deleted_count = 0;
        self.deleted_octets = 0;
    }

    pub fn deleted_count(&self) -> usize {
        self.deleted_count
    }

    /// The 0-based indices for QUIT's `MailboxRequest::Update`.
    pub fn deleted_indices(&self) -> Vec<usize> {
        self.deleted
            .iter()
            .enumerate()
            .filter_map(|(i, &d)| d.then_some(i))
            .collect()
    }

    /// Heap bytes held, for the tests that prove memory stays flat while streaming.
    #[cfg(test)]
    pub fn heap_capacity(&self) -> usize {
        self.messages.capacity() * std::mem::size_of::<MessageInfo>() + self.deleted.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::AuthRequest;

    fn drop_of(sizes: &[u64]) -> Maildrop {
        Maildrop::new(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| MessageInfo {
                    uid: format!("u{i}").into(),
                    size,
                })
                .collect(),
        )
    }

    #[test]
    fn lookup_is_one_based_and_hides_deleted() {
        let mut d = drop_of(&[10, 20, 30]);
        assert_eq!(d.lookup(0), Err(Missing::NoSuchMessage));
        assert_eq!(d.lookup(1), Ok(0));
        assert_eq!(d.lookup(3), Ok(2));
        assert_eq!(d.lookup(4), Err(Missing::NoSuchMessage));
        assert_eq!(d.lookup(u64::MAX), Err(Missing::NoSuchMessage));
        assert_eq!(d.lookup(4_294_967_297), Err(Missing::NoSuchMessage));
        assert!(d.delete(1));
        assert!(!d.delete(1));
        assert!(!d.delete(3));
        assert_eq!(d.lookup(2), Err(Missing::Deleted));
        assert_eq!((d.live_count(), d.live_octets()), (2, 40));
        assert_eq!((d.total_count(), d.total_octets()), (3, 60));
        assert_eq!(d.deleted_indices(), vec![1]);
        d.undelete_all();
        assert_eq!(d.lookup(2), Ok(1));
        assert_eq!(
            (d.live_count(), d.live_octets(), d.deleted_count()),
            (3, 60, 0)
        );
        assert!(d.deleted_indices().is_empty());
    }

    #[test]
    fn login_outcomes() {
        assert_eq!(
            login(AuthVerdict::Accepted("bob".into())),
            Login::Open(MailboxRequest::Open("bob".into())),
            "only an accepted login asks for the mailbox"
        );
        assert_eq!(login(AuthVerdict::Rejected), Login::Rejected);
        assert_eq!(login(AuthVerdict::Unavailable), Login::CheckFailed);
        assert_eq!(login(AuthVerdict::Throttled), Login::Throttled);
    }

    #[test]
    fn a_request_carries_a_lossy_name_and_wipes_its_password() {
        // A non-UTF-8 name still reaches the check (same work, counted by the throttle).
        let r = AuthRequest::new(b"b\xffb", b"pw");
        assert_eq!(r.user, "b\u{fffd}b");
        assert_eq!(r.password, b"pw");
        assert!(
            !format!("{r:?}").contains("pw"),
            "the password stays out of logs"
        );
    }
}
