//! Budgets per client address, kept across connections: failed logins and login attempts of
//! any outcome (`Throttle`, shared by POP3, POP2 and SMTP AUTH) and refused SMTP recipients
//! (`RcptBudget`, against address harvesting). Both live in the reactor's services, never in a session, because an attacker
//! simply reconnects.
//!
//! A client is its IPv4 address, or the /64 prefix of its IPv6 address (one subscriber's
//! network: a host picks any address in it at no cost); an IPv4-mapped IPv6 address counts as
//! its IPv4 address (`ClientKey`).
//!
//! Each budget is a leaky bucket (GCRA): every counted event adds one, the count drains by one
//! every `interval`, and the client is over budget while its count is above `budget - 1`. So
//! `budget` events may come at once, then one more each `interval`. Nothing resets a count
//! early: a successful login does not (a client holding one account could otherwise guess
//! other accounts' passwords without end by logging in to its own between guesses).
//!
//! The tables are bounded: when one is full, drained entries go first, then the entry closest
//! to draining, so the clients that are over budget are the last forgotten.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::limits;
use crate::proto::AuthVerdict;

/// Whose budget an address spends: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(Ipv4Addr),
    /// The upper 64 bits of the address.
    V6Net(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => ClientKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::V4(v4) => write!(f, "{v4}"),
            ClientKey::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

struct Entry {
    /// When the count will have drained to zero (GCRA's theoretical arrival time).
    drained_at: Instant,
    /// Being over budget was reported in this episode (logged once until the count drains).
    reported: bool,
}

/// A bounded table of leaky-bucket counts per client.
struct Buckets {
    entries: HashMap<ClientKey, Entry>,
    budget: u32,
    interval: Duration,
    capacity: usize,
}

impl Buckets {
    fn new(budget: u32, interval: Duration, capacity: usize) -> Buckets {
        Buckets {
            entries: HashMap::new(),
            budget,
            interval,
            capacity,
        }
    }

    /// Largest count (as time to drain) that is still within budget.
    fn allowance(&self) -> Duration {
        self.interval.saturating_mul(self.budget.saturating_sub(1))
    }

    fn over(&self, key: ClientKey, now: Instant) -> bool {
        self.over_with(key, now, 0)
    }

    /// `over`, counting `extra` events not yet recorded.
    fn over_with(&self, key: ClientKey, now: Instant, extra: u32) -> bool {
        let count = self.entries.get(&key).map_or(Duration::ZERO, |e| {
            e.drained_at.saturating_duration_since(now)
        });
        count.saturating_add(self.interval.saturating_mul(extra)) > self.allowance()
    }

    /// Counts one event; true when it put the client over budget for the first time since
    /// its count was last empty (the moment to log).
    fn record(&mut self, key: ClientKey, now: Instant) -> bool {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        let allowance = self.allowance();
        // Never more than `budget` deep: however long a client goes on, it is over budget
        // for at most one interval after its last counted event.
        let deepest = self.interval.saturating_mul(self.budget);
        let interval = self.interval;
        let entry = self.entries.entry(key).or_insert(Entry {
            drained_at: now,
            reported: false,
        });
        if entry.drained_at <= now {
            *entry = Entry {
                drained_at: now,
                reported: false,
            };
        }
        let next = entry.drained_at.checked_add(interval);
        let cap = now.checked_add(deepest);
        if let (Some(next), Some(cap)) = (next, cap) {
            entry.drained_at = next.min(cap);
        }
        let over = entry.drained_at.saturating_duration_since(now) > allowance;
        let first = over && !entry.reported;
        if over {
            entry.reported = true;
        }
        first
    }

    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.drained_at > now);
        if self.entries.len() < self.capacity {
            return;
        }
        let closest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.drained_at)
            .map(|(k, _)| *k);
        if let Some(k) = closest {
            self.entries.remove(&k);
        }
    }

    /// Drops the clients whose count has drained and gives back the table's spare capacity.
    fn forget_drained(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.drained_at > now);
        self.entries.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Failed logins per client, and login attempts whatever their outcome, for every protocol
/// that takes a password. The attempt budget is what bounds a client looping logins that
/// cost no hash (a remembered right password against an `[IN-USE]` mailbox, or a login and
/// QUIT loop): each costs the reactor a turn and a mailbox lock, and only failures would
/// otherwise be counted.
pub struct Throttle {
    failures: Buckets,
    /// None: `login_attempts_per_client = 0`, no attempt budget.
    attempts: Option<Buckets>,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new(limits::AUTH_ATTEMPTS_PER_CLIENT_DEFAULT)
    }
}

