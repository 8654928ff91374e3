//! Qwen3 as the FLUX.2 [klein] text encoder.
//!
//! Only the decoder layers up to the last one whose output is used are run (27 of 36 for klein);
//! the hidden states after layers 9, 18 and 27 (HF `hidden_states[9|18|27]`, no final norm) are
//! concatenated per token into `(1, L, 3 * hidden)`. Attention is causal with a key-padding mask,
//! as transformers computes it for a right-padded batch: every query sees the real tokens up to
//! itself, never a pad key. Reference: diffusers' `Flux2KleinPipeline._get_qwen3_prompt_embeds`,
//! transformers' `modeling_qwen3.py`; Qwen3-4B for klein-4B, Qwen3-8B for klein-9B.
//!
//! The prompt goes through Qwen's chat template with thinking disabled:
//! `<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n`,
//! is tokenized with the model's `tokenizer.json` (or, when none is given, the Qwen3 tokenizer built
//! into Veetance: [`builtin_tokenizer`]), truncated to `max_length` (512) and right-padded with the
//! tokenizer's pad token (`<|endoftext|>`).
//!
//! Weights: HF safetensors (`model.layers.N...`, or without the `model.` prefix), or a llama.cpp
//! GGUF file (`token_embd`, `blk.N.attn_q`, `attn_q_norm`, `ffn_gate`, ...; Qwen3 needs no
//! q/k row permutation, its RoPE is the half-split one in both) whose quantized linear weights
//! stay quantized. A GGUF file's configuration comes from its `qwen3.*` metadata unless a
//! `config.json` is given. Without a `config.json`, a safetensors file's configuration is read from
//! its tensor shapes ([`Config::from_tensors`]), as ComfyUI's loaders do.
//!
//! ComfyUI's `*_fp8mixed` files (some linears float8_e4m3fn with a per-tensor `weight_scale`, the
//! rest bf16, described by `.comfy_quant` tensors or the header's `_quantization_metadata`) load
//! with their fp8 linears kept in fp8; see [`crate::weights`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Embedding;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gguf::{is_gguf, GgufFile, MetaValue};
use crate::placement::{move_tensor, tensor_bytes, Movable, TensorFn, WeightBytes};
use crate::qlinear::{embedding, linear_no_bias, LinearFormat, QLinear, WeightBuilder};
use crate::staging::{stream_parts, HostStage};
use crate::weights::{
    build_quantizable, guess_model_kind, Source, TensorIndex, TensorStore, WeightFiles,
};

mod tokenizer;
pub use tokenizer::{
    builtin as builtin_tokenizer, BUILTIN_NAME as BUILTIN_TOKENIZER,
    BUILTIN_TOKENS as BUILTIN_TOKENIZER_TOKENS,
};

/// The rows of a text encoder's embedding table, read from the file's header only (safetensors
/// in HF naming, or GGUF); `None` when the file cannot be read or has no such table.
pub fn embedding_rows(weights: &Path) -> Option<usize> {
    if weights.is_file() && is_gguf(weights) {
        let file = GgufFile::open(weights).ok()?;
        return [
            "token_embd.weight",
            "model.embed_tokens.weight",
            "embed_tokens.weight",
        ]
        .iter()
        .find_map(|n| file.logical_shape(n))
        .and_then(|s| s.first().copied());
    }
    let files = WeightFiles::open_path(weights).ok()?;
    ["model.embed_tokens.weight", "embed_tokens.weight"]
        .iter()
        .find_map(|n| files.shape(n))
        .and_then(|s| s.first().copied())
}

type CResult<T> = candle_core::Result<T>;

/// Qwen3 hyper-parameters (HF `config.json` names) plus the encoder's own settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// 1-based decoder layers whose outputs are concatenated (HF `hidden_states` indices).
    #[serde(default = "default_output_layers")]
    pub output_layers: Vec<usize>,
    /// Tokens per prompt after padding/truncation.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

/// The most tokens a prompt may be padded or truncated to (`max_length` of a config file): the
/// encoder's activations and attention grow with it, and a config is untrusted input.
pub const MAX_PROMPT_TOKENS: usize = 32768;

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    1_000_000.0
}
fn default_output_layers() -> Vec<usize> {
    vec![9, 18, 27]
}
fn default_max_length() -> usize {
    512
}

