//! Failed-login throttling per client address: after `AUTH_THROTTLE_FAILURES` failures within
//! `AUTH_THROTTLE_WINDOW`, further logins from that address are refused without checking the
//! password until the window has passed. The table is bounded; the stalest entry is evicted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::limits;

#[derive(Default)]
pub struct Throttle {
    failures: HashMap<IpAddr, (u32, Instant)>,
}

impl Throttle {
    /// True if this address may try a password now.
    pub fn allows(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.failures.get(&ip) {
            Some(&(n, since)) if now.duration_since(since) < limits::AUTH_THROTTLE_WINDOW => {
                n < limits::AUTH_THROTTLE_FAILURES
            }
            Some(_) => {
                self.failures.remove(&ip);
                true
            }
            None => true,
        }
    }

    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        if !self.failures.contains_key(&ip) && self.failures.len() >= limits::AUTH_THROTTLE_TABLE {
            // Bounded memory: forget the address whose window started longest ago.
            if let Some(oldest) = self
                .failures
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(ip, _)| *ip)
            {
                self.failures.remove(&oldest);
            }
        }
        let entry = self.failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= limits::AUTH_THROTTLE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    pub fn record_success(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn blocks_after_the_budget_and_forgets_after_the_window() {
        let mut t = Throttle::default();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t0 = Instant::now();
        for _ in 0..limits::AUTH_THROTTLE_FAILURES {
            assert!(t.allows(ip, t0));
            t.record_failure(ip, t0);
        }
        assert!(!t.allows(ip, t0));
        assert!(t.allows(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), t0));
        assert!(t.allows(ip, t0 + limits::AUTH_THROTTLE_WINDOW));
    }

    #[test]
    fn table_is_bounded() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..(limits::AUTH_THROTTLE_TABLE as u32 + 50) {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert_eq!(t.failures.len(), limits::AUTH_THROTTLE_TABLE);
    }
}
