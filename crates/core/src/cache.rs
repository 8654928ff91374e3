//! The output cache: node outputs stored under content-hash keys, with byte accounting per
//! memory tier, and a tiered eviction (device → host → dropped) by a score that weighs bytes,
//! idle time and the time to recompute (see [`eviction_score`]).
//!
//! A key is a hash of (node type, node version, canonical params, keys of the inputs), so it
//! holds no node ids: renumbering or moving nodes keeps every entry valid, and an unchanged
//! upstream subgraph keeps its keys whatever is edited downstream.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::value::{MemBytes, Object, Value};

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
    /// Entries dropped (to be recomputed when needed again).
    pub evictions: u64,
    /// Values not kept because they alone exceed a tier's budget.
    pub rejected: u64,
    /// Entries moved from the device to host memory.
    pub offloads: u64,
    /// Entries moved back from host memory to the device.
    pub reloads: u64,
}

/// A cache entry moved down a tier to keep within budget or to make room on the device.
#[derive(Clone, Debug)]
pub struct Eviction {
    pub key: CacheKey,
    pub node_type: String,
    /// What the entry held before it moved.
    pub bytes: MemBytes,
    /// The values as they now sit in host memory, when the entry moved from the device to the
    /// host tier; `None` when it was dropped.
    pub offloaded: Option<Arc<[Value]>>,
}

/// A summary of one entry, for telemetry.
#[derive(Clone, Debug, Serialize)]
pub struct EntryInfo {
    pub node_type: String,
    pub bytes: MemBytes,
    pub compute_ms: f64,
    /// Moved from the device to host memory; moved back when a node needs it.
    pub offloaded: bool,
}

/// Idle times shorter than this count as this long in [`eviction_score`]: within one run every
/// value was used "just now", and they rank by size and cost (ties by least recent use).
pub const SCORE_IDLE_FLOOR: Duration = Duration::from_secs(1);
/// Compute times shorter than this count as this long in [`eviction_score`]: below it,
/// measured durations are mostly timer and scheduler noise, and a value that costs nothing to
/// recompute (a constant) must not score infinity.
pub const SCORE_COST_FLOOR: Duration = Duration::from_millis(10);

/// How much the cache gains by moving a value down a tier; the highest score goes first, and
/// equal scores go least recently used first.
///
/// `score = bytes × max(idle, 1 s) / max(compute, 10 ms)`
///
/// * `bytes`: what the value holds in the tier that needs room (device bytes when making room on
///   the device, host bytes when the host tier is over budget): freeing more is better;
/// * `idle`: time since the value was last used (stored or read): a value nobody asked for in a
///   while is less likely to be asked for next;
/// * `compute`: how long its node took to make it (measured when it ran): the time lost if it
///   has to be recomputed, so expensive values stay.
///
/// So a 4 GiB latent made in 50 ms goes before a 200 MiB text embedding that took 3 s, and of
/// two equal values the one idle for a minute goes first. ComfyUI's `RAMPressureCache` scores
/// `1.3^generations × bytes` (no cost term, host memory only); its `ScoreCache` experiment scores
/// `age × size / exec_time` without floors, so a value used this instant scores 0 whatever its
/// size and a free-to-compute one scores infinity. Here a device value that can move is
/// offloaded to host memory rather than dropped, so a high score costs a transfer first, and a
/// recompute only if the host tier later drops it too.
pub fn eviction_score(bytes: u64, idle: Duration, compute: Duration) -> f64 {
    bytes as f64 * idle.max(SCORE_IDLE_FLOOR).as_secs_f64()
        / compute.max(SCORE_COST_FLOOR).as_secs_f64()
}

struct Entry {
    outputs: Arc<[Value]>,
    node_type: String,
    bytes: MemBytes,
    compute: Duration,
    /// When it was last stored or read, for the score.
    last_used: Instant,
    /// Logical clock of the last use: breaks ties between equal scores (older goes first).
    last_tick: u64,
    offloaded: bool,
    /// The storage its bytes live in when shared with other entries ([`Payload::storage_id`]).
    storage: Option<usize>,
}

/// Which tier [`OutputCache::demote_best`] makes room in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Device,
    Host,
}