impl Config {
    /// Qwen3-4B, the text encoder of klein-4B.
    pub fn qwen3_4b() -> Self {
        Self {
            vocab_size: 151_936,
            hidden_size: 2560,
            intermediate_size: 9728,
            num_hidden_layers: 36,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: Some(128),
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            output_layers: default_output_layers(),
            max_length: 512,
        }
    }

    /// Qwen3-8B, the text encoder of klein-9B.
    pub fn qwen3_8b() -> Self {
        Self {
            hidden_size: 4096,
            intermediate_size: 12288,
            ..Self::qwen3_4b()
        }
    }

    /// Reads an HF `config.json` (encoder settings take their defaults).
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

    /// Reads the text of a `config.json`.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The configuration in a llama.cpp GGUF file's metadata (`<arch>.block_count`, ...); the
    /// vocabulary size is the embedding table's row count.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.architecture().unwrap_or("qwen3").to_string();
        let missing = |key: &str| Error::Config {
            path: file.path().to_path_buf(),
            reason: format!(
                "GGUF metadata `{key}` is missing; give the model's config.json beside the file"
            ),
        };
        let get = |key: &str| file.metadata.get(&format!("{arch}.{key}"));
        let int = |key: &str| {
            get(key)
                .and_then(MetaValue::as_usize)
                .ok_or_else(|| missing(&format!("{arch}.{key}")))
        };
        let vocab_size = file
            .logical_shape("token_embd.weight")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| missing("token_embd.weight"))?;
        let heads = int("attention.head_count")?;
        Ok(Self {
            vocab_size,
            hidden_size: int("embedding_length")?,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: get("attention.head_count_kv")
                .and_then(MetaValue::as_usize)
                .unwrap_or(heads),
            head_dim: get("attention.key_length").and_then(MetaValue::as_usize),
            rms_norm_eps: get("attention.layer_norm_rms_epsilon")
                .and_then(MetaValue::as_f64)
                .unwrap_or_else(default_eps),
            rope_theta: get("rope.freq_base")
                .and_then(MetaValue::as_f64)
                .unwrap_or_else(default_theta),
            output_layers: default_output_layers(),
            max_length: default_max_length(),
        })
    }

    /// The configuration read from the tensor shapes of an HF-named checkpoint (with or without
    /// the `model.` prefix): vocabulary and hidden size from `embed_tokens`, the layer count from
    /// the `layers.N.` names, head_dim from `q_norm`, the head counts from `q_proj`/`k_proj`, the
    /// MLP width from `gate_proj`. rms_norm_eps (1e-6) and rope_theta (1e6) are Qwen3's, as in
    /// ComfyUI's `Qwen3_4BConfig`/`Qwen3_8BConfig`; the encoder's own settings take their defaults.
    pub fn from_tensors(files: &dyn TensorIndex) -> Result<Self> {
        let names = files.tensor_names();
        let prefix = if names.contains(&"model.embed_tokens.weight") {
            "model."
        } else {
            ""
        };
        let shape = |name: &str, rank: usize| -> Result<Vec<usize>> {
            let full = format!("{prefix}{name}");
            match files.tensor_shape(&full) {
                Some(s) if s.len() == rank && s.iter().all(|&d| d > 0) => Ok(s),
                Some(s) => Err(Error::Config {
                    path: files.first_path().to_path_buf(),
                    reason: format!(
                        "cannot read the configuration from the tensors: `{full}` has shape \
                         {s:?}; give the model's config.json beside the weights"
                    ),
                }),
                None => Err(Error::Config {
                    path: files.first_path().to_path_buf(),
                    reason: format!(
                        "cannot read the configuration from the tensors: `{full}` is missing \
                         (found {}); give the model's config.json beside the weights",
                        guess_model_kind(files)
                    ),
                }),
            }
        };
        let embed = shape("embed_tokens.weight", 2)?;
        let (vocab_size, hidden_size) = (embed[0], embed[1]);
        let layer_prefix = format!("{prefix}layers.");
        let num_hidden_layers = names
            .iter()
            .filter_map(|n| n.strip_prefix(layer_prefix.as_str()))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |i| i + 1);
        let head_dim = shape("layers.0.self_attn.q_norm.weight", 1)?[0];
        let q = shape("layers.0.self_attn.q_proj.weight", 2)?;
        let k = shape("layers.0.self_attn.k_proj.weight", 2)?;
        let gate = shape("layers.0.mlp.gate_proj.weight", 2)?;
        let bad = |reason: String| Error::Config {
            path: files.first_path().to_path_buf(),
            reason: format!(
                "cannot read the configuration from the tensors: {reason}; give the model's \
                 config.json beside the weights"
            ),
        };
        if q[0] % head_dim != 0 || k[0] % head_dim != 0 {
            return Err(bad(format!(
                "q_proj ({q:?}) and k_proj ({k:?}) rows are not multiples of head_dim {head_dim} \
                 (from q_norm)"
            )));
        }
        if q[1] != hidden_size || k[1] != hidden_size || gate[1] != hidden_size {
            return Err(bad(format!(
                "q_proj {q:?}, k_proj {k:?} and gate_proj {gate:?} do not all read the hidden size \
                 {hidden_size} of embed_tokens"
            )));
        }
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: gate[0],
            num_hidden_layers,
            num_attention_heads: q[0] / head_dim,
            num_key_value_heads: k[0] / head_dim,
            head_dim: Some(head_dim),
            rms_norm_eps: default_eps(),
            rope_theta: default_theta(),
            output_layers: default_output_layers(),
            max_length: default_max_length(),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Number of decoder layers actually run.
    pub fn layers_needed(&self) -> usize {
        self.output_layers.iter().copied().max().unwrap_or(0)
    }

    /// Width of the encoder output.
    pub fn output_dim(&self) -> usize {
        self.output_layers.len().saturating_mul(self.hidden_size)
    }

    /// Checks the values the encoder relies on (layers, heads, lengths).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let needed = self.layers_needed();
        if self.output_layers.is_empty()
            || self.output_layers.contains(&0)
            || needed > self.num_hidden_layers
        {
            return Err(format!(
                "output_layers {:?} must be in 1..={}",
                self.output_layers, self.num_hidden_layers
            ));
        }
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0
        {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        // Sizes no Qwen3 comes near (the 8B: hidden 4096, MLP 12288, 36 layers, 32 heads of
        // 128): a file asking for more is not a text encoder, and its products would overflow.
        let dims = [
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("head_dim", self.head_dim(), 1 << 12),
            ("vocab_size", self.vocab_size, 1 << 24),
        ];
        for (name, value, limit) in dims {
            if value == 0 || value > limit {
                return Err(format!("{name} {value} must be in 1..={limit}"));
            }
        }
        if self.max_length == 0 || self.head_dim() % 2 != 0 {
            return Err("max_length must be positive and head_dim even".into());
        }
        if self.max_length > MAX_PROMPT_TOKENS {
            return Err(format!(
                "max_length {} is over the {MAX_PROMPT_TOKENS} prompt tokens Veetance encodes \
                 (Qwen3's context is 40960; FLUX.2 [klein] uses 512)",
                self.max_length
            ));
        }
        Ok(())
    }
}

fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> CResult<Tensor> {
    candle_nn::ops::rms_norm(&xs.contiguous()?, weight, eps as f32)
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: QLinear,
    k_proj: QLinear,
    v_proj: QLinear,
    o_proj: QLinear,
    q_norm: Tensor,
    k_norm: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
}

impl Attention {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        Ok(Self {
            q_proj: linear_no_bias(cfg.hidden_size, h * d, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(cfg.hidden_size, kv * d, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(cfg.hidden_size, kv * d, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(h * d, cfg.hidden_size, vb.pp("o_proj"))?,
            q_norm: vb.get(d, "q_norm.weight")?,
            k_norm: vb.get(d, "k_norm.weight")?,
            heads: h,
            kv_heads: kv,
            head_dim: d,
            eps: cfg.rms_norm_eps,
        })
    }

    /// `mask`: the additive causal + key-padding mask; `num_real`: the same mask as a key count,
    /// for the flash kernel (CUDA, bf16/f16), which applies it without materialising scores.
    fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        num_real: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> CResult<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let d = self.head_dim;
        let q = self.q_proj.forward(xs)?.reshape((b, l, self.heads, d))?;
        let k = self.k_proj.forward(xs)?.reshape((b, l, self.kv_heads, d))?;
        let v = self.v_proj.forward(xs)?.reshape((b, l, self.kv_heads, d))?;
        let q = rms_norm(&q, &self.q_norm, self.eps)?
            .transpose(1, 2)?
            .contiguous()?;
        let k = rms_norm(&k, &self.k_norm, self.eps)?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let rep = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
        if d == 128 && veetance_kernels::supported(&q) {
            let out = veetance_kernels::flash_attention(&q, &k, &v, true, Some(num_real))?;
            return self.o_proj.forward(&out);
        }
        let scale = 1.0 / (d as f64).sqrt();
        // Scores and softmax in f32 whatever the weights' dtype.
        let scores = (q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            * scale)?
            .broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, self.heads * d))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: QLinear,
    up_proj: QLinear,
    down_proj: QLinear,
}