/// The attempt budget for `per_minute` attempts at once and then per minute (0: none).
fn attempt_buckets(per_minute: u32) -> Option<Buckets> {
    (per_minute > 0).then(|| {
        Buckets::new(
            per_minute,
            limits::AUTH_ATTEMPTS_WINDOW / per_minute,
            limits::AUTH_ATTEMPTS_TABLE,
        )
    })
}

/// Why `Throttle::admit` refused a login attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failed logins (`AUTH_THROTTLE_FAILURES`).
    Failures,
    /// Too many attempts of any outcome (`AUTH_ATTEMPTS_PER_CLIENT`).
    Attempts,
}

/// What `Throttle::admit` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go on and check the credentials (the attempt is counted); `now_limited`: this attempt
    /// spent the client's attempt budget, so its next ones are refused (log it once).
    Check { now_limited: bool },
    /// Refused without a check.
    Refused(Refusal),
}

/// What `Throttle::login` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginOutcome {
    pub verdict: AuthVerdict,
    /// This failure put the client over its budget (log it once).
    pub now_throttled: bool,
}

impl Throttle {
    /// The failed-login budget of `limits`, and an attempt budget of `attempts_per_minute`
    /// (config `login_attempts_per_client`; 0: none).
    pub fn new(attempts_per_minute: u32) -> Throttle {
        Throttle {
            failures: Buckets::new(
                limits::AUTH_THROTTLE_FAILURES,
                limits::AUTH_THROTTLE_INTERVAL,
                limits::AUTH_THROTTLE_TABLE,
            ),
            attempts: attempt_buckets(attempts_per_minute),
        }
    }

    /// A changed `login_attempts_per_client` (SIGHUP): the attempt counts start again.
    pub fn set_attempt_budget(&mut self, per_minute: u32) {
        if self.attempt_budget() != per_minute {
            self.attempts = attempt_buckets(per_minute);
        }
    }

    /// Attempts at once and per minute (0: no attempt budget).
    pub fn attempt_budget(&self) -> u32 {
        self.attempts.as_ref().map_or(0, |b| b.budget)
    }

    /// One login attempt from `ip`: refused (`Throttled`) without calling `check` while the
    /// client is over its budget; otherwise `check` verifies the credentials (returning the
    /// canonical user name when they are good) and a failure is counted. A success changes
    /// nothing.
    pub fn login(
        &mut self,
        ip: IpAddr,
        now: Instant,
        check: impl FnOnce() -> Option<String>,
    ) -> LoginOutcome {
        let key = ClientKey::from(ip);
        if self.failures.over(key, now) {
            return LoginOutcome {
                verdict: AuthVerdict::Throttled,
                now_throttled: false,
            };
        }
        match check() {
            Some(name) => LoginOutcome {
                verdict: AuthVerdict::Accepted(name),
                now_throttled: false,
            },
            None => LoginOutcome {
                verdict: AuthVerdict::Rejected,
                now_throttled: self.failures.record(key, now),
            },
        }
    }

    /// A login whose check runs elsewhere (the disk executor), first half: is the client over
    /// its budget? Its `in_flight` checks still running count as failures, so a client with
    /// many connections cannot have more guesses checked at once than its budget allows.
    pub fn refuses(&self, ip: IpAddr, now: Instant, in_flight: u32) -> bool {
        self.failures.over_with(ClientKey::from(ip), now, in_flight)
    }

    /// A login attempt from `ip` (any protocol, before any check): refused while the client
    /// is over its failure budget (its `in_flight` checks counted as failures, see `refuses`)
    /// or its attempt budget; otherwise counted as an attempt and admitted. A refused attempt
    /// is not counted, so a client that goes on regardless gets one attempt each interval.
    pub fn admit(&mut self, ip: IpAddr, now: Instant, in_flight: u32) -> Admission {
        let key = ClientKey::from(ip);
        if self.failures.over_with(key, now, in_flight) {
            return Admission::Refused(Refusal::Failures);
        }
        let Some(attempts) = self.attempts.as_mut() else {
            return Admission::Check { now_limited: false };
        };
        if attempts.over(key, now) {
            return Admission::Refused(Refusal::Attempts);
        }
        Admission::Check {
            now_limited: attempts.record(key, now),
        }
    }

