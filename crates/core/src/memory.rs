//! Memory telemetry: what the device driver and the operating system say is in use, a probe
//! hook through which the engine reads the device (the core has no GPU code), a background
//! sampler that measures a node's peak device use, and a simulated device for tests.
//!
//! The core cannot call CUDA itself. A front end wires a [`DeviceProbe`] into the engine with
//! [`crate::Engine::with_device_probe`]; `veetance-models`' `device::memory_info` is the CUDA one
//! (`cuMemGetInfo` for the device's context), and [`SimulatedDevice`] is a device pool in plain
//! memory whose allocations fail like a full GPU.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// Device memory as the driver reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceMemory {
    pub free: u64,
    pub total: u64,
}

impl DeviceMemory {
    /// Bytes in use on the device by anyone (this process and others).
    pub fn used(self) -> u64 {
        self.total.saturating_sub(self.free)
    }
}

/// Reads the device's memory. Implemented for any `Fn() -> Option<(free, total)>`, so a front end
/// can wire a closure over its GPU library:
///
/// ```
/// # use std::sync::Arc;
/// # use veetance_core::memory::DeviceProbe;
/// let probe: Arc<dyn DeviceProbe> = Arc::new(|| Some((6u64 << 30, 24u64 << 30)));
/// assert_eq!(probe.memory().unwrap().used(), 18 << 30);
/// ```
pub trait DeviceProbe: Send + Sync {
    /// Free and total device bytes now; `None` when unknown (no device, driver error).
    fn memory(&self) -> Option<DeviceMemory>;

    /// For backends that keep a high-water mark of their own (a caching allocator, the
    /// simulated device): restart it at the current use and return true. The default returns
    /// false, and the engine then finds a node's peak by sampling [`DeviceProbe::memory`] on a
    /// background thread.
    fn reset_peak(&self) -> bool {
        false
    }

    /// The most bytes in use since [`DeviceProbe::reset_peak`], when the backend tracks it.
    fn peak_used(&self) -> Option<u64> {
        None
    }

    /// Waits for queued device work and hands memory that the allocator keeps for reuse but no
    /// value holds back to the driver, so that [`DeviceProbe::memory`] reads what is live. The
    /// engine calls it after each node and after moving values off the device. Returns whether
    /// anything was done; the default does nothing.
    fn release(&self) -> bool {
        false
    }
}

impl<F> DeviceProbe for F
where
    F: Fn() -> Option<(u64, u64)> + Send + Sync,
{
    fn memory(&self) -> Option<DeviceMemory> {
        self().map(|(free, total)| DeviceMemory { free, total })
    }
}

/// Host memory: this process and the machine. Fields are `None` where the platform does not say
/// (everything but Linux, for now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostMemory {
    /// Resident set size of this process (`VmRSS` in `/proc/self/status`).
    pub process_rss: Option<u64>,
    /// Memory the system can give out without swapping (`MemAvailable` in `/proc/meminfo`).
    pub available: Option<u64>,
    /// Physical memory (`MemTotal`).
    pub total: Option<u64>,
}

impl HostMemory {
    /// Reads `/proc` (Linux); all `None` elsewhere or when unreadable.
    pub fn read() -> HostMemory {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        HostMemory {
            process_rss: kib_field(&status, "VmRSS:"),
            available: kib_field(&meminfo, "MemAvailable:"),
            total: kib_field(&meminfo, "MemTotal:"),
        }
    }
}

/// The value of a `Name:   1234 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Measures the most device memory in use while a node runs.
///
/// Where the probe keeps its own high-water mark ([`DeviceProbe::reset_peak`]) that is exact.
/// Otherwise a background thread reads the probe every `period` (2 ms in the engine) and keeps
/// the lowest free memory seen, together with the readings taken just before and just after the
/// node. Sampling can miss a spike shorter than the period; the engine therefore also learns
/// from out-of-memory failures (see `docs/ARCHITECTURE.md`, "Device memory").
pub(crate) struct PeakSampler {
    probe: Arc<dyn DeviceProbe>,
    exact: bool,
    before: Option<DeviceMemory>,
    thread: Option<(Arc<AtomicBool>, Arc<AtomicU64>, JoinHandle<()>)>,
}