/// Node outputs by key, within per-tier byte budgets.
///
/// Tiers: device memory → host memory → dropped. When the device tier is over budget (or the
/// engine needs room for a node) the entry with the highest [`eviction_score`] moves down:
/// its payloads are asked to move to host memory ([`crate::Payload::to_host`]); a value that
/// cannot move, fails to, or does not fit the host budget is dropped and recomputed when needed.
/// When the host tier is over budget, entries are dropped by the same score over host bytes.
/// The engine moves an offloaded entry back ([`OutputCache::promote`]) before a node uses it.
pub struct OutputCache {
    entries: KeyMap<Entry>,
    budgets: Budgets,
    /// At most this many entries ([`MAX_ENTRIES`] by default): values of a few bytes (a seed's
    /// noise, an output node's empty outputs) barely count against the byte budgets, so without
    /// it a server fed new seeds would keep one such entry per prompt for ever.
    max_entries: usize,
    clock: u64,
    stats: CacheStats,
    /// Bytes per second moves to host memory achieved (the last one of at least
    /// [`RATE_SAMPLE_MIN`] bytes); `None` before one, when [`DEFAULT_HOST_RATE`] stands in.
    host_rate: Option<f64>,
}

/// How many entries the cache keeps at most by default; the least recently used go first. A
/// graph of a hundred nodes in ten variations, say (ComfyUI's default cache keeps the last
/// prompt's outputs only).
pub const MAX_ENTRIES: usize = 1024;

/// A move to host memory this large or larger times the host tier's rate.
const RATE_SAMPLE_MIN: u64 = 64 << 20;

/// The rate assumed for moves to host memory before one was timed: 2 GB/s, about what copies
/// into freshly allocated, unpinned host memory reach (1.3 GB/s was measured on the H200 machine).
pub const DEFAULT_HOST_RATE: f64 = 2e9;

/// A value nothing in the running graph still needs is dropped instead of moved to host memory
/// when the move would take at least this long and more than [`DROP_COST_RATIO`] times what
/// computing it took (a loaded model reloads from the OS's file cache faster than it copies out).
pub const DROP_MIN_MOVE: Duration = Duration::from_millis(500);

/// See [`DROP_MIN_MOVE`].
pub const DROP_COST_RATIO: f64 = 2.0;