    /// Second half, for a failed check: counts it; true when that put the client over its
    /// budget (log it once). A success is not reported: it changes nothing.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.failures.record(ClientKey::from(ip), now)
    }

    /// At rest: forget the clients whose failures have drained.
    pub fn forget_drained(&mut self, now: Instant) {
        self.failures.forget_drained(now);
        if let Some(a) = self.attempts.as_mut() {
            a.forget_drained(now);
        }
    }
}

/// Refused SMTP recipients per client, across its connections (address harvesting).
pub struct RcptBudget {
    refused: Buckets,
}

impl Default for RcptBudget {
    fn default() -> RcptBudget {
        RcptBudget {
            refused: Buckets::new(
                limits::SMTP_REJECTED_RCPTS_PER_CLIENT,
                limits::SMTP_REJECTED_RCPTS_INTERVAL,
                limits::SMTP_REJECTED_RCPTS_TABLE,
            ),
        }
    }
}

impl RcptBudget {
    /// Has this client spent its budget (no recipient of it gets a verdict now)?
    pub fn over(&self, ip: IpAddr, now: Instant) -> bool {
        self.refused.over(ClientKey::from(ip), now)
    }

    /// A recipient of this client was refused; true when that spent its budget (log it once).
    pub fn refused(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.refused.record(ClientKey::from(ip), now)
    }