impl PeakSampler {
    pub(crate) fn start(probe: Arc<dyn DeviceProbe>, period: Duration) -> PeakSampler {
        let before = probe.memory();
        let exact = probe.reset_peak();
        let thread = if exact || before.is_none() {
            None
        } else {
            let stop = Arc::new(AtomicBool::new(false));
            let min_free = Arc::new(AtomicU64::new(u64::MAX));
            let (s, m, p) = (stop.clone(), min_free.clone(), probe.clone());
            std::thread::Builder::new()
                .name("veetance-vram-sampler".into())
                .spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        if let Some(mem) = p.memory() {
                            m.fetch_min(mem.free, Ordering::Relaxed);
                        }
                        std::thread::sleep(period);
                    }
                })
                .ok()
                .map(|handle| (stop, min_free, handle))
        };
        PeakSampler {
            probe,
            exact,
            before,
            thread,
        }
    }

    /// Stops sampling and says what was seen.
    pub(crate) fn finish(mut self) -> SampledPeak {
        let after = self.probe.memory();
        let Some(before) = self.before else {
            return SampledPeak {
                node_peak: None,
                peak_used: after.map(DeviceMemory::used),
            };
        };
        let mut peak_used = after.map_or(before.used(), |a| a.used().max(before.used()));
        if self.exact {
            if let Some(p) = self.probe.peak_used() {
                peak_used = peak_used.max(p);
            }
        } else if let Some((stop, min_free, handle)) = self.thread.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
            let min_free = min_free.load(Ordering::Relaxed);
            if min_free != u64::MAX {
                peak_used = peak_used.max(before.total.saturating_sub(min_free));
            }
        }
        SampledPeak {
            node_peak: Some(peak_used.saturating_sub(before.used())),
            peak_used: Some(peak_used),
        }
    }
}

/// What a [`PeakSampler`] saw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SampledPeak {
    /// The most device bytes in use at any reading minus those in use when the node started:
    /// what the node itself added at its peak (its outputs included).
    pub node_peak: Option<u64>,
    /// The most device bytes in use at any reading (by anyone).
    pub peak_used: Option<u64>,
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        if let Some((stop, _, handle)) = self.thread.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

/// A device pool in plain memory, for tests and benchmarks without a GPU: allocations count
/// against `total` and fail with an "out of memory" error when it is full, like a GPU's. It
/// tracks its high-water mark exactly, so node peaks measured against it are deterministic.
///
/// [`SimulatedDevice::with_pool`] makes it behave like CUDA's stream-ordered allocator: freed
/// bytes stay in a pool, reused by later allocations and counted as used by
/// [`DeviceProbe::memory`] until [`DeviceProbe::release`] trims the pool.
#[derive(Debug)]
pub struct SimulatedDevice {
    total: u64,
    pooled: bool,
    state: Mutex<SimState>,
}

#[derive(Debug, Default)]
struct SimState {
    /// Bytes live allocations hold.
    used: u64,
    /// Freed bytes the pool keeps (pool mode only).
    held: u64,
    /// Most of `used + held` since the last reset.
    peak: u64,
}

impl SimulatedDevice {
    pub fn new(total: u64) -> Arc<SimulatedDevice> {
        Arc::new(SimulatedDevice {
            total,
            pooled: false,
            state: Mutex::new(SimState::default()),
        })
    }

    /// A device whose freed memory stays in a pool until released (see the type's docs).
    pub fn with_pool(total: u64) -> Arc<SimulatedDevice> {
        Arc::new(SimulatedDevice {
            total,
            pooled: true,
            state: Mutex::new(SimState::default()),
        })
    }

