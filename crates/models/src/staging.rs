//! Streaming parts of a model (transformer blocks, decoder layers) from host memory to the GPU with
//! the copy of part `i + 1` overlapping the compute of part `i`.
//!
//! [`stream_parts`] walks a model's parts in order and yields each on the compute device: a part
//! already there is borrowed; a part in host memory is copied. On CUDA the copies run on a copy
//! stream of our own, from page-locked host memory, one part ahead of use:
//!
//! 1. when part `i` is handed out, part `i + 1`'s buffers are allocated on candle's stream (so they
//!    are freed there too, in order after the kernels that read them), the copy stream waits for
//!    that point of candle's stream, and the copies are queued on the copy stream;
//! 2. before part `i + 1` is handed out, candle's stream waits for the copy stream's event.
//!
//! So the GPU copies part `i + 1` while it computes part `i`, and the device holds at most two
//! streamed parts at a time (the plans reserve room for two). The values are the host values, so
//! results are bit-identical to a resident model's.
//!
//! Page-locked memory: a host tensor of at least [`REGISTER_MIN`] bytes is page-locked where it
//! lies (`cuMemHostRegister`); a smaller one (a norm weight, a bias) is copied once into a
//! page-locked buffer of its own. A [`HostStage`], shared by the clones of one model, remembers
//! what it locked (holding a reference to each tensor, so the memory cannot be freed while locked
//! or reused under the same address) and unlocks it when the model goes. Without locked memory the
//! driver stages each copy synchronously and the copy would not overlap compute.
//!
//! Off CUDA (the CPU, Metal, builds without the feature) parts are copied with
//! `Tensor::to_device` when handed out, as before.
//!
//! candle queues work on the calling thread's default stream (`CU_STREAM_PER_THREAD`), so the
//! events are recorded and waited for on the thread that runs the forward pass; a forward must
//! not hand its parts to another thread. Placements of one loaded model share its stage, so
//! later runs find their blocks locked already; blocks a later plan keeps on the device stay
//! locked (in host memory the model holds anyway) until the model goes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use crate::placement::Movable;

type CResult<T> = candle_core::Result<T>;

/// Host tensors at least this large are page-locked in place; smaller ones are copied into a
/// page-locked buffer (page-locking a few bytes would lock the page they share with other data).
pub const REGISTER_MIN: usize = 1 << 20;

/// What a model's streamed parts keep page-locked, and the CUDA copy stream that moves them.
/// Cloning shares it; a model rebuilt from other tensors starts a new one.
#[derive(Clone, Default)]
pub struct HostStage {
    inner: Arc<Mutex<Option<imp::Stage>>>,
}

impl std::fmt::Debug for HostStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = self.stats();
        f.debug_struct("HostStage")
            .field("locked_bytes", &stats.locked_bytes)
            .field("staged_bytes", &stats.staged_bytes)
            .finish()
    }
}

/// How much host memory a [`HostStage`] holds page-locked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Bytes of host tensors page-locked where they lie.
    pub locked_bytes: u64,
    /// Bytes copied into page-locked buffers of their own (small tensors).
    pub staged_bytes: u64,
    /// Bytes copied from unlocked memory (locking failed); these copies do not overlap compute.
    pub unlocked_bytes: u64,
}

