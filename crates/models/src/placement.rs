//! Where a model's weights live, and the pieces every model uses to move them.
//!
//! Each model walks its own tensors (`map_tensors`: every weight passed once through a function that
//! returns its replacement), so a move to another device is one walk with `Tensor::to_device`, and
//! the same walk counts bytes per device. Streaming models keep some blocks in host memory and
//! copy each one to the compute device as it comes up ([`crate::staging::stream_parts`], which on
//! CUDA copies the next block on a stream of its own while the current one computes); the copy is
//! dropped when the block is done, so the device holds at most two streamed blocks at a time.
//! See docs/models.md, "Streaming".

use candle_core::{Device, Tensor};

type CResult<T> = candle_core::Result<T>;

/// The function a tensor walk applies to every weight.
pub type TensorFn<'a> = &'a mut dyn FnMut(&Tensor) -> CResult<Tensor>;

/// Bytes of weights per memory tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightBytes {
    /// Bytes in host memory (CPU tensors).
    pub host: u64,
    /// Bytes on an accelerator.
    pub device: u64,
}

impl WeightBytes {
    pub fn total(self) -> u64 {
        self.host + self.device
    }

    /// Counts `t` in its tier.
    pub fn add(&mut self, t: &Tensor) {
        let bytes = tensor_bytes(t);
        if t.device().is_cpu() {
            self.host += bytes;
        } else {
            self.device += bytes;
        }
    }
}

/// Bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// A part of a model (a transformer block, a decoder layer) that can be copied to a device whole.
pub trait Movable: Clone {
    /// This part with every tensor replaced by `f(tensor)`.
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self>;
    /// One of its weights, to tell where the part lives.
    fn probe(&self) -> &Tensor;
}

/// `t` on `device`: `Tensor::to_device`, except that a GPU tensor bound for host memory takes
/// [`crate::staging::to_host`] (page-locked bounce buffers, several times faster).
pub fn move_tensor(t: &Tensor, device: &Device) -> CResult<Tensor> {
    if device.is_cpu() && t.device().is_cuda() {
        crate::staging::to_host(t)
    } else {
        t.to_device(device)
    }
}

/// How many of `sizes`, from the first, fit in `left` bytes one after another (stopping at the
/// first that does not); takes what they use from `left`.
pub fn leading_that_fit(sizes: &[u64], left: &mut u64) -> usize {
    sizes
        .iter()
        .take_while(|&&b| {
            let fits = b <= *left;
            if fits {
                *left -= b;
            }
            fits
        })
        .count()
}

/// A host tensor of `dtype` and `shape` whose element bytes `fill` writes. The buffer starts as
/// zero pages the OS maps on first touch (`alloc_zeroed`), so `fill` pays for touching it once.
#[allow(unsafe_code)] // a zeroed allocation viewed as bytes; see SAFETY
pub(crate) fn host_tensor(
    dtype: candle_core::DType,
    shape: &candle_core::Shape,
    fill: impl FnOnce(&mut [u8]) -> CResult<()>,
) -> CResult<Tensor> {
    fn make<T: candle_core::WithDType>(
        n: usize,
        shape: &candle_core::Shape,
        fill: impl FnOnce(&mut [u8]) -> CResult<()>,
    ) -> CResult<Tensor> {
        let mut v: Vec<T> = if n == 0 || std::mem::size_of::<T>() == 0 {
            Vec::new()
        } else {
            let layout = std::alloc::Layout::array::<T>(n)
                .map_err(|e| candle_core::Error::Msg(format!("a {n}-element tensor: {e}")))?;
            // SAFETY: a non-zero-sized layout.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            // SAFETY: allocated by the global allocator with `T`'s array layout for `n`; all-zero
            // bits are a valid value of every element type used here (numbers).
            unsafe { Vec::from_raw_parts(ptr, n, n) }
        };
        let len = v.len() * std::mem::size_of::<T>();
        // SAFETY: the elements are initialised plain numbers; bytes have no alignment needs.
        let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, len) };
        fill(bytes)?;
        Tensor::from_vec(v, shape.clone(), &Device::Cpu)
    }
    let n = shape.elem_count();
    use candle_core::DType as D;
    match dtype {
        D::BF16 => make::<half::bf16>(n, shape, fill),
        D::F16 => make::<half::f16>(n, shape, fill),
        D::F32 => make::<f32>(n, shape, fill),
        D::F64 => make::<f64>(n, shape, fill),
        D::U8 => make::<u8>(n, shape, fill),
        D::U32 => make::<u32>(n, shape, fill),
        D::I64 => make::<i64>(n, shape, fill),
        D::F8E4M3 => make::<float8::F8E4M3>(n, shape, fill),
        d => candle_core::bail!("a {d:?} tensor in host memory is not supported here"),
    }
}

/// Copies `src` into `dst` with up to 8 threads (which also share the page faults of a fresh
/// destination and of a memory-mapped source).
pub(crate) fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "parallel_copy needs equal lengths");
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let part = dst.len().div_ceil(threads).max(1 << 20);
    if dst.len() <= part {
        dst.copy_from_slice(src);
        return;
    }
    std::thread::scope(|scope| {
        for (d, s) in dst.chunks_mut(part).zip(src.chunks(part)) {
            scope.spawn(move || d.copy_from_slice(s));
        }
    });
}

/// The text of an error that says the device ran out of memory (candle's CUDA and Metal errors).
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    message.contains("CUDA_ERROR_OUT_OF_MEMORY") || lower.contains("out of memory")
}
