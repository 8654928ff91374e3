//! Memory telemetry: what the process and the machine hold (read from `/proc`), and what the
//! engine's output cache holds against its budgets (reported by the engine thread).
//!
//! VRAM is not measured here yet: the GPU driver telemetry comes with the GPU work (issue 7).
//! Until then the editor says "no GPU telemetry" rather than showing a number it does not have;
//! the cache's device bytes are what the engine itself accounts for.

use veetance_core::{Budgets, CacheStats, MemBytes};

/// Host memory, in bytes; `None` where the platform does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostMemory {
    /// Resident set size of this process.
    pub process_rss: Option<u64>,
    pub total: Option<u64>,
    pub available: Option<u64>,
}

/// Reads `/proc/self/status` and `/proc/meminfo` (Linux).
pub fn read_host_memory() -> HostMemory {
    let kb_field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    HostMemory {
        process_rss: kb_field(&status, "VmRSS:"),
        total: kb_field(&meminfo, "MemTotal:"),
        available: kb_field(&meminfo, "MemAvailable:"),
    }
}

/// One cached node output, for the cache list.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheEntrySummary {
    pub node_type: String,
    pub bytes: MemBytes,
    pub compute_ms: f64,
}

/// What the engine's output cache holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheTelemetry {
    pub usage: MemBytes,
    pub budgets: Budgets,
    pub entries: usize,
    pub stats: CacheStats,
    /// The largest entries, largest first (at most 8).
    pub largest: Vec<CacheEntrySummary>,
}

impl CacheTelemetry {
    pub fn from_cache(cache: &veetance_core::OutputCache) -> Self {
        let mut largest: Vec<CacheEntrySummary> = cache
            .entries()
            .into_iter()
            .map(|e| CacheEntrySummary {
                node_type: e.node_type,
                bytes: e.bytes,
                compute_ms: e.compute_ms,
            })
            .collect();
        largest.sort_by_key(|e| std::cmp::Reverse(e.bytes.total()));
        largest.truncate(8);
        CacheTelemetry {
            usage: cache.usage(),
            budgets: cache.budgets(),
            entries: cache.len(),
            stats: cache.stats(),
            largest,
        }
    }
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`, `512 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `used / budget` text, with "no budget" for an unlimited tier.
pub fn usage_text(used: u64, budget: Option<u64>) -> String {
    match budget {
        Some(b) => format!("{} / {}", format_bytes(used), format_bytes(b)),
        None => format!("{} (no budget)", format_bytes(used)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_formatted_in_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(300 * 1024 * 1024), "300 MiB");
    }

    #[test]
    fn host_memory_is_read_from_proc() {
        let m = read_host_memory();
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(m.process_rss.unwrap() > 0);
            assert!(m.total.unwrap() >= m.available.unwrap());
        }
    }
}
