//! FLUX.2 transformer configuration: diffusers' `config.json` field names, klein presets.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Hyper-parameters of a FLUX.2 transformer (`Flux2Transformer2DModel`'s `config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Channels of a packed latent token (128).
    pub in_channels: usize,
    /// Output channels; `None` means `in_channels`.
    pub out_channels: Option<usize>,
    /// Double-stream blocks (`depth`).
    pub num_layers: usize,
    /// Single-stream blocks (`depth_single_blocks`).
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the text-encoder output (3 x the Qwen3 hidden size).
    pub joint_attention_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    pub timestep_guidance_channels: usize,
    pub mlp_ratio: f64,
    /// RoPE dimensions per position axis (t, h, w, l); they sum to the head dim.
    pub axes_dims_rope: Vec<usize>,
    pub rope_theta: f64,
    pub eps: f64,
    /// FLUX.2 [dev] has a guidance embedding; klein has none, and it is not supported here.
    pub guidance_embeds: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self::klein_4b()
    }
}

impl Config {
    /// FLUX.2 [klein] 4B (base and distilled share it).
    pub fn klein_4b() -> Self {
        Self {
            in_channels: 128,
            out_channels: None,
            num_layers: 5,
            num_single_layers: 20,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 7680,
            timestep_guidance_channels: 256,
            mlp_ratio: 3.0,
            axes_dims_rope: vec![32, 32, 32, 32],
            rope_theta: 2000.0,
            eps: 1e-6,
            guidance_embeds: false,
        }
    }

    /// FLUX.2 [klein] 9B.
    pub fn klein_9b() -> Self {
        Self {
            num_layers: 8,
            num_single_layers: 24,
            num_attention_heads: 32,
            joint_attention_dim: 12288,
            ..Self::klein_4b()
        }
    }

    /// Reads a diffusers `config.json`; missing fields take the klein-4B values.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Reads the text of a diffusers `config.json` and checks it ([`Config::validate`]).
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values the model relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.guidance_embeds {
            return Err("guidance_embeds = true (FLUX.2 [dev]) is not supported; klein has no guidance embedding".into());
        }
        if self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim {
            return Err(format!(
                "axes_dims_rope {:?} must sum to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            return Err(format!(
                "axes_dims_rope {:?} must be even",
                self.axes_dims_rope
            ));
        }
        if self.timestep_guidance_channels % 2 != 0 || self.num_attention_heads == 0 {
            return Err(
                "timestep_guidance_channels must be even and num_attention_heads positive".into(),
            );
        }
        Ok(())
    }

    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Width of the SwiGLU hidden layer.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size() as f64 * self.mlp_ratio) as usize
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }
}