impl Mlp {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: linear_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: linear_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let gate = self.gate_proj.forward(xs)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    eps: f64,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: vb.get(cfg.hidden_size, "input_layernorm.weight")?,
            post_attention_layernorm: vb.get(cfg.hidden_size, "post_attention_layernorm.weight")?,
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        num_real: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> CResult<Tensor> {
        let h = self.self_attn.forward(
            &rms_norm(xs, &self.input_layernorm, self.eps)?,
            mask,
            num_real,
            cos,
            sin,
        )?;
        let xs = (xs + h)?;
        let h = self
            .mlp
            .forward(&rms_norm(&xs, &self.post_attention_layernorm, self.eps)?)?;
        xs + h
    }
}

/// The truncated Qwen3 stack (embedding + the first `layers_needed` decoder layers).
#[derive(Debug, Clone)]
pub struct Qwen3Encoder {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    cfg: Config,
    dtype: DType,
    device: Device,
    /// Page-locked host memory of streamed layers (shared by clones; see [`crate::staging`]).
    stage: HostStage,
}

impl Qwen3Encoder {
    /// Builds from a `VarBuilder` in HF naming (`model.embed_tokens`, `model.layers.{i}`...).
    pub fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let vb = vb.pp("model");
        let layers = (0..cfg.layers_needed())
            .map(|i| DecoderLayer::new(cfg, vb.pp("layers").pp(i)))
            .collect::<CResult<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?,
            layers,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            stage: HostStage::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Half-split RoPE tables `(L, head_dim / 2)`, computed in f32 like transformers.
    fn rope_tables(&self, len: usize) -> CResult<(Tensor, Tensor)> {
        let d = self.cfg.head_dim();
        let theta = self.cfg.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..d / 2)
            .map(|j| 1.0 / theta.powf((2 * j) as f32 / d as f32))
            .collect();
        let mut cos = Vec::with_capacity(len * d / 2);
        let mut sin = Vec::with_capacity(len * d / 2);
        for p in 0..len {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (len, d / 2), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (len, d / 2), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    /// Hidden states `(1, L, output_dim)` for token ids `(L,)` of which the first `num_real` are
    /// real and the rest padding.
    pub fn forward(&self, ids: &[u32], num_real: usize) -> CResult<Tensor> {
        let len = ids.len();
        let num_real = num_real.clamp(1, len.max(1));
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        // Additive mask (1, 1, L, L): query i sees key j iff j <= i and j < num_real.
        let mask: Vec<f32> = (0..len)
            .flat_map(|i| {
                (0..len).map(move |j| {
                    if j <= i && j < num_real {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, len, len), &self.device)?;
        let (cos, sin) = self.rope_tables(len)?;
        let mut xs = self.embed_tokens.forward(&ids)?;
        let mut outputs = Vec::with_capacity(self.cfg.output_layers.len());
        // A streamed layer (in host memory) is copied to the device one layer ahead of use.
        for (i, layer) in stream_parts(&self.layers, &self.device, &self.stage).enumerate() {
            let layer = layer?;
            xs = layer.forward(&xs, &mask, num_real, &cos, &sin)?;
            if self.cfg.output_layers.contains(&(i + 1)) {
                outputs.push((i + 1, xs.clone()));
            }
        }
        // In the order of `output_layers`.
        let ordered = self
            .cfg
            .output_layers
            .iter()
            .filter_map(|k| outputs.iter().find(|(i, _)| i == k).map(|(_, t)| t.clone()))
            .collect::<Vec<_>>();
        Tensor::cat(&ordered, D::Minus1)
    }
}

// ---------------------------------------------------------------- moves and streaming

fn map_linear(l: &QLinear, f: TensorFn<'_>) -> CResult<QLinear> {
    l.map_tensors(f)
}

impl Movable for DecoderLayer {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let DecoderLayer {
            self_attn,
            mlp,
            input_layernorm,
            post_attention_layernorm,
            eps,
        } = self;
        let Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            heads,
            kv_heads,
            head_dim,
            eps: attn_eps,
        } = self_attn;
        let Mlp {
            gate_proj,
            up_proj,
            down_proj,
        } = mlp;
        Ok(DecoderLayer {
            self_attn: Attention {
                q_proj: map_linear(q_proj, f)?,
                k_proj: map_linear(k_proj, f)?,
                v_proj: map_linear(v_proj, f)?,
                o_proj: map_linear(o_proj, f)?,
                q_norm: f(q_norm)?,
                k_norm: f(k_norm)?,
                heads: *heads,
                kv_heads: *kv_heads,
                head_dim: *head_dim,
                eps: *attn_eps,
            },
            mlp: Mlp {
                gate_proj: map_linear(gate_proj, f)?,
                up_proj: map_linear(up_proj, f)?,
                down_proj: map_linear(down_proj, f)?,
            },
            input_layernorm: f(input_layernorm)?,
            post_attention_layernorm: f(post_attention_layernorm)?,
            eps: *eps,
        })
    }

    fn probe(&self) -> &Tensor {
        &self.input_layernorm
    }
}

impl Qwen3Encoder {
    /// This encoder with every weight replaced by `f(weight)`, each weight visited once. The
    /// compute device stays what it was (see [`Self::to_device`] and [`Self::place`]).
    pub fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let Qwen3Encoder {
            embed_tokens,
            layers,
            cfg,
            dtype,
            device,
            stage: _,
        } = self;
        Ok(Qwen3Encoder {
            embed_tokens: Embedding::new(f(embed_tokens.embeddings())?, cfg.hidden_size),
            layers: layers
                .iter()
                .map(|l| l.map_tensors(f))
                .collect::<CResult<_>>()?,
            cfg: cfg.clone(),
            dtype: *dtype,
            device: device.clone(),
            // Other tensors: nothing of theirs is page-locked yet.
            stage: HostStage::default(),
        })
    }

    /// A copy with every weight on `device`, computing there.
    pub fn to_device(&self, device: &Device) -> CResult<Self> {
        let mut moved = self.map_tensors(&mut |t| move_tensor(t, device))?;
        moved.device = device.clone();
        Ok(moved)
    }

    /// The embedding and the first `resident_layers` layers on `device`, the others in host
    /// memory, copied to `device` one at a time while encoding.
    pub fn place(&self, device: &Device, resident_layers: usize) -> CResult<Self> {
        let mut placed = self.clone();
        placed.embed_tokens = Embedding::new(
            move_tensor(self.embed_tokens.embeddings(), device)?,
            self.cfg.hidden_size,
        );
        placed.layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let target = if i < resident_layers {
                    device.clone()
                } else {
                    Device::Cpu
                };
                l.map_tensors(&mut |t| move_tensor(t, &target))
            })
            .collect::<CResult<_>>()?;
        placed.device = device.clone();
        Ok(placed)
    }

    /// Bytes of the embedding and of each layer.
    pub fn part_bytes(&self) -> (u64, Vec<u64>) {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut bytes = 0;
                let _ = l.map_tensors(&mut |t| {
                    bytes += tensor_bytes(t);
                    Ok(t.clone())
                });
                bytes
            })
            .collect();
        (tensor_bytes(self.embed_tokens.embeddings()), layers)
    }
}

