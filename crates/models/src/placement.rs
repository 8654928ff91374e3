//! Where a model's weights live, and the pieces every model uses to move them.
//!
//! Each model walks its own tensors (`map_tensors`: every weight passed once through a function that
//! returns its replacement), so a move to another device is one walk with `Tensor::to_device`, and
//! the same walk counts bytes per device. Streaming models keep some blocks in host memory and
//! copy each one to the compute device as it comes up ([`crate::staging::stream_parts`], which on
//! CUDA copies the next block on a stream of its own while the current one computes); the copy is
//! dropped when the block is done, so the device holds at most two streamed blocks at a time.
//! See docs/models.md, "Streaming".

use candle_core::Tensor;

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
pub fn move_tensor(t: &Tensor, device: &candle_core::Device) -> CResult<Tensor> {
    if device.is_cpu() && t.device().is_cuda() {
        crate::staging::to_host(t)
    } else {
        t.to_device(device)
    }
}

/// The text of an error that says the device ran out of memory (candle's CUDA and Metal errors).
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    message.contains("CUDA_ERROR_OUT_OF_MEMORY") || lower.contains("out of memory")
}
