//! Veetance's model code: FLUX.2 [klein] on candle.
//!
//! * [`flux2`]: the transformer (klein-4B / klein-9B), BFL and diffusers layouts.
//! * [`qwen3`]: the Qwen3 text encoder with the klein prompt template.
//! * [`vae`]: the FLUX.2 autoencoder (decoder and encoder).
//! * [`sampling`]: schedule, packing, position ids, seeded noise, the Euler loop with CFG.
//! * [`torch_rng`]: PyTorch's CPU `manual_seed` + `randn` bit for bit, and ComfyUI's noise.
//! * [`preview`]: latent-to-RGB previews for every step.
//! * [`weights`]: memory-mapped, validated safetensors loading.
//! * [`gguf`]: memory-mapped, validated GGUF files (ComfyUI-GGUF / llama.cpp).
//! * [`qlinear`]: linear layers kept dense, GGUF-quantized or fp8.
//! * [`device`]: device memory as the driver reports it (free, total).
//! * [`placement`]: moving weights between devices, streaming blocks, out-of-memory errors.
//! * [`staging`]: streamed blocks copied to the GPU one ahead of use, from page-locked memory.
//! * [`profile`]: opt-in stage timing with CUDA events.
//!
//! Our CUDA kernels live in `veetance-kernels` (crates/kernels); this crate calls them where a
//! tensor qualifies and keeps candle's ops as the reference path.
//!
//! The crate knows nothing of graphs; nodes call it. Errors: one [`Error`] enum.

pub mod device;

/// Whether cuDNN's attention and convolutions are in use here (its version), or why not.
pub use veetance_kernels::cudnn_status;
pub mod error;
pub mod flux2;
pub mod gguf;
pub mod lora;
pub mod placement;
pub mod preview;
pub mod profile;
pub mod qlinear;
pub mod qwen3;
pub mod sampling;
pub mod staging;
pub mod torch_rng;
pub mod vae;
pub mod weights;

pub use error::{Error, Result};