/// A prompt's embedding.
#[derive(Debug, Clone)]
pub struct PromptEmbedding {
    /// `(1, max_length, output_dim)` in the encoder's dtype.
    pub hidden: Tensor,
    /// Tokens of the templated prompt before padding (at most `max_length`).
    pub num_tokens: usize,
    /// Whether the templated prompt was longer than `max_length` and got cut.
    pub truncated: bool,
}

/// The klein text encoder: tokenizer, chat template and truncated Qwen3.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    model: Qwen3Encoder,
    tokenizer: Arc<tokenizers::Tokenizer>,
    pad_id: u32,
}

/// Qwen3's chat template for one user turn, thinking disabled, generation prompt added.
pub fn chat_template(prompt: &str) -> String {
    format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
}

/// Loads the tokenizer and finds its pad id (`<|endoftext|>` for Qwen), naming the file on error.
pub fn load_tokenizer(path: &Path) -> Result<(tokenizers::Tokenizer, u32)> {
    let tok_err = |reason: String| Error::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(tok_err("file not found".into()));
    }
    let json = std::fs::read(path).map_err(|e| tok_err(e.to_string()))?;
    read_tokenizer(&json).map_err(tok_err)
}

/// A Qwen tokenizer from the bytes of its `tokenizer.json`, with its pad id, or why it is not one.
pub fn read_tokenizer(json: &[u8]) -> std::result::Result<(tokenizers::Tokenizer, u32), String> {
    // The tokenizers crate panics (an `expect`) on some malformed sections, such as a `decoder`
    // object with a non-string key (found by fuzzing: fuzz/regressions/tokenizer_json/); a bad
    // file must be an error naming it, never the end of the process.
    let tokenizer = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(json))
        .map_err(|_| {
            "malformed tokenizer.json (the tokenizers library could not read one of its sections, \
             e.g. `decoder`); give the tokenizer.json that came with the model"
                .to_string()
        })?
        .map_err(|e| e.to_string())?;
    let pad_id = qwen_pad_id(&tokenizer)?;
    Ok((tokenizer, pad_id))
}