impl HostStage {
    /// Page-locked bytes so far (nothing until a part has streamed on CUDA).
    pub fn stats(&self) -> StageStats {
        self.inner
            .lock()
            .map(|g| g.as_ref().map(imp::Stage::stats).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// `t` in host memory. From a CUDA GPU, a tensor of at least [`REGISTER_MIN`] bytes is copied
/// through two page-locked bounce buffers on the copy stream, the copy out of one (by several
/// threads, which also pay for first touching the fresh destination pages) overlapping the DMA
/// into the other: several times faster than candle's copy into unlocked memory (about 1.1 GB/s
/// measured for a whole model on the H200 machine). Other tensors: `Tensor::to_device`.
pub fn to_host(t: &Tensor) -> CResult<Tensor> {
    match imp::to_host(t) {
        Ok(Some(moved)) => Ok(moved),
        // No bounce buffers (page-locked memory refused, ...): candle's copy still works.
        Ok(None) | Err(_) => t.to_device(&Device::Cpu),
    }
}

/// `parts` in order, each on `device` (see the module docs). A part's device copy lives as long
/// as the yielded value; drop it before asking for the next one, or the device holds three.
pub fn stream_parts<'p, P: Movable>(
    parts: &'p [P],
    device: &Device,
    stage: &'p HostStage,
) -> PartStream<'p, P> {
    PartStream {
        parts,
        device: device.clone(),
        stage,
        next: 0,
        ahead: None,
    }
}

/// The iterator of [`stream_parts`].
pub struct PartStream<'p, P: Movable> {
    parts: &'p [P],
    device: Device,
    stage: &'p HostStage,
    next: usize,
    /// The part after the one last handed out, with its copies queued.
    ahead: Option<Fetched<'p, P>>,
}

struct Fetched<'p, P: Clone> {
    part: Cow<'p, P>,
    /// Set when the copies run on the copy stream: candle's stream must wait for it.
    ready: Option<imp::Ready>,
}

impl<'p, P: Movable> PartStream<'p, P> {
    fn fetch(&self, i: usize) -> CResult<Fetched<'p, P>> {
        let part = &self.parts[i];
        if part.probe().device().same_device(&self.device) {
            return Ok(Fetched {
                part: Cow::Borrowed(part),
                ready: None,
            });
        }
        if let Some((copy, ready)) = imp::upload(self.stage, part, &self.device)? {
            return Ok(Fetched {
                part: Cow::Owned(copy),
                ready: Some(ready),
            });
        }
        Ok(Fetched {
            part: Cow::Owned(part.map_tensors(&mut |t| t.to_device(&self.device))?),
            ready: None,
        })
    }
}

impl<'p, P: Movable> Iterator for PartStream<'p, P> {
    type Item = CResult<Cow<'p, P>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.parts.len() {
            return None;
        }
        let current = match self.ahead.take() {
            Some(f) => f,
            None => match self.fetch(self.next) {
                Ok(f) => f,
                Err(e) => return Some(Err(e)),
            },
        };
        self.next += 1;
        // Queue the next part's copies before this part's compute is queued: the copy stream
        // starts on it as soon as candle's stream has passed the allocation.
        if self.next < self.parts.len() {
            match self.fetch(self.next) {
                Ok(f) => self.ahead = Some(f),
                Err(e) => {
                    return Some(current.wait().and(Err(e)));
                }
            }
        }
        Some(current.wait())
    }
}

impl<'p, P: Clone> Fetched<'p, P> {
    /// The part, once candle's stream is ordered after its copies.
    fn wait(self) -> CResult<Cow<'p, P>> {
        if let Some(ready) = self.ready {
            ready.wait()?;
        }
        Ok(self.part)
    }
}