impl fmt::Debug for OutputCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputCache")
            .field("entries", &self.entries.len())
            .field("used", &self.usage())
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
            max_entries: MAX_ENTRIES,
            clock: 0,
            stats: CacheStats::default(),
            host_rate: None,
        }
    }

    /// Sets how many entries the cache keeps at most (at least 1), dropping the least recently
    /// used at once if it holds more.
    pub fn set_max_entries(&mut self, max_entries: usize) -> Vec<Eviction> {
        self.max_entries = max_entries.max(1);
        self.enforce_budgets(&[])
    }

    /// Sets the rate moves to host memory are expected to reach (bytes per second), as if one
    /// had been timed at it; tests use it to make moves look slow.
    pub fn set_host_rate(&mut self, bytes_per_second: f64) {
        self.host_rate = Some(bytes_per_second);
    }

    /// Whether `key`'s device bytes would take longer to move to host memory than to compute
    /// again (see [`DROP_MIN_MOVE`]).
    fn cheaper_to_recompute(&self, key: &CacheKey) -> bool {
        let Some(e) = self.entries.get(key) else {
            return false;
        };
        let rate = self.host_rate.unwrap_or(DEFAULT_HOST_RATE).max(1.0);
        let secs = e.bytes.device as f64 / rate;
        secs >= DROP_MIN_MOVE.as_secs_f64() && secs > DROP_COST_RATIO * e.compute.as_secs_f64()
    }

    /// The outputs under `key`, marking them recently used. They may sit in host memory (see
    /// [`OutputCache::is_offloaded`]).
    pub fn get(&mut self, key: &CacheKey) -> Option<Arc<[Value]>> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(e) => {
                e.last_used = Instant::now();
                e.last_tick = self.clock;
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

    /// Whether the entry under `key` was moved from the device to host memory.
    pub fn is_offloaded(&self, key: &CacheKey) -> bool {
        self.entries.get(key).is_some_and(|e| e.offloaded)
    }

    /// Stores outputs, then moves entries down a tier until every tier is within budget (never
    /// this one). A value larger than the device budget on its own is stored offloaded when it
    /// can move to host memory; one that fits no tier is not kept (it is recomputed when needed
    /// again). Returns what moved or was dropped.
    pub fn insert(
        &mut self,
        key: CacheKey,
        node_type: &str,
        outputs: Arc<[Value]>,
        compute: Duration,
    ) -> Vec<Eviction> {
        let mut outputs = outputs;
        let mut bytes = sum_bytes(&outputs);
        let mut offloaded = false;
        if exceeds(bytes.device, self.budgets.device) {
            // Too big for the device tier on its own: keep it in host memory if it can move.
            if let Ok(Some(host)) = offload(&outputs) {
                outputs = host;
                bytes = sum_bytes(&outputs);
                offloaded = true;
                self.stats.offloads += 1;
            }
        }
        if exceeds(bytes.device, self.budgets.device) || exceeds(bytes.host, self.budgets.host) {
            self.stats.rejected += 1;
            return Vec::new();
        }
        self.clock += 1;
        self.entries.remove(&key);
        let storage = storage_of(&outputs);
        self.entries.insert(
            key,
            Entry {
                outputs,
                node_type: node_type.into(),
                bytes,
                compute,
                last_used: Instant::now(),
                last_tick: self.clock,
                offloaded,
                storage,
            },
        );
        self.stats.inserts += 1;
        self.enforce_budgets(&[key])
    }

    /// Replaces an offloaded entry's values by the same values moved back to the device (the
    /// engine does the move before a node uses them) and marks it used. Entries moved down to
    /// keep within budget are never this one nor one of `pinned` (the node's other inputs).
    pub fn promote(
        &mut self,
        key: &CacheKey,
        outputs: Arc<[Value]>,
        pinned: &[CacheKey],
    ) -> Vec<Eviction> {
        self.clock += 1;
        let Some(e) = self.entries.get_mut(key) else {
            return Vec::new();
        };
        let bytes = sum_bytes(&outputs);
        e.bytes = bytes;
        e.storage = storage_of(&outputs);
        e.outputs = outputs;
        e.offloaded = false;
        e.last_used = Instant::now();
        e.last_tick = self.clock;
        self.stats.reloads += 1;
        let mut keep = pinned.to_vec();
        keep.push(*key);
        self.enforce_budgets(&keep)
    }

    /// Moves the device entry with the highest score (not one of `pinned`) down a tier: to host
    /// memory when its payloads can move and it fits the host budget, else out of the cache.
    /// Returns what happened (host entries dropped to make room for it come first), or an empty
    /// list when no entry outside `pinned` holds device bytes.
    pub fn demote_best(&mut self, pinned: &[CacheKey]) -> Vec<Eviction> {
        match self.best_victim(Tier::Device, pinned) {
            Some(victim) => self.demote(victim, pinned, None),
            None => Vec::new(),
        }
    }

    /// [`OutputCache::demote_best`] for a scheduler that knows which values its run still
    /// `held`: an entry outside them (and sharing storage with none of them) is dropped rather
    /// than moved when moving costs more than computing it again ([`DROP_MIN_MOVE`]). Dropping
    /// a value the run still holds would free nothing.
    pub fn demote_best_unless_held(
        &mut self,
        pinned: &[CacheKey],
        held: &[CacheKey],
    ) -> Vec<Eviction> {
        match self.best_victim(Tier::Device, pinned) {
            Some(victim) => self.demote(victim, pinned, Some(held)),
            None => Vec::new(),
        }
    }

    /// Drops the entry with the highest score holding host bytes (with the entries sharing its
    /// storage, which would otherwise keep it alive), never one of `keep` or sharing storage
    /// with one: to give a node about to run room in host memory. Returns what was dropped,
    /// empty when nothing can go.
    pub fn drop_best_host(&mut self, keep: &[CacheKey]) -> Vec<Eviction> {
        let Some(victim) = self.best_victim(Tier::Host, keep) else {
            return Vec::new();
        };
        let storage = self.entries[&victim].storage;
        let group: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(k, e)| **k == victim || storage.is_some() && e.storage == storage)
            .map(|(k, _)| *k)
            .collect();
        group
            .into_iter()
            .filter_map(|k| self.drop_entry(k))
            .collect()
    }

    /// The entry with the highest score holding bytes in `tier`, outside `pinned`.
    fn best_victim(&self, tier: Tier, pinned: &[CacheKey]) -> Option<CacheKey> {
        let now = Instant::now();
        // Moving a value whose storage a pinned entry shares would free nothing.
        let pinned_storage: Vec<usize> = pinned
            .iter()
            .filter_map(|k| self.entries.get(k).and_then(|e| e.storage))
            .collect();
        self.entries
            .iter()
            .filter(|(k, _)| !pinned.contains(k))
            .filter(|(_, e)| e.storage.is_none_or(|s| !pinned_storage.contains(&s)))
            .filter_map(|(k, e)| {
                let bytes = match tier {
                    Tier::Device => e.bytes.device,
                    Tier::Host => e.bytes.host,
                };
                (bytes > 0).then(|| {
                    let idle = now.saturating_duration_since(e.last_used);
                    (eviction_score(bytes, idle, e.compute), e.last_tick, *k)
                })
            })
            // Highest score; among equal scores the least recently used.
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, _, k)| k)
    }

    /// Moves `key` from the device to host memory, or drops it (see
    /// [`OutputCache::demote_best_unless_held`] for `held`).
    fn demote(
        &mut self,
        key: CacheKey,
        pinned: &[CacheKey],
        held: Option<&[CacheKey]>,
    ) -> Vec<Eviction> {
        let Some(e) = self.entries.get(&key) else {
            return Vec::new();
        };
        if let Some(held) = held {
            let storage = e.storage;
            let group_held = held.iter().any(|h| {
                *h == key
                    || storage.is_some()
                        && self.entries.get(h).is_some_and(|o| o.storage == storage)
            });
            if !group_held && self.cheaper_to_recompute(&key) {
                // The whole group goes, or the storage would stay on the device.
                let group: Vec<CacheKey> = self
                    .entries
                    .iter()
                    .filter(|(k, o)| **k == key || storage.is_some() && o.storage == storage)
                    .map(|(k, _)| *k)
                    .collect();
                return group
                    .into_iter()
                    .filter_map(|k| self.drop_entry(k))
                    .collect();
            }
        }
        let e = &self.entries[&key];
        let started = Instant::now();
        let host = match offload(&e.outputs) {
            Ok(Some(host)) => Some(host),
            Ok(None) | Err(_) => None,
        };
        let took = started.elapsed().as_secs_f64();
        if e.bytes.device >= RATE_SAMPLE_MIN && host.is_some() && took > 0.0 {
            self.host_rate = Some(e.bytes.device as f64 / took);
        }
        let Some(host) = host else {
            return self.drop_entry(key).into_iter().collect();
        };
        let host_bytes = sum_bytes(&host);
        if exceeds(host_bytes.host, self.budgets.host) || host_bytes.device > 0 {
            // Does not fit the host tier on its own, or did not leave the device after all.
            return self.drop_entry(key).into_iter().collect();
        }
        // The entries sharing its storage follow it onto the moved copy.
        let storage = self.entries[&key].storage;
        let mut group = vec![(key, host.clone())];
        if let Some(storage) = storage {
            let others: Vec<CacheKey> = self
                .entries
                .iter()
                .filter(|(k, e)| **k != key && e.storage == Some(storage) && !e.offloaded)
                .map(|(k, _)| *k)
                .collect();
            for other in others {
                match rebase(&self.entries[&other].outputs, &host) {
                    Some(values) => group.push((other, values)),
                    None => match offload(&self.entries[&other].outputs) {
                        Ok(Some(values)) => group.push((other, values)),
                        _ => {
                            self.drop_entry(other);
                        }
                    },
                }
            }
        }
        let mut moved = Vec::new();
        for (k, values) in group {
            let e = self.entries.get_mut(&k).expect("listed above");
            let before = e.bytes;
            e.bytes = sum_bytes(&values);
            e.storage = storage_of(&values);
            e.outputs = values.clone();
            e.offloaded = true;
            self.stats.offloads += 1;
            moved.push(Eviction {
                key: k,
                node_type: e.node_type.clone(),
                bytes: before,
                offloaded: Some(values),
            });
        }
        // Room for them in the host tier: drop host entries by score (possibly these).
        let mut keep: Vec<CacheKey> = pinned.to_vec();
        keep.retain(|k| moved.iter().all(|m| m.key != *k));
        let mut out = Vec::new();
        while exceeds(self.usage().host, self.budgets.host) {
            let Some(victim) = self.best_victim(Tier::Host, &keep) else {
                break;
            };
            moved.retain(|m| m.key != victim);
            out.extend(self.drop_entry(victim));
        }
        out.extend(moved);
        out
    }

    fn drop_entry(&mut self, key: CacheKey) -> Option<Eviction> {
        let e = self.entries.remove(&key)?;
        self.stats.evictions += 1;
        Some(Eviction {
            key,
            node_type: e.node_type,
            bytes: e.bytes,
            offloaded: None,
        })
    }

    /// Moves entries down until within budget, never the `keep` entries. Returns what moved.
    fn enforce_budgets(&mut self, keep: &[CacheKey]) -> Vec<Eviction> {
        let mut evicted = Vec::new();
        loop {
            let used = self.usage();
            if exceeds(used.device, self.budgets.device) {
                let moved = self.demote_best(keep);
                if moved.is_empty() {
                    break;
                }
                evicted.extend(moved);
            } else if exceeds(used.host, self.budgets.host) {
                let Some(victim) = self.best_victim(Tier::Host, keep) else {
                    break;
                };
                evicted.extend(self.drop_entry(victim));
            } else {
                break;
            }
        }
        while self.entries.len() > self.max_entries {
            let Some(victim) = self.least_recently_used(keep) else {
                break;
            };
            evicted.extend(self.drop_entry(victim));
        }
        evicted
    }

    /// The entry used longest ago, but none of `keep`.
    fn least_recently_used(&self, keep: &[CacheKey]) -> Option<CacheKey> {
        self.entries
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .min_by_key(|(_, e)| e.last_tick)
            .map(|(k, _)| *k)
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Changes the budgets, moving entries down at once if now over.
    pub fn set_budgets(&mut self, budgets: Budgets) -> Vec<Eviction> {
        self.budgets = budgets;
        self.enforce_budgets(&[])
    }

    /// Bytes held, per tier; a storage several entries share counts once.
    pub fn usage(&self) -> MemBytes {
        let mut seen: Vec<usize> = Vec::new();
        let mut used = MemBytes::ZERO;
        for e in self.entries.values() {
            if let Some(s) = e.storage {
                if seen.contains(&s) {
                    continue;
                }
                seen.push(s);
            }
            used += e.bytes;
        }
        used
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
    }

    /// What the cache holds, most recently used first.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.last_tick));
        v.into_iter()
            .map(|e| EntryInfo {
                node_type: e.node_type.clone(),
                bytes: e.bytes,
                compute_ms: e.compute.as_secs_f64() * 1e3,
                offloaded: e.offloaded,
            })
            .collect()
    }
}

