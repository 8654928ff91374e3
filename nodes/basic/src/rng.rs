//! Small, self-contained randomness: a SplitMix64 mixer for deterministic noise and seeds, and a
//! fresh-seed source for `Seed` in `randomize` mode. No RNG crate is needed for either, and the
//! noise stays bit-identical across platforms and releases of dependencies.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest seed the nodes accept: 2^53 - 1, the largest integer every JSON reader (and any
/// tool that stores numbers as f64) keeps exactly, so a seed survives the events stream and
/// scripts unchanged.
pub const SEED_MAX: i64 = (1 << 53) - 1;

/// The SplitMix64 finaliser: a bijective mix of 64 bits with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value in [0, 1) from 64 random bits (the top 24 bits, exactly representable in f32).
pub fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// A fresh seed in `0..=SEED_MAX`, different on every call: the clock, a process-wide counter
/// and the process id, hashed with std's per-process random keys.
pub fn fresh_seed() -> i64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let count = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.write_u64(count);
    h.write_u32(std::process::id());
    let bits = mix64(h.finish() ^ mix64(count));
    (bits & SEED_MAX as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_seeds_are_in_range_and_differ() {
        let seeds: Vec<i64> = (0..64).map(|_| fresh_seed()).collect();
        assert!(seeds.iter().all(|s| (0..=SEED_MAX).contains(s)));
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len());
    }

    #[test]
    fn unit_f32_stays_below_one() {
        assert_eq!(unit_f32(0), 0.0);
        assert!(unit_f32(u64::MAX) < 1.0);
    }
}
