//! Opt-in stage timing on the GPU: [`mark`] records a CUDA event on the device's stream when
//! profiling is on ([`set_enabled`]); [`take`] waits for the work and returns the time between
//! consecutive marks, each charged to the later mark's name. Off (the default), a mark is one
//! relaxed atomic load. The fused FLUX.2 forward is marked stage by stage; the `gpu_forward`
//! example's `profile` mode prints the totals.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Result};

static ON: AtomicBool = AtomicBool::new(false);

#[cfg(feature = "cuda")]
static MARKS: std::sync::Mutex<
    Vec<(
        &'static str,
        candle_core::cuda_backend::cudarc::driver::CudaEvent,
    )>,
> = std::sync::Mutex::new(Vec::new());

/// Turns profiling on or off (off drops the marks recorded so far).
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
    #[cfg(feature = "cuda")]
    if !on {
        MARKS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Records the end of stage `name` on `dev`'s stream (CUDA devices, profiling on; else nothing).
#[inline]
pub fn mark(dev: &Device, name: &'static str) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        if let Ok(ev) = d
            .cuda_stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        {
            MARKS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name, ev));
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (dev, name);
}

/// Waits for the marked work and returns `(name, ms since the previous mark)` for every mark but
/// the first, clearing the list.
pub fn take() -> Result<Vec<(&'static str, f64)>> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::WrapErr;
        let marks = std::mem::take(&mut *MARKS.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(last) = marks.last() else {
            return Ok(Vec::new());
        };
        last.1.synchronize().w()?;
        let mut out = Vec::with_capacity(marks.len());
        for pair in marks.windows(2) {
            let ms = pair[0].1.elapsed_ms(&pair[1].1).w()?;
            out.push((pair[1].0, f64::from(ms)));
        }
        Ok(out)
    }
    #[cfg(not(feature = "cuda"))]
    Ok(Vec::new())
}
