//! SPA-shaped junk: text in the base64 alphabet, as long as typical SPA packets, so that a
//! daemon cannot drop it on a cheap length or charset test and has to do the real work (an
//! HMAC over it in spad, a full libfko context in fwknopd).

use crate::{Error, Result};

/// The standard base64 alphabet, which SPA packets use.
pub const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Characters at the start of each packet overwritten with a running counter, so no two
/// packets of a run are equal (11 base64 characters hold 64 bits).
const COUNTER_CHARS: usize = 11;

/// A small fast PRNG (xorshift64*): the junk only has to look random, not be secret.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeds from the operating system.
    pub fn from_os() -> Result<Self> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|_| Error::Random)?;
        Ok(Self::new(u64::from_le_bytes(b)))
    }

    /// Seeds with `seed` (zero is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// A pool of random base64 texts, handed out in turn with a counter stamped into each, so a
/// long flood costs one copy per packet and never repeats a packet.
#[derive(Clone, Debug)]
pub struct Junk {
    pool: Vec<Vec<u8>>,
    counter: u64,
}

impl Junk {
    /// `pool` distinct texts of lengths drawn uniformly from `min..=max`.
    pub fn new(pool: usize, min: usize, max: usize, rng: &mut XorShift) -> Result<Self> {
        if min > max || min < COUNTER_CHARS || max > 1472 {
            return Err(Error::JunkRange { min, max });
        }
        let pool = (0..pool.max(1))
            .map(|_| {
                let len = rng.range(min, max);
                (0..len).map(|_| ALPHABET[(rng.next_u64() % 64) as usize]).collect()
            })
            .collect();
        Ok(Self { pool, counter: rng.next_u64() })
    }

    /// Writes the next packet into `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>) {
        let c = self.counter;
        self.counter = self.counter.wrapping_add(1);
        let src = &self.pool[(c % self.pool.len() as u64) as usize];
        out.clear();
        out.extend_from_slice(src);
        for (i, b) in out.iter_mut().take(COUNTER_CHARS).enumerate() {
            *b = ALPHABET[((c >> (6 * i)) & 63) as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_base64_of_spa_length_and_never_repeats() {
        let mut rng = XorShift::new(7);
        let mut j = Junk::new(4, 150, 250, &mut rng).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut buf = Vec::new();
        for _ in 0..1000 {
            j.fill(&mut buf);
            assert!((150..=250).contains(&buf.len()), "{}", buf.len());
            assert!(buf.iter().all(|b| ALPHABET.contains(b)));
            assert!(seen.insert(buf.clone()), "a packet repeated");
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut rng = XorShift::new(1);
        assert!(Junk::new(1, 200, 100, &mut rng).is_err());
        assert!(Junk::new(1, 5, 100, &mut rng).is_err());
        assert!(Junk::new(1, 100, 5000, &mut rng).is_err());
    }
}