fn sum_bytes(values: &[Value]) -> MemBytes {
    values
        .iter()
        .fold(MemBytes::ZERO, |acc, v| acc + v.mem_bytes())
}

/// `values` with every payload that holds device bytes moved to host memory. `Ok(None)` when one
/// of them cannot move; `Err` when a move failed.
pub(crate) fn offload(values: &[Value]) -> Result<Option<Arc<[Value]>>, String> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match v {
            Value::Object(o) if o.payload.mem_bytes().device > 0 => match o.payload.to_host() {
                Some(Ok(payload)) => out.push(Value::Object(Object { ty: o.ty, payload })),
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            },
            other => out.push(other.clone()),
        }
    }
    Ok(Some(out.into()))
}

/// The shared storage `values` live in: the first payload's that has one.
fn storage_of(values: &[Value]) -> Option<usize> {
    values.iter().find_map(|v| match v {
        Value::Object(o) => o.payload.storage_id(),
        _ => None,
    })
}

/// `values` over the storage of `moved` (values that shared theirs and moved to another tier);
/// `None` when a payload holding the shared storage cannot rebase.
fn rebase(values: &[Value], moved: &[Value]) -> Option<Arc<[Value]>> {
    let target = moved.iter().find_map(|v| match v {
        Value::Object(o) if o.payload.storage_id().is_some() => Some(o.payload.clone()),
        _ => None,
    })?;
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match v {
            Value::Object(o) if o.payload.storage_id().is_some() => {
                out.push(Value::Object(Object {
                    ty: o.ty,
                    payload: o.payload.rebase(target.as_ref())?,
                }))
            }
            other => out.push(other.clone()),
        }
    }
    Some(out.into())
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

    /// Weights that several handles share (a model and its patched copies).
    #[derive(Debug)]
    struct Weights {
        store: Arc<Vec<u8>>,
        on_device: bool,
        tag: u8,
    }

    impl crate::Payload for Weights {
        fn mem_bytes(&self) -> MemBytes {
            let n = self.store.len() as u64;
            if self.on_device {
                MemBytes::device(n)
            } else {
                MemBytes::host(n)
            }
        }
        fn to_host(&self) -> Option<Result<Arc<dyn crate::Payload>, String>> {
            self.on_device.then(|| {
                Ok(Arc::new(Weights {
                    store: Arc::new(self.store.to_vec()),
                    on_device: false,
                    tag: self.tag,
                }) as Arc<dyn crate::Payload>)
            })
        }
        fn storage_id(&self) -> Option<usize> {
            Some(Arc::as_ptr(&self.store) as usize)
        }
        fn rebase(&self, moved: &dyn crate::Payload) -> Option<Arc<dyn crate::Payload>> {
            let moved = moved.as_any().downcast_ref::<Weights>()?;
            Some(Arc::new(Weights {
                store: moved.store.clone(),
                on_device: moved.on_device,
                tag: self.tag,
            }))
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn weights(store: &Arc<Vec<u8>>, tag: u8) -> Arc<[Value]> {
        let w = Weights {
            store: store.clone(),
            on_device: true,
            tag,
        };
        vec![Value::Object(Object::new(crate::PortType::Model, w))].into()
    }

    fn tag_and_store(values: &[Value]) -> (u8, usize, bool) {
        let w = values[0]
            .as_object()
            .and_then(|o| o.downcast::<Weights>())
            .unwrap();
        (w.tag, Arc::as_ptr(&w.store) as usize, w.on_device)
    }

    #[test]
    fn values_sharing_storage_count_once_and_move_together() {
        let mut cache = OutputCache::new(Budgets {
            device: Some(1000),
            host: None,
        });
        let store = Arc::new(vec![7u8; 600]);
        // A loaded model and a patched handle over the same weights: 600 bytes, not 1200, so
        // neither has to leave the device.
        assert!(cache
            .insert(key(1), "Load", weights(&store, 1), Duration::ZERO)
            .is_empty());
        assert!(cache
            .insert(key(2), "Patch", weights(&store, 2), Duration::ZERO)
            .is_empty());
        assert_eq!(cache.usage().device, 600);

        // Pinning one pins the storage: moving the other would free nothing.
        assert!(cache.demote_best(&[key(2)]).is_empty());

        // Moving one moves both, onto one host copy.
        let moved = cache.demote_best(&[]);
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert_eq!(cache.usage(), MemBytes::host(600));
        let a = tag_and_store(&cache.get(&key(1)).unwrap());
        let b = tag_and_store(&cache.get(&key(2)).unwrap());
        assert_eq!((a.0, b.0), (1, 2), "each keeps its own patches");
        assert_eq!(a.1, b.1, "one shared host copy");
        assert!(!a.2 && !b.2);
        assert_ne!(a.1, Arc::as_ptr(&store) as usize);
    }

    #[test]
    fn a_value_no_one_holds_is_dropped_when_moving_it_costs_more_than_computing_it() {
        let setup = |compute: Duration| {
            let mut cache = OutputCache::new(Budgets {
                device: Some(1000),
                host: None,
            });
            // 600 bytes at 1000 bytes/s: a 0.6 s move.
            cache.set_host_rate(1000.0);
            let store = Arc::new(vec![7u8; 600]);
            cache.insert(key(1), "Load", weights(&store, 1), compute);
            cache
        };
        // Cheap to recompute, held by no one: dropped, not copied out.
        let mut cache = setup(Duration::from_millis(100));
        let moved = cache.demote_best_unless_held(&[], &[]);
        assert_eq!(moved.len(), 1);
        assert!(moved[0].offloaded.is_none(), "{moved:?}");
        assert!(!cache.contains(&key(1)));
        // The run still holds it: dropping would free nothing, so it moves.
        let mut cache = setup(Duration::from_millis(100));
        let moved = cache.demote_best_unless_held(&[], &[key(1)]);
        assert!(moved[0].offloaded.is_some());
        assert_eq!(cache.usage(), MemBytes::host(600));
        // Expensive to recompute: it moves.
        let mut cache = setup(Duration::from_secs(1));
        assert!(cache.demote_best_unless_held(&[], &[])[0]
            .offloaded
            .is_some());
        // A fast move (under DROP_MIN_MOVE) is always worth it.
        let mut cache = setup(Duration::ZERO);
        cache.set_host_rate(1e6);
        assert!(cache.demote_best_unless_held(&[], &[])[0]
            .offloaded
            .is_some());
        // Values sharing storage are dropped together (one alone would free nothing).
        let mut cache = setup(Duration::ZERO);
        let store = Arc::new(vec![7u8; 600]);
        cache.insert(key(2), "Load", weights(&store, 1), Duration::ZERO);
        cache.insert(key(3), "Patch", weights(&store, 2), Duration::ZERO);
        let moved = cache.demote_best_unless_held(&[key(1)], &[]);
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert!(!cache.contains(&key(2)) && !cache.contains(&key(3)));
        assert!(cache.contains(&key(1)));
        // The scheduler-less path never drops a value it could move.
        let mut cache = setup(Duration::ZERO);
        assert!(cache.demote_best(&[])[0].offloaded.is_some());
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
    fn entries_of_no_bytes_are_bounded_in_number() {
        // Ints count no bytes, so no byte budget ever drops them: a server fed a new seed per
        // prompt would keep one such entry per prompt for ever without the count bound.
        let wide = |n: u64| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&n.to_le_bytes());
            CacheKey(b)
        };
        let mut cache = OutputCache::new(Budgets {
            device: None,
            host: Some(1 << 20),
        });
        cache.set_max_entries(64);
        for i in 0..1000u64 {
            cache.insert(
                wide(i),
                "Noise",
                Arc::from(vec![Value::Int(i as i64)]),
                Duration::ZERO,
            );
            assert!(cache.len() <= 64);
            assert!(cache.contains(&wide(i)), "the entry just stored stays");
        }
        assert_eq!(cache.len(), 64);
        // The newest 64 are kept, and one read makes an old entry the newest.
        assert!(cache.contains(&wide(936)) && !cache.contains(&wide(935)));
        assert!(cache.get(&wide(936)).is_some());
        cache.insert(
            wide(5000),
            "Noise",
            Arc::from(vec![Value::Int(0)]),
            Duration::ZERO,
        );
        assert!(cache.contains(&wide(936)) && !cache.contains(&wide(937)));
        // Lowering the bound drops the least recently used at once.
        let dropped = cache.set_max_entries(10);
        assert_eq!(dropped.len(), 54);
        assert_eq!(cache.len(), 10);
        assert!(cache.contains(&wide(936)) && cache.contains(&wide(5000)));
    }

    #[test]
    fn score_rises_with_bytes_and_idle_time_and_falls_with_compute_time() {
        let s = |bytes, idle_s, compute_ms| {
            eviction_score(
                bytes,
                Duration::from_secs(idle_s),
                Duration::from_millis(compute_ms),
            )
        };
        assert!(s(200, 0, 0) > s(100, 0, 0));
        assert!(s(100, 60, 0) > s(100, 0, 0));
        assert!(s(100, 0, 10) > s(100, 0, 3000));
        // Below the floors, differences are noise: equal scores (ties go least recent first).
        assert_eq!(s(100, 0, 1), s(100, 0, 9));
        // A 4 GiB latent made in 50 ms goes before a 200 MiB embedding that took 3 s.
        assert!(s(4 << 30, 0, 50) > s(200 << 20, 0, 3000));
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
