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

/// Waits for `device`'s queued work, then hands the memory CUDA's stream-ordered pool holds for
/// freed tensors back to the driver (`cuMemPoolTrimTo(pool, 0)`), so that [`memory_info`] reads
/// what live tensors use rather than the pool's high-water mark. The pool keeps freed blocks for
/// reuse until it is trimmed, so without this a node's transient peak stays "used" in the
/// driver's eyes and in other processes' after the node ends. Returns whether it trimmed; a no-op
/// (false) off CUDA.
pub fn release_unused(device: &Device) -> bool {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => trim_pool(cuda).is_ok(),
        _ => false,
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // two driver calls on a bound context, with their results checked
fn trim_pool(cuda: &candle_core::CudaDevice) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let ctx = cuda.cuda_stream().context().clone();
    ctx.synchronize().map_err(|e| e.to_string())?;
    ctx.bind_to_thread().map_err(|e| e.to_string())?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer; the device handle comes from a live context.
    let status = unsafe { sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) };
    if status != sys::CUresult::CUDA_SUCCESS || pool.is_null() {
        return Err(format!("cuDeviceGetMemPool: {status:?}"));
    }
    // SAFETY: `pool` is the device's current pool, just returned by the driver.
    let status = unsafe { sys::cuMemPoolTrimTo(pool, 0) };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuMemPoolTrimTo: {status:?}"));
    }
    Ok(())
}

/// A probe over the first CUDA GPU: a closure giving its `(free, total)` bytes, for the
/// engine's `with_device_probe`. `None` without the `cuda` feature, without a GPU, or when the
/// driver does not answer.
pub fn cuda_memory_probe() -> Option<CudaProbe> {
    let device = Device::new_cuda(0).ok()?;
    memory_info(&device)?;
    Some(CudaProbe { device })
}

/// The first CUDA GPU, as the engine's device probe sees it: driver readings, and
/// [`release_unused`] between nodes.
pub struct CudaProbe {
    device: Device,
}

impl CudaProbe {
    /// `(free, total)` bytes now.
    pub fn memory(&self) -> Option<(u64, u64)> {
        memory_info(&self.device)
    }

    /// See [`release_unused`].
    pub fn release(&self) -> bool {
        release_unused(&self.device)
    }
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