/// Token ids of a prompt in the chat template, truncated and right-padded with `pad_id` to
/// `max_len`, with the number of real tokens and whether it was truncated.
pub fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    pad_id: u32,
    max_len: usize,
    prompt: &str,
) -> Result<(Vec<u32>, usize, bool)> {
    let enc = tokenizer
        .encode(chat_template(prompt), true)
        .map_err(|e| Error::InvalidInput(format!("tokenizing the prompt failed: {e}")))?;
    let mut ids = enc.get_ids().to_vec();
    let truncated = ids.len() > max_len;
    ids.truncate(max_len);
    let num_real = ids.len();
    ids.resize(max_len, pad_id);
    Ok((ids, num_real, truncated))
}

/// The pad id of a Qwen tokenizer, or why it is not one.
fn qwen_pad_id(tokenizer: &tokenizers::Tokenizer) -> std::result::Result<u32, String> {
    let pad_id = tokenizer
        .get_padding()
        .map(|p| p.pad_id)
        .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
        .ok_or("no padding configured and no <|endoftext|> token")?;
    for special in ["<|im_start|>", "<|im_end|>"] {
        if tokenizer.token_to_id(special).is_none() {
            return Err(format!("not a Qwen tokenizer: no {special} token"));
        }
    }
    Ok(pad_id)
}

/// Every id the tokenizer can produce must have a row in the embedding table; a tokenizer of
/// another vocabulary (the built-in Qwen3 one beside a model of another family, or the wrong
/// file) is refused, naming the files.
fn check_vocab(
    tokenizer: &tokenizers::Tokenizer,
    files: &TextEncoderFiles,
    cfg: &Config,
) -> Result<()> {
    let tokens = tokenizer.get_vocab_size(true);
    if tokens <= cfg.vocab_size {
        return Ok(());
    }
    let (path, what, fix) = match &files.tokenizer {
        Some(p) => (
            p.clone(),
            format!("{} has {tokens} tokens", p.display()),
            "give the tokenizer.json that came with this model",
        ),
        None => (
            files.weights.clone(),
            format!("{BUILTIN_TOKENIZER} has {tokens} tokens"),
            "put the model's tokenizer.json beside the weights (as `tokenizer.json` or \
             `<weights name>.tokenizer.json`)",
        ),
    };
    Err(Error::Tokenizer {
        path,
        reason: format!(
            "{what} but the embedding table of {} has {} rows, so this is not the model's \
             vocabulary; {fix}",
            files.weights.display(),
            cfg.vocab_size
        ),
    })
}