    /// Freed bytes the pool holds now.
    pub fn held(&self) -> u64 {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `bytes`, released when the returned allocation is dropped.
    pub fn alloc(self: &Arc<Self>, bytes: u64) -> Result<SimAllocation, String> {
        let mut st = self.lock();
        // The pool's freed bytes are reused first; the driver could give the rest.
        let from_pool = bytes.min(st.held);
        let free = self.total - st.used - st.held;
        if bytes - from_pool > free {
            return Err(format!(
                "simulated device out of memory: cannot allocate {bytes} bytes, {free} of {} free",
                self.total
            ));
        }
        st.held -= from_pool;
        st.used += bytes;
        st.peak = st.peak.max(st.used + st.held);
        Ok(SimAllocation {
            device: self.clone(),
            bytes,
        })
    }

    /// Bytes allocated now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

impl DeviceProbe for SimulatedDevice {
    fn memory(&self) -> Option<DeviceMemory> {
        Some(DeviceMemory {
            free: {
                let st = self.lock();
                self.total - st.used - st.held
            },
            total: self.total,
        })
    }

    fn reset_peak(&self) -> bool {
        let mut st = self.lock();
        st.peak = st.used + st.held;
        true
    }

    fn release(&self) -> bool {
        self.lock().held = 0;
        self.pooled
    }

    fn peak_used(&self) -> Option<u64> {
        Some(self.lock().peak)
    }
}

/// Bytes held on a [`SimulatedDevice`]; freed on drop.
#[derive(Debug)]
pub struct SimAllocation {
    device: Arc<SimulatedDevice>,
    bytes: u64,
}

impl SimAllocation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for SimAllocation {
    fn drop(&mut self) {
        let mut st = self.device.lock();
        st.used = st.used.saturating_sub(self.bytes);
        if self.device.pooled {
            st.held += self.bytes;
        }
    }
}

/// Whether an error message is a device out-of-memory error: candle's CUDA errors carry
/// `CUDA_ERROR_OUT_OF_MEMORY` (driver) or "out of memory" (runtime, cuBLAS, the simulated
/// device); Metal's say "out of memory" too.
pub fn is_out_of_memory_message(message: &str) -> bool {
    message.contains("CUDA_ERROR_OUT_OF_MEMORY")
        || message.to_ascii_lowercase().contains("out of memory")
}

/// Bytes for people: `1.50 GiB`, `512 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse_in_bytes() {
        let text = "MemTotal:       32780588 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(kib_field(text, "MemTotal:"), Some(32780588 * 1024));
        assert_eq!(kib_field(text, "MemAvailable:"), Some(20000000 * 1024));
        assert_eq!(kib_field(text, "VmRSS:"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn host_memory_is_read_on_linux() {
        let mem = HostMemory::read();
        let (rss, avail, total) = (
            mem.process_rss.unwrap(),
            mem.available.unwrap(),
            mem.total.unwrap(),
        );
        assert!(
            rss > 0 && avail > 0 && avail <= total && rss < total,
            "{mem:?}"
        );
    }

    #[test]
    fn simulated_device_fails_when_full_and_frees_on_drop() {
        let dev = SimulatedDevice::new(100);
        let a = dev.alloc(60).unwrap();
        let err = dev.alloc(50).unwrap_err();
        assert!(is_out_of_memory_message(&err), "{err}");
        assert_eq!(dev.memory().unwrap().free, 40);
        drop(a);
        assert_eq!(dev.used(), 0);
        assert_eq!(dev.peak_used(), Some(60));
    }

    #[test]
    fn a_pooled_device_holds_freed_bytes_until_released() {
        let dev = SimulatedDevice::with_pool(100);
        drop(dev.alloc(60).unwrap());
        assert_eq!((dev.used(), dev.held()), (0, 60));
        assert_eq!(
            dev.memory().unwrap().free,
            40,
            "the pool's bytes read as used"
        );
        let reused = dev.alloc(80).unwrap(); // 60 from the pool, 20 new
        assert_eq!((dev.used(), dev.held()), (80, 0));
        drop(reused);
        assert!(dev.release());
        assert_eq!(dev.memory().unwrap().free, 100);
        assert!(
            !SimulatedDevice::new(10).release(),
            "nothing to release without a pool"
        );
    }

    #[test]
    fn oom_messages_are_recognised() {
        assert!(is_out_of_memory_message(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        ));
        assert!(is_out_of_memory_message("CUDA out of memory."));
        assert!(!is_out_of_memory_message("shape mismatch in matmul"));
    }

    #[test]
    fn sampler_catches_a_peak_held_for_a_while() {
        // A probe without a high-water mark of its own: the sampler thread must see the spike.
        let used = Arc::new(AtomicU64::new(100));
        let u = used.clone();
        let probe: Arc<dyn DeviceProbe> =
            Arc::new(move || Some((1000 - u.load(Ordering::SeqCst), 1000)));
        let sampler = PeakSampler::start(probe, Duration::from_millis(1));
        used.store(700, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        used.store(150, Ordering::SeqCst);
        let seen = sampler.finish();
        assert_eq!(seen.node_peak, Some(600));
        assert_eq!(seen.peak_used, Some(700));
    }
}