    /// At rest: forget the clients whose refusals have drained.
    pub fn forget_drained(&mut self, now: Instant) {
        self.refused.forget_drained(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ok(name: &str) -> impl FnOnce() -> Option<String> + '_ {
        move || Some(name.to_owned())
    }

    fn bad() -> Option<String> {
        None
    }

    #[test]
    fn the_split_login_counts_checks_still_running() {
        let mut t = Throttle::default();
        let ip = v4("127.0.0.1");
        let t0 = Instant::now();
        let budget = limits::AUTH_THROTTLE_FAILURES;
        assert!(!t.refuses(ip, t0, 0));
        // With `budget - 1` checks of its own running, one more may start; not `budget`.
        assert!(!t.refuses(ip, t0, budget - 1));
        assert!(t.refuses(ip, t0, budget));
        // Failures recorded by the second half count like `login`'s.
        for i in 0..budget {
            assert!(!t.refuses(ip, t0, 0));
            assert_eq!(
                t.failed(ip, t0),
                i == budget - 1,
                "reported once, at the budget"
            );
        }
        assert!(t.refuses(ip, t0, 0));
        assert!(!t.failed(ip, t0), "not reported again");
        assert!(!t.refuses(v4("10.0.0.1"), t0, 0), "another client");
        // It drains as before: one more try an interval later.
        let t1 = t0 + limits::AUTH_THROTTLE_INTERVAL;
        assert!(!t.refuses(ip, t1, 0));
        assert!(t.refuses(ip, t1, 1), "but not two at once");
    }

    #[test]
    fn every_attempt_counts_against_the_attempt_budget() {
        let mut t = Throttle::default();
        let ip = v4("127.0.0.1");
        let t0 = Instant::now();
        let budget = limits::AUTH_ATTEMPTS_PER_CLIENT_DEFAULT;
        let interval = limits::AUTH_ATTEMPTS_WINDOW / budget;
        // Attempts with no failure at all (right passwords, [IN-USE] answers): admitted up to
        // the budget, the last one reported, then refused without a check.
        for i in 0..budget {
            assert_eq!(
                t.admit(ip, t0, 0),
                Admission::Check {
                    now_limited: i == budget - 1
                }
            );
        }
        assert_eq!(t.admit(ip, t0, 0), Admission::Refused(Refusal::Attempts));
        assert_eq!(t.admit(ip, t0, 0), Admission::Refused(Refusal::Attempts));
        // Refusals are not counted: one interval later one more attempt is admitted.
        let t1 = t0 + interval;
        assert_eq!(t.admit(ip, t1, 0), Admission::Check { now_limited: false });
        assert_eq!(t.admit(ip, t1, 0), Admission::Refused(Refusal::Attempts));
        // Another client, and the same client once drained, have their whole budget.
        assert!(matches!(
            t.admit(v4("10.0.0.1"), t1, 0),
            Admission::Check { .. }
        ));
        let t2 = t1 + interval * budget;
        t.forget_drained(t2);
        for _ in 0..budget {
            assert!(matches!(t.admit(ip, t2, 0), Admission::Check { .. }));
        }
    }

    #[test]
    fn the_attempt_budget_follows_the_config_and_zero_turns_it_off() {
        let ip = v4("127.0.0.1");
        let t0 = Instant::now();
        let mut t = Throttle::new(3);
        for _ in 0..3 {
            assert!(matches!(t.admit(ip, t0, 0), Admission::Check { .. }));
        }
        assert_eq!(t.admit(ip, t0, 0), Admission::Refused(Refusal::Attempts));
        // 3 a minute: one more 20 s later.
        let t1 = t0 + Duration::from_secs(20);
        assert!(matches!(t.admit(ip, t1, 0), Admission::Check { .. }));
        // A reload with the same value keeps the counts; another value starts again.
        t.set_attempt_budget(3);
        assert_eq!(t.admit(ip, t1, 0), Admission::Refused(Refusal::Attempts));
        t.set_attempt_budget(0);
        assert_eq!(t.attempt_budget(), 0);
        for _ in 0..1000 {
            assert_eq!(t.admit(ip, t1, 0), Admission::Check { now_limited: false });
        }
        // Failures are still limited without an attempt budget.
        for _ in 0..limits::AUTH_THROTTLE_FAILURES {
            t.failed(ip, t1);
        }
        assert_eq!(t.admit(ip, t1, 0), Admission::Refused(Refusal::Failures));
    }

    #[test]
    fn admit_refuses_for_failures_first_counting_checks_in_flight() {
        let mut t = Throttle::default();
        let ip = v4("127.0.0.1");
        let t0 = Instant::now();
        let budget = limits::AUTH_THROTTLE_FAILURES;
        assert_eq!(
            t.admit(ip, t0, budget),
            Admission::Refused(Refusal::Failures),
            "checks still running count as failures"
        );
        for _ in 0..budget {
            assert!(matches!(t.admit(ip, t0, 0), Admission::Check { .. }));
            t.failed(ip, t0);
        }
        assert_eq!(t.admit(ip, t0, 0), Admission::Refused(Refusal::Failures));
    }

    #[test]
    fn blocks_after_the_budget_then_allows_one_more_each_interval() {
        let mut t = Throttle::default();
        let ip = v4("127.0.0.1");
        let t0 = Instant::now();
        for _ in 0..limits::AUTH_THROTTLE_FAILURES {
            assert_eq!(t.login(ip, t0, bad).verdict, AuthVerdict::Rejected);
        }
        assert_eq!(t.login(ip, t0, ok("bob")).verdict, AuthVerdict::Throttled);
        // Another client is not affected.
        assert_eq!(
            t.login(v4("10.0.0.1"), t0, ok("bob")).verdict,
            AuthVerdict::Accepted("bob".into())
        );
        // One interval later one more attempt is allowed; failing it blocks again.
        let t1 = t0 + limits::AUTH_THROTTLE_INTERVAL;
        assert_eq!(t.login(ip, t1, bad).verdict, AuthVerdict::Rejected);
        assert_eq!(t.login(ip, t1, ok("bob")).verdict, AuthVerdict::Throttled);
        // Once drained, the whole budget is back.
        let t2 = t1 + limits::AUTH_THROTTLE_INTERVAL * limits::AUTH_THROTTLE_FAILURES;
        for _ in 1..limits::AUTH_THROTTLE_FAILURES {
            assert_eq!(t.login(ip, t2, bad).verdict, AuthVerdict::Rejected);
        }
        assert_eq!(
            t.login(ip, t2, ok("bob")).verdict,
            AuthVerdict::Accepted("bob".into())
        );
    }

    /// Issue 10 item 4: a client logging in to its own account between guesses used to clear
    /// its count and was never throttled.
    #[test]
    fn a_success_does_not_reset_the_count() {
        let mut t = Throttle::default();
        let ip = v4("127.0.0.1");
        let t0 = Instant::now();
        let mut failures = 0;
        let mut throttled_at = None;
        for guess in 0..45 {
            if guess % 3 == 0 {
                // Its own account, right password.
                let v = t.login(ip, t0, ok("carol")).verdict;
                if v == AuthVerdict::Throttled {
                    throttled_at = Some(failures);
                    break;
                }
                assert_eq!(v, AuthVerdict::Accepted("carol".into()));
            }
            match t.login(ip, t0, bad).verdict {
                AuthVerdict::Rejected => failures += 1,
                AuthVerdict::Throttled => {
                    throttled_at = Some(failures);
                    break;
                }
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(throttled_at, Some(limits::AUTH_THROTTLE_FAILURES));
        // Now the right password is refused too, and the check is not even run.
        let v = t
            .login(ip, t0, || panic!("checked while throttled"))
            .verdict;
        assert_eq!(v, AuthVerdict::Throttled);
    }

    #[test]
    fn the_moment_of_throttling_is_reported_once() {
        let mut t = Throttle::default();
        let ip = v4("192.0.2.1");
        let t0 = Instant::now();
        let mut reports = 0;
        for i in 0..3 * limits::AUTH_THROTTLE_FAILURES {
            // An attempt every half interval: the count rises until the client is throttled,
            // then every other attempt is allowed, fails and crosses the budget again.
            let now = t0 + limits::AUTH_THROTTLE_INTERVAL / 2 * i;
            reports += usize::from(t.login(ip, now, bad).now_throttled);
        }
        assert_eq!(reports, 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        // Every failure from a different address of the same /64.
        for i in 0..limits::AUTH_THROTTLE_FAILURES {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, i as u16 + 1));
            assert_eq!(t.login(ip, t0, bad).verdict, AuthVerdict::Rejected);
        }
        let same_net = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 1, 2, 3));
        assert_eq!(
            t.login(same_net, t0, ok("a")).verdict,
            AuthVerdict::Throttled
        );
        let next_net = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert_eq!(
            t.login(next_net, t0, ok("a")).verdict,
            AuthVerdict::Accepted("a".into())
        );
        // ::ffff:192.0.2.9 and 192.0.2.9 are one client.
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        for _ in 0..limits::AUTH_THROTTLE_FAILURES {
            t.login(mapped, t0, bad);
        }
        assert_eq!(
            t.login(v4("192.0.2.9"), t0, ok("a")).verdict,
            AuthVerdict::Throttled
        );
        assert_eq!(
            t.login(v4("192.0.2.10"), t0, ok("a")).verdict,
            AuthVerdict::Accepted("a".into())
        );
    }