/// How a checkpoint names the encoder's tensors.
#[derive(Debug, Clone, Copy)]
enum Naming {
    /// transformers: `model.layers.N.self_attn.q_proj.weight`.
    Hf,
    /// transformers without the `model.` prefix.
    HfWithoutModelPrefix,
    /// llama.cpp GGUF: `blk.N.attn_q.weight`.
    LlamaCpp,
}

/// The llama.cpp GGUF name of an internal (transformers) tensor name.
pub fn llama_cpp_name(name: &str) -> String {
    if name == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if name == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return name.to_string();
    };
    let Some((layer, field)) = rest.split_once('.') else {
        return name.to_string();
    };
    let field = match field {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => other,
    };
    format!("blk.{layer}.{field}")
}

/// Files of a text encoder.
#[derive(Debug, Clone)]
pub struct TextEncoderFiles {
    /// A `.safetensors` file, a folder of shards, or a `.gguf` file.
    pub weights: PathBuf,
    /// The model's `tokenizer.json`; `None` uses the built-in Qwen3 tokenizer
    /// ([`builtin_tokenizer`]).
    pub tokenizer: Option<PathBuf>,
    /// `config.json`; `None` reads the configuration from the GGUF metadata or the tensor shapes
    /// ([`Config::from_tensors`]), else uses `preset`.
    pub config: Option<PathBuf>,
}

impl TextEncoder {
    /// Loads weights, tokenizer and configuration. The configuration is `files.config`, else a GGUF
    /// file's metadata, else read from the tensor shapes ([`Config::from_tensors`]), else `preset`
    /// (e.g. `Config::qwen3_4b()`); `output_layers` and `max_length` always come from `preset`
    /// when given. Without `files.tokenizer` the built-in Qwen3 tokenizer is used; either way its
    /// ids must fit the embedding table.
    pub fn load(
        files: &TextEncoderFiles,
        preset: Option<&Config>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        crate::flux2::check_dtype(dtype, device)?;
        let gguf = if files.weights.is_file() && is_gguf(&files.weights) {
            Some(Arc::new(GgufFile::open(&files.weights)?))
        } else {
            None
        };
        let safetensors = match &gguf {
            Some(_) => None,
            None => Some(Arc::new(WeightFiles::open_path(&files.weights)?)),
        };
        let mut cfg = match (&files.config, &gguf, &safetensors) {
            (Some(path), _, _) => Config::from_file(path)?,
            (None, Some(g), _) if g.contains("token_embd.weight") => Config::from_gguf(g)?,
            (None, _, Some(w)) => match (Config::from_tensors(w.as_ref()), preset) {
                (Ok(c), _) => c,
                (Err(_), Some(p)) => p.clone(),
                (Err(e), None) => return Err(e),
            },
            (None, _, _) => preset.cloned().unwrap_or_else(Config::qwen3_4b),
        };
        if let Some(p) = preset {
            cfg.output_layers.clone_from(&p.output_layers);
            cfg.max_length = p.max_length;
        }
        cfg.validate().map_err(|reason| Error::Config {
            path: files
                .config
                .clone()
                .unwrap_or_else(|| files.weights.clone()),
            reason,
        })?;
        let (tokenizer, pad_id) = match &files.tokenizer {
            Some(path) => {
                let (t, pad) = load_tokenizer(path)?;
                (Arc::new(t), pad)
            }
            None => {
                let builtin = builtin_tokenizer().map_err(|reason| Error::Tokenizer {
                    path: files.weights.clone(),
                    reason,
                })?;
                let pad = qwen_pad_id(&builtin).map_err(|reason| Error::Tokenizer {
                    path: files.weights.clone(),
                    reason,
                })?;
                (builtin, pad)
            }
        };
        check_vocab(&tokenizer, files, &cfg)?;
        let (store, naming): (Arc<dyn TensorStore>, Naming) = match (gguf, safetensors) {
            (Some(g), _) => {
                let naming = if g.contains("token_embd.weight") {
                    Naming::LlamaCpp
                } else if g.contains("model.embed_tokens.weight") {
                    Naming::Hf
                } else if g.contains("embed_tokens.weight") {
                    Naming::HfWithoutModelPrefix
                } else {
                    return Err(Error::WrongModel {
                        path: g.path().to_path_buf(),
                        expected: "a Qwen3 language model".into(),
                        found: guess_model_kind(g.as_ref()),
                    });
                };
                (g, naming)
            }
            (None, Some(weights)) => {
                // HF files name it `model.embed_tokens`; some exports drop the `model.` prefix.
                let naming = if weights.contains("model.embed_tokens.weight") {
                    Naming::Hf
                } else if weights.contains("embed_tokens.weight") {
                    Naming::HfWithoutModelPrefix
                } else {
                    return Err(Error::WrongModel {
                        path: weights.path().to_path_buf(),
                        expected: "a Qwen3 language model".into(),
                        found: guess_model_kind(weights.as_ref()),
                    });
                };
                (weights, naming)
            }
            (None, None) => {
                return Err(Error::InvalidInput(format!(
                    "{}: no weights were opened",
                    files.weights.display()
                )))
            }
        };
        let map = move |n: &str| match naming {
            Naming::Hf => Source::Name(n.to_string()),
            Naming::HfWithoutModelPrefix => {
                Source::Name(n.strip_prefix("model.").unwrap_or(n).to_string())
            }
            Naming::LlamaCpp => Source::Name(llama_cpp_name(n)),
        };
        let model = build_quantizable(store, map, dtype, device, LinearFormat::AsStored, |vb| {
            Qwen3Encoder::new(&cfg, vb)
        })?;
        Ok(Self {
            model,
            tokenizer,
            pad_id,
        })
    }

    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// The device the encoder computes on.
    pub fn device(&self) -> &Device {
        &self.model.device
    }

