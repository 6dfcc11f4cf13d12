//! Per-source budgets in fixed memory: for authenticated requests (before the backend worker)
//! and for reject lines (before the audit trail). Never used before the HMAC check.
//!
//! A table of token buckets indexed by a keyed hash of the source (IPv6 sources by their /64,
//! since one host owns a whole /64). Memory is fixed at start whatever the number of sources;
//! two sources that share a bucket share its budget, which only matters under a flood, and the
//! random key keeps an attacker from choosing which bucket a victim lands in.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: f64,
}

/// Token buckets for many sources.
pub struct RateLimiter {
    buckets: Box<[Bucket]>,
    hasher: RandomState,
    rate: f64,
    burst: f64,
    epoch: Instant,
}

impl RateLimiter {
    /// `slots` buckets refilling at `rate` per second up to `burst`.
    pub fn new(slots: usize, rate: f64, burst: f64) -> Self {
        let slots = slots.max(1).next_power_of_two();
        Self {
            buckets: vec![Bucket { tokens: burst, last: 0.0 }; slots].into_boxed_slice(),
            hasher: RandomState::new(),
            rate,
            burst,
            epoch: Instant::now(),
        }
    }

    fn slot(&self, ip: IpAddr) -> usize {
        let key: u128 = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6) >> 64 << 64 | 1,
        };
        (self.hasher.hash_one(key) as usize) & (self.buckets.len() - 1)
    }

    /// Takes one token for `ip` at `now`; false when the source is over its budget.
    pub fn allow_at(&mut self, ip: IpAddr, now: Instant) -> bool {
        let t = now.saturating_duration_since(self.epoch).as_secs_f64();
        let i = self.slot(ip);
        let (rate, burst) = (self.rate, self.burst);
        let b = &mut self.buckets[i];
        b.tokens = (b.tokens + (t - b.last).max(0.0) * rate).min(burst);
        b.last = t;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// [`RateLimiter::allow_at`] now.
    pub fn allow(&mut self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let mut r = RateLimiter::new(1024, 10.0, 5.0);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| r.allow_at(ip, t0)).count();
        assert_eq!(allowed, 5);
        // 10 per second: after half a second five more.
        let allowed = (0..20).filter(|_| r.allow_at(ip, t0 + Duration::from_millis(550))).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn one_source_does_not_starve_most_others() {
        let mut r = RateLimiter::new(4096, 1.0, 2.0);
        let t0 = Instant::now();
        let flooder: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..1000 {
            r.allow_at(flooder, t0);
        }
        let others = (1..=200u8).filter(|i| r.allow_at(IpAddr::from([203, 0, 113, *i]), t0)).count();
        assert!(others >= 195, "{others}");
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let mut r = RateLimiter::new(1024, 1.0, 1.0);
        let t0 = Instant::now();
        assert!(r.allow_at("2001:db8::1".parse().unwrap(), t0));
        assert!(!r.allow_at("2001:db8::2".parse().unwrap(), t0));
    }
}
