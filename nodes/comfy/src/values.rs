//! ComfyUI's light sampling values: NOISE, SAMPLER and SIGMAS. They are a few bytes in host
//! memory and flow through the graph and the cache like any other value; the heavy one, GUIDER,
//! is `veetance_nodes_flux2::values::Guider` (it holds the model's handle and moves with it).

use std::any::Any;

use veetance_core::{MemBytes, Payload};

/// ComfyUI's NOISE: the seed `RandomNoise` draws ComfyUI's noise from, or `None` for
/// `DisableNoise` (zeros).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Noise {
    pub seed: Option<u64>,
}

impl Payload for Noise {
    fn mem_bytes(&self) -> MemBytes {
        MemBytes::ZERO
    }
    fn content_hash(&self) -> Option<[u8; 32]> {
        let mut h = blake3::Hasher::new();
        h.update(b"comfy-noise");
        match self.seed {
            Some(seed) => h.update(&[1]).update(&seed.to_le_bytes()),
            None => h.update(&[0]),
        };
        Some(*h.finalize().as_bytes())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// ComfyUI's SAMPLER: the step rule `KSamplerSelect` chose, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerChoice {
    pub name: String,
}

impl Payload for SamplerChoice {
    fn mem_bytes(&self) -> MemBytes {
        MemBytes::host(self.name.len() as u64)
    }
    fn content_hash(&self) -> Option<[u8; 32]> {
        let mut h = blake3::Hasher::new();
        h.update(b"comfy-sampler").update(self.name.as_bytes());
        Some(*h.finalize().as_bytes())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// ComfyUI's SIGMAS: a noise schedule, from the first sigma down to the last (0 for a full run).
#[derive(Clone, Debug, PartialEq)]
pub struct Sigmas {
    pub sigmas: Vec<f32>,
}

impl Payload for Sigmas {
    fn mem_bytes(&self) -> MemBytes {
        MemBytes::host(std::mem::size_of_val(self.sigmas.as_slice()) as u64)
    }
    fn content_hash(&self) -> Option<[u8; 32]> {
        let mut h = blake3::Hasher::new();
        h.update(b"comfy-sigmas");
        for s in &self.sigmas {
            h.update(&s.to_bits().to_le_bytes());
        }
        Some(*h.finalize().as_bytes())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