    #[test]
    fn keys_print_as_the_address_or_the_network() {
        assert_eq!(ClientKey::from(v4("192.0.2.1")).to_string(), "192.0.2.1");
        let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(ClientKey::from(ip).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ClientKey::from(mapped).to_string(), "10.1.2.3");
    }

    #[test]
    fn tables_are_bounded_and_keep_the_clients_over_budget() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let attacker = v4("203.0.113.5");
        for _ in 0..limits::AUTH_THROTTLE_FAILURES {
            t.login(attacker, t0, bad);
        }
        // Many other clients with one failure each: they drain sooner than the attacker.
        for i in 0..(limits::AUTH_THROTTLE_TABLE as u32 + 50) {
            t.login(IpAddr::V4(Ipv4Addr::from(i)), t0, bad);
        }
        assert_eq!(t.failures.len(), limits::AUTH_THROTTLE_TABLE);
        assert_eq!(
            t.login(attacker, t0, ok("x")).verdict,
            AuthVerdict::Throttled
        );
        // Drained entries make room first.
        let later = t0 + limits::AUTH_THROTTLE_INTERVAL * 2;
        t.login(v4("198.51.100.1"), later, bad);
        assert!(t.failures.len() < limits::AUTH_THROTTLE_TABLE);
    }

    #[test]
    fn rcpt_budget_spans_connections_and_drains() {
        let mut b = RcptBudget::default();
        let ip = v4("127.0.0.1");
        let t0 = Instant::now();
        let mut reports = 0;
        for _ in 0..limits::SMTP_REJECTED_RCPTS_PER_CLIENT {
            assert!(!b.over(ip, t0));
            reports += usize::from(b.refused(ip, t0));
        }
        assert_eq!(reports, 1);
        assert!(b.over(ip, t0));
        assert!(!b.over(v4("127.0.0.2"), t0));
        let t1 = t0 + limits::SMTP_REJECTED_RCPTS_INTERVAL;
        assert!(!b.over(ip, t1));
        assert!(!b.refused(ip, t1), "reported once per episode");
        assert!(b.over(ip, t1));
    }

    #[test]
    fn at_rest_only_drained_clients_are_forgotten() {
        let mut b = RcptBudget::default();
        let t0 = Instant::now();
        b.refused(v4("192.0.2.1"), t0);
        for _ in 0..limits::SMTP_REJECTED_RCPTS_PER_CLIENT {
            b.refused(v4("192.0.2.2"), t0);
        }
        let t1 = t0 + limits::SMTP_REJECTED_RCPTS_INTERVAL;
        b.forget_drained(t1);
        assert_eq!(b.refused.len(), 1);
        assert!(b.over(v4("192.0.2.2"), t1 - Duration::from_millis(1)));
    }
}
