//! Device memory in use, sampled on a background thread: the driver's `total - free` (what
//! `nvidia-smi` shows as used, other processes included), so the peak covers every allocation of
//! the process, candle's and the driver's alike.
//!
//! A private helper for now: a shared `veetance_models::device::memory_info` is being added
//! elsewhere; this module should switch to it when it lands.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;

/// `(free, total)` bytes of a device, or `None` where the device has no such query (the CPU).
type Probe = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

/// The driver's memory query for `device`, bound to its CUDA context (so it works from any thread).
fn probe(device: &Device) -> Option<Probe> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let ctx = dev.cuda_stream().context().clone();
            Some(Box::new(move || {
                ctx.mem_get_info()
                    .ok()
                    .map(|(free, total)| (free as u64, total as u64))
            }))
        }
        _ => None,
    }
}

/// Samples the used device memory every `interval` until dropped, keeping the peak.
pub struct MemorySampler {
    probe: Arc<Probe>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
    /// Device memory in bytes.
    pub total: u64,
    /// Used bytes when sampling started (before any model was loaded).
    pub baseline: u64,
}

impl MemorySampler {
    /// Starts sampling, or `None` where the device cannot be queried (the CPU).
    pub fn start(device: &Device, interval: Duration) -> Option<Self> {
        let probe = Arc::new(probe(device)?);
        let (free, total) = probe()?;
        let baseline = total - free;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let handle = {
            let (probe, stop, peak) = (probe.clone(), stop.clone(), peak.clone());
            std::thread::Builder::new()
                .name("bench-memory".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some((free, total)) = probe() {
                            peak.fetch_max(total - free, Ordering::Relaxed);
                        }
                        std::thread::sleep(interval);
                    }
                })
                .ok()?
        };
        Some(MemorySampler {
            probe,
            stop,
            peak,
            handle: Some(handle),
            total,
            baseline,
        })
    }

    fn used_now(&self) -> Option<u64> {
        (self.probe)().map(|(free, total)| total - free)
    }

    /// The peak used bytes since the last call (or since the start), and restarts the peak from
    /// what is in use now, so that each phase of the bench gets its own peak.
    pub fn take_peak(&self) -> u64 {
        if let Some(now) = self.used_now() {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        let now = self.used_now().unwrap_or(0);
        self.peak.swap(now, Ordering::Relaxed)
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_device_memory_query() {
        assert!(probe(&Device::Cpu).is_none());
        assert!(MemorySampler::start(&Device::Cpu, Duration::from_millis(5)).is_none());
    }
}