impl<P: Movable> Drop for PartStream<'_, P> {
    fn drop(&mut self) {
        // A part whose copies are queued must not be freed (on candle's stream) before the copy
        // stream has written it.
        if let Some(ahead) = self.ahead.take() {
            let _ = ahead.wait();
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;

    pub struct Stage;
    impl Stage {
        pub fn stats(&self) -> StageStats {
            StageStats::default()
        }
    }

    pub struct Ready;
    impl Ready {
        pub fn wait(self) -> CResult<()> {
            Ok(())
        }
    }

    pub fn upload<P: Movable>(
        _stage: &HostStage,
        _part: &P,
        _device: &Device,
    ) -> CResult<Option<(P, Ready)>> {
        Ok(None)
    }

    pub fn to_host(_t: &Tensor) -> CResult<Option<Tensor>> {
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // driver calls (streams, events, page-locking, async copies); see each SAFETY
mod imp {
    use std::collections::HashMap;
    use std::ffi::c_void;

    use candle_core::backend::{BackendDevice, BackendStorage};
    use candle_core::cuda_backend::cudarc::driver::{
        sys, CudaContext, CudaEvent, CudaStream, PinnedHostSlice,
    };
    use candle_core::cuda_backend::{CudaStorage, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{CpuStorage, Storage};

    use super::*;

    fn check(status: sys::CUresult, what: &str) -> CResult<()> {
        if status == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            candle_core::bail!("{what}: {status:?}")
        }
    }

    /// A non-blocking stream of our own on `ctx` (bound to this thread), for copies.
    fn copy_stream(ctx: &CudaContext) -> CResult<sys::CUstream> {
        ctx.bind_to_thread().w()?;
        let mut stream: sys::CUstream = std::ptr::null_mut();
        // SAFETY: a valid out-pointer, on the bound context.
        check(
            unsafe {
                sys::cuStreamCreate(
                    &mut stream,
                    sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                )
            },
            "creating the copy stream",
        )?;
        Ok(stream)
    }

    /// A host tensor's page-locked source.
    enum Pin {
        /// The tensor's own memory, registered with the driver.
        Locked { ptr: usize },
        /// A page-locked copy.
        Staged(PinnedHostSlice<u8>),
        /// Locking failed: copies read the tensor's memory unlocked.
        Unlocked { ptr: usize },
    }

    struct Entry {
        pin: Pin,
        bytes: usize,
        /// Keeps the memory alive (and its address unreused) while it is registered or copied.
        _tensor: Tensor,
    }

    pub struct Stage {
        ctx: Arc<CudaContext>,
        /// Our copy stream, a raw non-blocking stream: cudarc's own streams would switch every
        /// allocation in the process to cross-stream event tracking.
        copy: sys::CUstream,
        /// By `(address, bytes)`: a longer view of the same memory gets an entry of its own, so
        /// no entry is released while copies queued from it may still read it.
        pins: HashMap<(usize, usize), Entry>,
    }

    // SAFETY: the raw stream handle is only used under the stage's mutex, and CUDA streams may be
    // used from any thread; the pinned slices and tensors are Send + Sync.
    unsafe impl Send for Stage {}

    impl Stage {
        fn new(ctx: Arc<CudaContext>) -> CResult<Self> {
            Ok(Self {
                copy: copy_stream(&ctx)?,
                ctx,
                pins: HashMap::new(),
            })
        }

        pub fn stats(&self) -> StageStats {
            let mut s = StageStats::default();
            for e in self.pins.values() {
                let b = e.bytes as u64;
                match e.pin {
                    Pin::Locked { .. } => s.locked_bytes += b,
                    Pin::Staged(_) => s.staged_bytes += b,
                    Pin::Unlocked { .. } => s.unlocked_bytes += b,
                }
            }
            s
        }

        /// The page-locked source of `t`'s elements (contiguous, at `ptr`, `bytes` long).
        fn source(&mut self, t: &Tensor, ptr: usize, bytes: usize) -> CResult<*const c_void> {
            if let Some(e) = self.pins.get(&(ptr, bytes)) {
                return Ok(e.source());
            }
            let pin = if bytes >= REGISTER_MIN {
                // SAFETY: `ptr..ptr + bytes` is the tensor's live, immutable element buffer, kept
                // alive by the entry until it is unregistered in `Drop`.
                let status = unsafe { sys::cuMemHostRegister_v2(ptr as *mut c_void, bytes, 0) };
                if status == sys::CUresult::CUDA_SUCCESS {
                    Pin::Locked { ptr }
                } else {
                    Pin::Unlocked { ptr }
                }
            } else {
                // SAFETY: filled whole below before any copy reads it.
                let mut buf = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }.w()?;
                // SAFETY: `ptr..ptr + bytes` is the tensor's element buffer (see `host_bytes`).
                let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, bytes) };
                buf.as_mut_slice().w()?.copy_from_slice(src);
                Pin::Staged(buf)
            };
            let entry = Entry {
                pin,
                bytes,
                _tensor: t.clone(),
            };
            let source = entry.source();
            self.pins.insert((ptr, bytes), entry);
            Ok(source)
        }
    }

    impl Entry {
        fn source(&self) -> *const c_void {
            match &self.pin {
                Pin::Locked { ptr } | Pin::Unlocked { ptr } => *ptr as *const c_void,
                // The buffer is only written when it is made, so no pending work to wait for.
                Pin::Staged(buf) => buf.as_ptr().unwrap_or(std::ptr::null()) as *const c_void,
            }
        }
    }

    impl Drop for Stage {
        fn drop(&mut self) {
            if self.ctx.bind_to_thread().is_err() {
                // Cannot wait for copies or unlock: keep the memory (and its registration)
                // rather than free pages a copy may still read.
                for (_, e) in self.pins.drain() {
                    std::mem::forget(e);
                }
                return;
            }
            // Every copy that may read locked memory finishes before it is unlocked: ours, and
            // another model's stage copying from the same (shared) host tensors.
            let _ = self.ctx.synchronize();
            for (_, e) in self.pins.drain() {
                if let Pin::Locked { ptr } = e.pin {
                    // SAFETY: registered by `source` with this address, no copy in flight.
                    unsafe { sys::cuMemHostUnregister(ptr as *mut c_void) };
                }
            }
            // SAFETY: created in `new`, idle.
            unsafe { sys::cuStreamDestroy_v2(self.copy) };
        }
    }

    /// candle's stream must wait for this event (recorded on the copy stream) before the part's
    /// tensors are read.
    pub struct Ready {
        event: CudaEvent,
        candle: Arc<CudaStream>,
    }

    impl Ready {
        /// Orders candle's stream after the copies; if that fails, waits for them on the host,
        /// so the part's buffers can be freed either way.
        pub fn wait(self) -> CResult<()> {
            let ordered = self.candle.wait(&self.event).w();
            if ordered.is_err() {
                let _ = self.event.synchronize();
            }
            ordered
        }
    }

    /// The element buffer of a contiguous CPU tensor: `(address, bytes)`.
    fn host_bytes(storage: &CpuStorage, start: usize, count: usize) -> Option<(usize, usize)> {
        fn at<T>(v: &[T], start: usize, count: usize) -> Option<(usize, usize)> {
            (start + count <= v.len()).then(|| {
                (
                    v[start..].as_ptr() as usize,
                    count * std::mem::size_of::<T>(),
                )
            })
        }
        match storage {
            CpuStorage::BF16(v) => at(v, start, count),
            CpuStorage::F16(v) => at(v, start, count),
            CpuStorage::F32(v) => at(v, start, count),
            CpuStorage::F64(v) => at(v, start, count),
            CpuStorage::U8(v) => at(v, start, count),
            CpuStorage::U32(v) => at(v, start, count),
            CpuStorage::I64(v) => at(v, start, count),
            CpuStorage::F8E4M3(v) => at(v, start, count),
            _ => None,
        }
    }

    /// `part`'s copy on `device` with its copies queued on the stage's copy stream, or `None`
    /// when `device` is not a CUDA GPU (the caller copies the plain way).
    pub fn upload<P: Movable>(
        stage: &HostStage,
        part: &P,
        device: &Device,
    ) -> CResult<Option<(P, Ready)>> {
        let Device::Cuda(dev) = device else {
            return Ok(None);
        };
        let mut guard = stage
            .inner
            .lock()
            .map_err(|_| candle_core::Error::Msg("the host stage's lock is poisoned".into()))?;
        let candle = dev.cuda_stream();
        if guard.is_none() {
            *guard = Some(Stage::new(candle.context().clone())?);
        }
        let st = guard.as_mut().expect("made above");
        if !Arc::ptr_eq(&st.ctx, candle.context()) {
            // This model's stage serves another GPU: copy the plain way.
            return Ok(None);
        }
        st.ctx.bind_to_thread().w()?;
        // Allocate every buffer on candle's stream, then order the copy stream after that point.
        let mut jobs: Vec<(u64, *const c_void, usize)> = Vec::new();
        let copy = part.map_tensors(&mut |t| {
            if !t.device().is_cpu() || !t.is_contiguous() {
                return t.to_device(device);
            }
            let (ptr, bytes) = {
                let (storage, layout) = t.storage_and_layout();
                let Storage::Cpu(cpu) = &*storage else {
                    return t.to_device(device);
                };
                match host_bytes(cpu, layout.start_offset(), t.elem_count()) {
                    Some(pb) => pb,
                    None => return t.to_device(device),
                }
            };
            let src = st.source(t, ptr, bytes)?;
            // SAFETY: filled whole by the copy queued below, before candle reads it (`Ready`).
            let storage = unsafe { dev.alloc_uninit(t.shape(), t.dtype()) }?;
            let Some((dst, _)) = cuda_span(&storage, 0, t.elem_count()) else {
                candle_core::bail!("streaming a {:?} tensor is not supported", t.dtype())
            };
            jobs.push((dst, src, bytes));
            Ok(Tensor::from_storage(
                Storage::Cuda(storage),
                t.shape().clone(),
                BackpropOp::none(),
                false,
            ))
        })?;
        let allocated = st.ctx.new_event(None).w()?;
        allocated.record(&candle).w()?;
        // SAFETY: both handles are live; the copy stream waits for the allocations.
        check(
            unsafe { sys::cuStreamWaitEvent(st.copy, allocated.cu_event(), 0) },
            "ordering the copy stream after the allocations",
        )?;
        let queued = (|| -> CResult<CudaEvent> {
            for &(dst, src, bytes) in &jobs {
                // SAFETY: `dst` is a fresh device buffer of `bytes` bytes that candle frees on
                // its own stream only after `Ready::wait` ordered it behind this copy; `src` is
                // `bytes` of page-locked (or registered, kept-alive) host memory held by the stage.
                check(
                    unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src, bytes, st.copy) },
                    "copying a streamed weight to the GPU",
                )?;
            }
            let done = st.ctx.new_event(None).w()?;
            // SAFETY: both handles are live.
            check(
                unsafe { sys::cuEventRecord(done.cu_event(), st.copy) },
                "recording the copy stream",
            )?;
            Ok(done)
        })();
        match queued {
            Ok(done) => Ok(Some((
                copy,
                Ready {
                    event: done,
                    candle,
                },
            ))),
            Err(e) => {
                // Copies already queued write into `copy`'s buffers, which candle frees on its
                // own stream when `copy` drops: let them finish first.
                // SAFETY: our stream.
                unsafe { sys::cuStreamSynchronize(st.copy) };
                Err(e)
            }
        }
    }

    /// Bytes of one bounce buffer.
    const BOUNCE: usize = 32 << 20;

    /// Two page-locked bounce buffers and a copy stream for [`to_host`], made on first use.
    struct Bounce {
        ctx: Arc<CudaContext>,
        stream: sys::CUstream,
        bufs: [PinnedHostSlice<u8>; 2],
    }

    // SAFETY: used only under the mutex below; CUDA streams may be used from any thread.
    unsafe impl Send for Bounce {}

    impl Drop for Bounce {
        fn drop(&mut self) {
            if self.ctx.bind_to_thread().is_ok() {
                // SAFETY: our stream; nothing may still copy into the buffers when they go.
                unsafe {
                    sys::cuStreamSynchronize(self.stream);
                    sys::cuStreamDestroy_v2(self.stream);
                }
            }
        }
    }

    static BOUNCE_BUFFERS: Mutex<Option<Bounce>> = Mutex::new(None);

    impl Bounce {
        fn new(ctx: Arc<CudaContext>) -> CResult<Self> {
            let stream = copy_stream(&ctx)?;
            // SAFETY: the buffers are only read after a DMA into them completed.
            let a = unsafe { ctx.alloc_pinned_with_flags::<u8>(BOUNCE, 0) }.w()?;
            let b = unsafe { ctx.alloc_pinned_with_flags::<u8>(BOUNCE, 0) }.w()?;
            Ok(Self {
                ctx,
                stream,
                bufs: [a, b],
            })
        }
    }

    /// `(device address, bytes)` of `n` elements from element `start` of a CUDA storage; `None`
    /// for dtypes without a typed slice here or a range past its end.
    fn cuda_span(cs: &CudaStorage, start: usize, n: usize) -> Option<(u64, usize)> {
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        use candle_core::cuda_backend::CudaStorageSlice as S;
        let size = cs.dtype().size_in_bytes();
        macro_rules! at {
            ($v:expr) => {{
                let v = $v;
                if start + n > v.len() {
                    return None;
                }
                let (ptr, _guard) = v.device_ptr(v.stream());
                Some((ptr + (start * size) as u64, n * size))
            }};
        }
        match &cs.slice {
            S::BF16(v) => at!(v),
            S::F16(v) => at!(v),
            S::F32(v) => at!(v),
            S::F64(v) => at!(v),
            S::U8(v) => at!(v),
            S::U32(v) => at!(v),
            S::I64(v) => at!(v),
            S::F8E4M3(v) => at!(v),
            _ => None,
        }
    }

    /// `(device address, bytes)` of a contiguous CUDA tensor's elements.
    fn device_bytes(t: &Tensor) -> Option<(u64, usize)> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else {
            return None;
        };
        cuda_span(cs, layout.start_offset(), t.elem_count())
    }

    pub fn to_host(t: &Tensor) -> CResult<Option<Tensor>> {
        let Device::Cuda(dev) = t.device() else {
            return Ok(None);
        };
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        if bytes < REGISTER_MIN || !t.is_contiguous() {
            return Ok(None);
        }
        let Some((src, len)) = device_bytes(t) else {
            return Ok(None);
        };
        let candle = dev.cuda_stream();
        let mut guard = BOUNCE_BUFFERS
            .lock()
            .map_err(|_| candle_core::Error::Msg("the bounce buffers' lock is poisoned".into()))?;
        let same_ctx = guard
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(&b.ctx, candle.context()));
        if !same_ctx {
            *guard = Some(Bounce::new(candle.context().clone())?);
        }
        let bounce = guard.as_mut().expect("made above");
        bounce.ctx.bind_to_thread().w()?;
        // The copy stream starts after the kernels queued so far (which may still write `t`).
        let written = bounce.ctx.new_event(None).w()?;
        written.record(&candle).w()?;
        // SAFETY: live handles.
        check(
            unsafe { sys::cuStreamWaitEvent(bounce.stream, written.cu_event(), 0) },
            "ordering the copy stream after candle's",
        )?;
        let chunks: Vec<(usize, usize)> = (0..len)
            .step_by(BOUNCE)
            .map(|off| (off, BOUNCE.min(len - off)))
            .collect();
        let done = [
            bounce.ctx.new_event(None).w()?,
            bounce.ctx.new_event(None).w()?,
        ];
        let stream = bounce.stream;
        let bufs: [*mut u8; 2] = [
            bounce.bufs[0].as_mut_ptr().w()?,
            bounce.bufs[1].as_mut_ptr().w()?,
        ];
        let queue = |k: usize| -> CResult<()> {
            let (off, n) = chunks[k];
            // SAFETY: `src + off .. + n` lies in `t`'s buffer (kept alive by `t`); the bounce
            // buffer holds BOUNCE ≥ n bytes and is not read until `done[k % 2]` completes.
            check(
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        bufs[k % 2] as *mut c_void,
                        src + off as u64,
                        n,
                        stream,
                    )
                },
                "copying a tensor out of the GPU",
            )?;
            // SAFETY: live handles.
            check(
                unsafe { sys::cuEventRecord(done[k % 2].cu_event(), stream) },
                "recording the copy stream",
            )
        };
        let moved = crate::placement::host_tensor(t.dtype(), t.shape(), |dst| {
            queue(0)?;
            for k in 0..chunks.len() {
                if k + 1 < chunks.len() {
                    // Buffer (k + 1) % 2 was emptied in step k − 1.
                    queue(k + 1)?;
                }
                done[k % 2].synchronize().w()?;
                let (off, n) = chunks[k];
                // SAFETY: the DMA into this buffer completed (event above); it holds n bytes.
                let from = unsafe { std::slice::from_raw_parts(bufs[k % 2], n) };
                crate::placement::parallel_copy(&mut dst[off..off + n], from);
            }
            Ok(())
        });
        if moved.is_err() {
            // Nothing may still be writing into the bounce buffers when they are reused.
            // SAFETY: our stream.
            unsafe { sys::cuStreamSynchronize(stream) };
        }
        moved.map(Some)
    }
}
