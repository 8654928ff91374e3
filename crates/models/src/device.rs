//! Device memory as the driver reports it, for the engine's telemetry and scheduling.
//!
//! The engine (which has no GPU code) reads it through a probe closure that a front end builds
//! over [`memory_info`].

use candle_core::Device;

/// Free and total bytes of `device`'s memory, from the CUDA driver (`cuMemGetInfo`, made current
/// on the device's own context first, so it is right from any thread). `None` on the CPU, on
/// Metal, in builds without the `cuda` feature, and when the driver call fails.
///
/// "Free" is device-wide: other processes' allocations count as used. Memory that candle freed
/// into CUDA's stream-ordered pool counts as used until the stream synchronizes (the process
/// can still reuse it), so a reading right after a large free can be low.
pub fn memory_info(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            Some((free as u64, total as u64))
        }
        _ => None,
    }
}

/// A probe over the first CUDA GPU: a closure giving its `(free, total)` bytes, for the
/// engine's `with_device_probe`. `None` without the `cuda` feature, without a GPU, or when the
/// driver does not answer.
pub fn cuda_memory_probe() -> Option<impl Fn() -> Option<(u64, u64)> + Send + Sync + 'static> {
    let device = Device::new_cuda(0).ok()?;
    memory_info(&device)?;
    Some(move || memory_info(&device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_has_no_device_memory() {
        assert_eq!(memory_info(&Device::Cpu), None);
    }

    #[test]
    #[cfg(not(feature = "cuda"))]
    fn builds_without_cuda_have_no_probe() {
        assert!(cuda_memory_probe().is_none());
    }
}
