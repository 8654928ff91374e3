//! The output cache: node outputs stored under content-hash keys, with byte accounting per
//! memory tier and least-recently-used eviction when a tier is over its budget.
//!
//! A key is a hash of (node type, node version, canonical params, keys of the inputs), so it
//! holds no node ids: renumbering or moving nodes keeps every entry valid, and an unchanged
//! upstream subgraph keeps its keys whatever is edited downstream.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::value::{MemBytes, Value};

/// The content-hash key of a node's outputs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Already a uniform hash: its first 8 bytes are as good a hash-map key as any.
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

/// A hasher for [`CacheKey`]s, which are blake3 digests already: it passes their first 8 bytes
/// through instead of hashing 32 bytes again with SipHash on every look-up.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for CacheKey (it writes one u64); kept correct for any other use.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<CacheKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Byte budgets per tier; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    pub device: Option<u64>,
    pub host: Option<u64>,
}

/// Counters since the cache was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    /// Values not kept because they alone exceed a tier's budget.
    pub rejected: u64,
}

/// A value dropped from the cache to keep within budget.
#[derive(Clone, Debug)]
pub struct Eviction {
    pub key: CacheKey,
    pub node_type: String,
    pub bytes: MemBytes,
}

/// A summary of one entry, for telemetry.
#[derive(Clone, Debug, Serialize)]
pub struct EntryInfo {
    pub node_type: String,
    pub bytes: MemBytes,
    pub compute_ms: f64,
}

struct Entry {
    outputs: Arc<[Value]>,
    node_type: String,
    bytes: MemBytes,
    compute: Duration,
    last_used: u64,
}

/// Node outputs by key, within per-tier byte budgets.
pub struct OutputCache {
    entries: KeyMap<Entry>,
    budgets: Budgets,
    used: MemBytes,
    clock: u64,
    stats: CacheStats,
}

impl fmt::Debug for OutputCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputCache")
            .field("entries", &self.entries.len())
            .field("used", &self.used)
            .field("budgets", &self.budgets)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for OutputCache {
    fn default() -> Self {
        Self::new(Budgets::default())
    }
}

impl OutputCache {
    pub fn new(budgets: Budgets) -> Self {
        OutputCache {
            entries: KeyMap::default(),
            budgets,
            used: MemBytes::ZERO,
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    /// The outputs under `key`, marking them recently used.
    pub fn get(&mut self, key: &CacheKey) -> Option<Arc<[Value]>> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(e) => {
                e.last_used = self.clock;
                self.stats.hits += 1;
                Some(e.outputs.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    pub fn contains(&self, key: &CacheKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Stores outputs, then evicts least-recently-used entries until every tier is within
    /// budget. A value larger than a budget on its own is not kept (it is recomputed when
    /// needed again). Returns what was evicted.
    pub fn insert(
        &mut self,
        key: CacheKey,
        node_type: &str,
        outputs: Arc<[Value]>,
        compute: Duration,
    ) -> Vec<Eviction> {
        let bytes = outputs
            .iter()
            .fold(MemBytes::ZERO, |acc, v| acc + v.mem_bytes());
        if exceeds(bytes.device, self.budgets.device) || exceeds(bytes.host, self.budgets.host) {
            self.stats.rejected += 1;
            return Vec::new();
        }
        self.clock += 1;
        if let Some(old) = self.entries.remove(&key) {
            self.used -= old.bytes;
        }
        self.entries.insert(
            key,
            Entry {
                outputs,
                node_type: node_type.into(),
                bytes,
                compute,
                last_used: self.clock,
            },
        );
        self.used += bytes;
        self.stats.inserts += 1;
        self.enforce_budgets(Some(key))
    }

    /// Evicts until within budget, never the `keep` entry. Returns what was evicted.
    fn enforce_budgets(&mut self, keep: Option<CacheKey>) -> Vec<Eviction> {
        let mut evicted = Vec::new();
        loop {
            let device_over = exceeds(self.used.device, self.budgets.device);
            let host_over = exceeds(self.used.host, self.budgets.host);
            if !device_over && !host_over {
                break;
            }
            // The least recently used entry holding bytes in an over-budget tier.
            let victim = self
                .entries
                .iter()
                .filter(|(k, e)| {
                    Some(**k) != keep
                        && ((device_over && e.bytes.device > 0) || (host_over && e.bytes.host > 0))
                })
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            let Some(victim) = victim else { break };
            if let Some(e) = self.entries.remove(&victim) {
                self.used -= e.bytes;
                self.stats.evictions += 1;
                evicted.push(Eviction {
                    key: victim,
                    node_type: e.node_type,
                    bytes: e.bytes,
                });
            }
        }
        evicted
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Changes the budgets, evicting at once if now over.
    pub fn set_budgets(&mut self, budgets: Budgets) -> Vec<Eviction> {
        self.budgets = budgets;
        self.enforce_budgets(None)
    }

    /// Bytes held, per tier.
    pub fn usage(&self) -> MemBytes {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.used = MemBytes::ZERO;
    }

    /// What the cache holds, most recently used first.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut v: Vec<(&Entry, u64)> = self.entries.values().map(|e| (e, e.last_used)).collect();
        v.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        v.into_iter()
            .map(|(e, _)| EntryInfo {
                node_type: e.node_type.clone(),
                bytes: e.bytes,
                compute_ms: e.compute.as_secs_f64() * 1e3,
            })
            .collect()
    }
}

fn exceeds(used: u64, budget: Option<u64>) -> bool {
    budget.is_some_and(|b| used > b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn key(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    fn text(len: usize) -> Arc<[Value]> {
        vec![Value::string("x".repeat(len))].into()
    }

    #[test]
    fn evicts_least_recently_used_when_over_host_budget() {
        let mut cache = OutputCache::new(Budgets {
            device: None,
            host: Some(250),
        });
        cache.insert(key(1), "A", text(100), Duration::ZERO);
        cache.insert(key(2), "B", text(100), Duration::ZERO);
        assert!(cache.get(&key(1)).is_some()); // 1 is now more recent than 2
        let evicted = cache.insert(key(3), "C", text(100), Duration::ZERO);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].key, key(2));
        assert!(cache.contains(&key(1)) && cache.contains(&key(3)));
        assert_eq!(cache.usage().host, 200);
    }

    #[test]
    fn value_larger_than_budget_is_not_kept() {
        let mut cache = OutputCache::new(Budgets {
            device: None,
            host: Some(50),
        });
        cache.insert(key(1), "A", text(10), Duration::ZERO);
        let evicted = cache.insert(key(2), "B", text(100), Duration::ZERO);
        assert!(evicted.is_empty());
        assert!(cache.contains(&key(1)));
        assert!(!cache.contains(&key(2)));
        assert_eq!(cache.stats().rejected, 1);
    }

    #[test]
    fn lowering_budget_evicts_at_once() {
        let mut cache = OutputCache::default();
        cache.insert(key(1), "A", text(100), Duration::ZERO);
        cache.insert(key(2), "B", text(100), Duration::ZERO);
        let evicted = cache.set_budgets(Budgets {
            device: None,
            host: Some(100),
        });
        assert_eq!(evicted.len(), 1);
        assert_eq!(cache.usage().host, 100);
    }
}