    /// This encoder with every weight replaced by `f(weight)`, each weight visited once.
    pub fn map_tensors(&self, f: TensorFn<'_>) -> Result<Self> {
        Ok(Self {
            model: self.model.map_tensors(f)?,
            tokenizer: self.tokenizer.clone(),
            pad_id: self.pad_id,
        })
    }

    /// A copy with every weight on `device` (bit-identical values), computing there.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            model: self.model.to_device(device)?,
            tokenizer: self.tokenizer.clone(),
            pad_id: self.pad_id,
        })
    }

    /// Streams the encoder's layers when its weights would take more than `weight_room` device
    /// bytes: the embedding, a buffer of two layers and as many leading layers as fit stay on
    /// `device`, the rest in host memory. Returns the placed encoder and the number of streamed
    /// layers (0: everything fits, the encoder is simply moved to `device`).
    pub fn place_within(&self, device: &Device, weight_room: u64) -> Result<(Self, usize)> {
        let (embed, layers) = self.model.part_bytes();
        let total = embed + layers.iter().sum::<u64>();
        let resident = if total <= weight_room {
            layers.len()
        } else {
            let buffer = 2 * layers.iter().copied().max().unwrap_or(0);
            let mut left = weight_room.saturating_sub(embed + buffer);
            crate::placement::leading_that_fit(&layers, &mut left)
        };
        let model = self.model.place(device, resident)?;
        Ok((
            Self {
                model,
                tokenizer: self.tokenizer.clone(),
                pad_id: self.pad_id,
            },
            layers.len() - resident,
        ))
    }

    /// How many weight tensors the encoder holds.
    pub fn tensor_count(&self) -> usize {
        let mut n = 0;
        let _ = self.model.map_tensors(&mut |t| {
            n += 1;
            Ok(t.clone())
        });
        n
    }

    /// Weight bytes per tier, as the encoder is placed now.
    pub fn weight_bytes(&self) -> WeightBytes {
        let mut bytes = WeightBytes::default();
        let _ = self.model.map_tensors(&mut |t| {
            bytes.add(t);
            Ok(t.clone())
        });
        bytes
    }

    /// Token ids of the templated prompt, truncated and right-padded to `max_length`, and the
    /// number of real tokens and whether it was truncated.
    pub fn tokenize(&self, prompt: &str) -> Result<(Vec<u32>, usize, bool)> {
        tokenize(
            &self.tokenizer,
            self.pad_id,
            self.model.cfg.max_length,
            prompt,
        )
    }

    /// Encodes a prompt to `(1, max_length, 3 * hidden)`.
    pub fn encode(&self, prompt: &str) -> Result<PromptEmbedding> {
        let (ids, num_tokens, truncated) = self.tokenize(prompt)?;
        let hidden = self.model.forward(&ids, num_tokens)?;
        Ok(PromptEmbedding {
            hidden,
            num_tokens,
            truncated,
        })
    }
}
