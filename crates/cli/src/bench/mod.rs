//! `veetance bench`: times the FLUX.2 [klein] transformer forward and a whole generation
//! (text encoding, the sampler's steps, VAE decode) on one device, with device synchronisation
//! around every clock reading, the achieved TFLOP/s against the analytic count ([`flops`]) and the
//! peak device memory ([`memory`]).
//!
//! Models: `--model klein-4b|klein-9b|tiny` builds the real structure with seeded random weights
//! ([`seeded`]; no files needed), or `--transformer/--text-encoder/--vae` load files with the same
//! loaders as the nodes. `--inputs` / `--dump-velocity` read the forward's inputs from and write its
//! output to safetensors, so that `.verify/gpu/bench.sh` can compare with diffusers on identical
//! inputs. `--json` writes every figure.

pub mod flops;
pub mod memory;
pub mod seeded;

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use serde_json::{json, Value as Json};
use veetance_models::sampling::{self, TextCondition, VelocityModel};
use veetance_models::{flux2, qwen3, vae};

use crate::Failure;

/// A model built from seeded random weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// FLUX.2 [klein] 4B with Qwen3-4B and the FLUX.2 VAE.
    #[value(name = "klein-4b")]
    Klein4b,
    /// FLUX.2 [klein] 9B with Qwen3-8B and the FLUX.2 VAE.
    #[value(name = "klein-9b")]
    Klein9b,
    /// The shapes of the test models in assets/tiny-models (runs anywhere in milliseconds).
    Tiny,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::Klein4b => "klein-4b",
            Preset::Klein9b => "klein-9b",
            Preset::Tiny => "tiny",
        }
    }

    fn transformer(self) -> flux2::Config {
        match self {
            Preset::Klein4b => flux2::Config::klein_4b(),
            Preset::Klein9b => flux2::Config::klein_9b(),
            Preset::Tiny => flux2::Config {
                num_layers: 2,
                num_single_layers: 2,
                attention_head_dim: 16,
                num_attention_heads: 2,
                joint_attention_dim: 96,
                axes_dims_rope: vec![4; 4],
                ..flux2::Config::klein_4b()
            },
        }
    }

    fn text_encoder(self) -> qwen3::Config {
        match self {
            Preset::Klein4b => qwen3::Config::qwen3_4b(),
            Preset::Klein9b => qwen3::Config::qwen3_8b(),
            Preset::Tiny => qwen3::Config {
                vocab_size: 360,
                hidden_size: 32,
                intermediate_size: 48,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: Some(8),
                output_layers: vec![1, 2, 3],
                max_length: 48,
                ..qwen3::Config::qwen3_4b()
            },
        }
    }

    fn vae(self) -> vae::Config {
        match self {
            Preset::Tiny => vae::Config {
                block_out_channels: vec![32; 4],
                layers_per_block: 1,
                ..vae::Config::flux2()
            },
            _ => vae::Config::flux2(),
        }
    }
}

/// How the transformer computes attention. One value per implementation the model exposes; a new
/// backend is a new variant here, a name in `FromStr`/`Display`, and its call in
/// [`ForwardOptions::forward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// The whole score matrix at once (the reference path).
    Plain,
    /// Query rows in chunks of this many tokens.
    Chunked(usize),
    /// Our fused flash kernel (CUDA, bf16/f16; elsewhere the plain path).
    Flash,
    /// FP8 attention through cuDNN (Hopper, with `--compiled`; elsewhere `Flash`).
    FlashFp8,
}

impl FromStr for Attention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "plain" => Ok(Attention::Plain),
            None if s == "chunked" => Ok(Attention::Chunked(1024)),
            None if s == "flash" => Ok(Attention::Flash),
            None if s == "flash_fp8" => Ok(Attention::FlashFp8),
            Some(("chunked", n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Attention::Chunked(n)),
                _ => Err(format!(
                    "chunked:{n}: the chunk size must be a positive integer"
                )),
            },
            _ => Err(format!(
                "unknown attention `{s}`; this build has: plain, chunked, chunked:N, flash, flash_fp8"
            )),
        }
    }
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attention::Plain => write!(f, "plain"),
            Attention::Chunked(n) => write!(f, "chunked:{n}"),
            Attention::Flash => write!(f, "flash"),
            Attention::FlashFp8 => write!(f, "flash_fp8"),
        }
    }
}

/// The model options a run is timed with (what PatchAttention / CompileModel set on a workflow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardOptions {
    pub attention: Attention,
    /// `--compiled`: asks for the fused execution path.
    pub compiled: bool,
}

impl ForwardOptions {
    /// Whether `compiled` can change anything for this model: the fused kernels need a CUDA
    /// build, a CUDA device and bf16/f16 weights; elsewhere a `--compiled` run is the plain model,
    /// and the report says so.
    pub fn compiled_applied(
        &self,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> bool {
        cfg!(feature = "cuda")
            && device.is_cuda()
            && matches!(dtype, candle_core::DType::BF16 | candle_core::DType::F16)
    }

    /// One transformer forward with these options: the one place that maps the options to the
    /// model's API.
    #[allow(clippy::too_many_arguments)]
    pub fn velocity(
        &self,
        model: &flux2::Flux2Transformer,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let attention = match self.attention {
            Attention::Plain => flux2::AttentionBackend::Plain,
            Attention::Chunked(n) => flux2::AttentionBackend::Chunked(n),
            Attention::Flash => flux2::AttentionBackend::Flash,
            Attention::FlashFp8 => flux2::AttentionBackend::FlashFp8,
        };
        let opts = flux2::ForwardOptions {
            attention,
            fused: self.compiled,
        };
        model.forward_with(img, img_ids, txt, txt_ids, t, &opts)
    }

    /// [`Self::velocity`] on prepared inputs.
    pub fn forward(
        &self,
        model: &flux2::Flux2Transformer,
        i: &ForwardInputs,
    ) -> candle_core::Result<Tensor> {
        self.velocity(model, &i.img, &i.img_ids, &i.txt, &i.txt_ids, &i.t)
    }
}

/// The transformer with its options, as the sampler calls it.
struct Patched<'a> {
    model: &'a flux2::Flux2Transformer,
    options: ForwardOptions,
}

impl VelocityModel for Patched<'_> {
    fn velocity(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
    ) -> veetance_models::Result<Tensor> {
        Ok(self
            .options
            .velocity(self.model, img, img_ids, txt, txt_ids, t)?)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchDType {
    Bf16,
    F16,
    F32,
}

impl BenchDType {
    fn dtype(self) -> DType {
        match self {
            BenchDType::Bf16 => DType::BF16,
            BenchDType::F16 => DType::F16,
            BenchDType::F32 => DType::F32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchDevice {
    Cpu,
    Cuda,
}

/// `veetance bench` flags.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Build this model with seeded random weights (no files needed).
    #[arg(long, value_enum, conflicts_with_all = ["transformer", "text_encoder", "vae"])]
    pub model: Option<Preset>,

    /// Transformer file (BFL single file or diffusers layout), instead of --model.
    #[arg(long, value_name = "FILE")]
    pub transformer: Option<PathBuf>,

    /// Qwen3 text-encoder weights (file or folder of shards); needed for the generation.
    #[arg(long, value_name = "FILE")]
    pub text_encoder: Option<PathBuf>,

    /// The text encoder's tokenizer.json (default: `<weights name>.tokenizer.json` or
    /// `tokenizer.json` beside the weights, else the built-in Qwen3 tokenizer).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// FLUX.2 VAE (BFL file or diffusers folder); needed for the generation.
    #[arg(long, value_name = "FILE")]
    pub vae: Option<PathBuf>,

    /// Image width in pixels (multiple of 16).
    #[arg(long, default_value_t = 1024)]
    pub width: usize,

    /// Image height in pixels (multiple of 16).
    #[arg(long, default_value_t = 1024)]
    pub height: usize,

    /// Sampler steps of the timed generation.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,

    /// Weight and activation dtype (default: bf16 on CUDA, f32 on the CPU).
    #[arg(long, value_enum)]
    pub dtype: Option<BenchDType>,

    /// Device (default: cuda in a CUDA build, else cpu).
    #[arg(long, value_enum)]
    pub device: Option<BenchDevice>,

    /// Untimed forwards before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,

    /// Timed forwards (and generations, unless --gen-iters).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,

    /// Timed generations (default: --iters); a generation is warmed up once when --warmup > 0.
    #[arg(long, value_name = "N")]
    pub gen_iters: Option<usize>,

    /// Attention implementation: plain, chunked (1024 query tokens a chunk) or chunked:N.
    #[arg(long, default_value = "plain")]
    pub attention: Attention,

    /// Ask for the fused (compiled) execution path, as CompileModel does.
    #[arg(long)]
    pub compiled: bool,

    /// Seed of the random weights, the noise and the synthetic inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Prompt of the generation (with --text-encoder files; random weights use fixed token ids).
    #[arg(long, default_value = "a red fox in the snow, golden hour")]
    pub prompt: String,

    /// Text tokens of the synthetic forward inputs (default: the text encoder's length, 512).
    #[arg(long, value_name = "N")]
    pub text_tokens: Option<usize>,

    /// Time only the transformer forward (no text encoder or VAE is loaded).
    #[arg(long)]
    pub no_generation: bool,

    /// Read the forward's inputs from this safetensors file: img (1, N, 128), img_ids (N, 4),
    /// txt (1, T, ctx), txt_ids (T, 4), t (1,) (the sigma), any float dtype.
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,

    /// Write the forward's output to this safetensors file (`velocity`, f32).
    #[arg(long, value_name = "FILE")]
    pub dump_velocity: Option<PathBuf>,

    /// A reference image (PNG) to edit with, as `Flux2KleinPipeline(image=[...])` takes it;
    /// repeat for several. Each side must be a multiple of 16 (no resizing is timed). The
    /// generation then encodes the references with the VAE and joins their tokens to every step.
    #[arg(long = "reference", value_name = "PNG")]
    pub references: Vec<PathBuf>,

    /// Write the last generation's seeded noise (`noise`, (1, 128, h, w)) and decoded image
    /// (`image`, (1, 3, H, W), about [-1, 1]) to this safetensors file, f32, for comparing with
    /// another implementation started from the same noise.
    #[arg(long, value_name = "FILE")]
    pub save_generation: Option<PathBuf>,

    /// Write all results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Device memory sampling interval in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub mem_interval_ms: u64,
}

/// Inputs of one transformer forward.
#[derive(Debug, Clone)]
pub struct ForwardInputs {
    pub img: Tensor,
    pub img_ids: Tensor,
    pub txt: Tensor,
    pub txt_ids: Tensor,
    pub t: Tensor,
}

impl ForwardInputs {
    fn image_tokens(&self) -> usize {
        self.img.dim(1).unwrap_or(0)
    }

    fn text_tokens(&self) -> usize {
        self.txt.dim(1).unwrap_or(0)
    }

    /// Seeded inputs: noise latents for `width` x `height`, unit-normal text states, sigma 1.
    fn synthetic(
        cfg: &flux2::Config,
        width: usize,
        height: usize,
        text_tokens: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let noise = sampling::seeded_noise(seed, 1, height, width, dtype, device)?;
        let img = sampling::pack_latents(&noise)?;
        let img_ids = sampling::image_ids(height / 16, width / 16, device)?;
        let ctx = cfg.joint_attention_dim;
        let txt = sampling::gaussian_noise_vec(seed.wrapping_add(1), text_tokens * ctx);
        let txt = Tensor::from_vec(txt, (1, text_tokens, ctx), &Device::Cpu)?
            .to_device(device)?
            .to_dtype(dtype)?;
        let txt_ids = sampling::text_ids(text_tokens, device)?;
        let t = sampling::pipeline_timestep(1.0, 1, dtype, device)?;
        Ok(ForwardInputs {
            img,
            img_ids,
            txt,
            txt_ids,
            t,
        })
    }

    /// Reads and checks the inputs written by `.verify/gpu/bench_inputs.py`.
    fn load(path: &Path, cfg: &flux2::Config, device: &Device) -> anyhow::Result<Self> {
        let mut map = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("{}: cannot read the inputs", path.display()))?;
        let mut take = |name: &str, rank: usize| -> anyhow::Result<Tensor> {
            let t = map.remove(name).ok_or_else(|| {
                anyhow!(
                    "{}: no tensor `{name}` (expected img, img_ids, txt, txt_ids, t)",
                    path.display()
                )
            })?;
            if t.rank() != rank {
                bail!(
                    "{}: `{name}` has shape {:?}, expected rank {rank}",
                    path.display(),
                    t.dims()
                );
            }
            Ok(t.to_device(device)?)
        };
        let inputs = ForwardInputs {
            img: take("img", 3)?,
            img_ids: take("img_ids", 2)?.to_dtype(DType::F32)?,
            txt: take("txt", 3)?,
            txt_ids: take("txt_ids", 2)?.to_dtype(DType::F32)?,
            t: take("t", 1)?,
        };
        let (b, n, c) = inputs.img.dims3()?;
        let (bt, nt, ct) = inputs.txt.dims3()?;
        if b != 1 || bt != 1 || inputs.t.dim(0)? != 1 {
            bail!("{}: the bench runs batch 1", path.display());
        }
        if c != cfg.in_channels || ct != cfg.joint_attention_dim {
            bail!(
                "{}: img has {c} channels and txt {ct}, the model takes {} and {}",
                path.display(),
                cfg.in_channels,
                cfg.joint_attention_dim
            );
        }
        if inputs.img_ids.dims() != [n, 4] || inputs.txt_ids.dims() != [nt, 4] {
            bail!(
                "{}: img_ids {:?} / txt_ids {:?} must be ({n}, 4) / ({nt}, 4)",
                path.display(),
                inputs.img_ids.dims(),
                inputs.txt_ids.dims()
            );
        }
        Ok(inputs)
    }
}

/// The text encoder, from files (tokenizer and prompt) or random weights (fixed token ids).
enum Encoder {
    Files {
        encoder: qwen3::TextEncoder,
        prompt: String,
    },
    Random {
        model: qwen3::Qwen3Encoder,
        ids: Vec<u32>,
        num_real: usize,
    },
}

impl Encoder {
    fn config(&self) -> &qwen3::Config {
        match self {
            Encoder::Files { encoder, .. } => encoder.config(),
            Encoder::Random { model, .. } => model.config(),
        }
    }

    fn encode(&self) -> anyhow::Result<Tensor> {
        Ok(match self {
            Encoder::Files { encoder, prompt } => encoder.encode(prompt)?.hidden,
            Encoder::Random {
                model,
                ids,
                num_real,
            } => model.forward(ids, *num_real)?,
        })
    }
}

/// What the generation needs besides the transformer.
struct Pipeline {
    encoder: Encoder,
    vae: vae::Flux2Vae,
    vae_config: vae::Config,
    /// Reference images `(1, 3, H, W)` in [-1, 1], on the device, in the run's dtype.
    references: Vec<Tensor>,
}

/// The VAE parts a generation needs: the encoder too when it edits references.
fn vae_parts(args: &BenchArgs) -> vae::Parts {
    if args.references.is_empty() {
        vae::Parts::Decoder
    } else {
        vae::Parts::EncoderAndDecoder
    }
}

/// Reads `--reference` images as `(1, 3, H, W)` tensors in [-1, 1].
fn load_references(args: &BenchArgs, dtype: DType, dev: &Device) -> anyhow::Result<Vec<Tensor>> {
    args.references
        .iter()
        .map(|path| {
            let image = veetance_nodes_basic::read_png_image(path)
                .map_err(|e| anyhow!("--reference {}: {e}", path.display()))?;
            let (w, h, c) = (
                image.width as usize,
                image.height as usize,
                image.channels as usize,
            );
            if w % 16 != 0 || h % 16 != 0 {
                bail!(
                    "--reference {}: {w}x{h} is not a multiple of 16 on each side; crop or scale \
                     it first (the bench times no resizing)",
                    path.display()
                );
            }
            let rgb: Vec<f32> = image
                .frame(0)
                .chunks_exact(c)
                .flat_map(|px| [px[0], px[1], px[2]])
                .collect();
            let t = Tensor::from_vec(rgb, (1, h, w, 3), &Device::Cpu)?
                .permute((0, 3, 1, 2))?
                .affine(2.0, -1.0)?
                .to_dtype(dtype)?
                .to_device(dev)?;
            Ok(t)
        })
        .collect()
}

/// Milliseconds since `t0`.
fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

fn sync(device: &Device) -> anyhow::Result<()> {
    device
        .synchronize()
        .context("device synchronisation failed")
}

/// Median, min, mean of a non-empty list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub mean: f64,
}

pub fn stats(xs: &[f64]) -> Option<Stats> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stats {
        median,
        min: v[0],
        mean: v.iter().sum::<f64>() / n as f64,
    })
}

fn stats_json(xs: &[f64]) -> Json {
    match stats(xs) {
        Some(s) => {
            json!({"median_ms": s.median, "min_ms": s.min, "mean_ms": s.mean, "times_ms": xs})
        }
        None => Json::Null,
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// The command.
pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    let setup = Setup::from_args(args).map_err(Failure::invalid)?;
    let report = setup.run(args).map_err(Failure::run_failed)?;
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Failure::run_failed(anyhow!(e)))?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write the JSON report", path.display()))
            .map_err(Failure::run_failed)?;
    }
    Ok(())
}

/// Checked flags.
struct Setup {
    device: Device,
    device_name: &'static str,
    dtype: DType,
    options: ForwardOptions,
}

impl Setup {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        if args.model.is_none() && args.transformer.is_none() {
            bail!("say what to time: --model klein-4b|klein-9b|tiny, or --transformer FILE (with --text-encoder and --vae for the generation)");
        }
        if args.transformer.is_some()
            && !args.no_generation
            && (args.text_encoder.is_none() || args.vae.is_none())
        {
            bail!("the generation needs --text-encoder and --vae beside --transformer (or pass --no-generation)");
        }
        if args.iters == 0 {
            bail!("--iters must be at least 1");
        }
        if args.width == 0 || args.height == 0 || args.width % 16 != 0 || args.height % 16 != 0 {
            bail!(
                "--width/--height {}x{}: must be positive multiples of 16",
                args.width,
                args.height
            );
        }
        if args.steps == 0 {
            bail!("--steps must be at least 1");
        }
        let kind = args.device.unwrap_or(if cfg!(feature = "cuda") {
            BenchDevice::Cuda
        } else {
            BenchDevice::Cpu
        });
        let (device, device_name) = match kind {
            BenchDevice::Cpu => (Device::Cpu, "cpu"),
            BenchDevice::Cuda => {
                if !cfg!(feature = "cuda") {
                    bail!("--device cuda: this veetance was built without CUDA (build with --features cuda)");
                }
                (
                    Device::new_cuda(0).context("cannot open CUDA device 0")?,
                    "cuda",
                )
            }
        };
        let dtype = args
            .dtype
            .map(BenchDType::dtype)
            .unwrap_or(if device.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            });
        Ok(Setup {
            device,
            device_name,
            dtype,
            options: ForwardOptions {
                attention: args.attention,
                compiled: args.compiled,
            },
        })
    }

    fn run(&self, args: &BenchArgs) -> anyhow::Result<Json> {
        let dev = &self.device;
        let dtype = self.dtype;
        let sampler =
            memory::MemorySampler::start(dev, Duration::from_millis(args.mem_interval_ms.max(1)));
        let source = match (args.model, &args.transformer) {
            (Some(p), _) => format!("{} (seeded random weights, seed {})", p.name(), args.seed),
            (None, Some(t)) => t.display().to_string(),
            (None, None) => unreachable!("checked in from_args"),
        };
        println!(
            "veetance bench: {source}, {dtype:?} on {}, attention {}, compiled: {}",
            self.device_name,
            self.options.attention,
            match (
                self.options.compiled,
                self.options.compiled_applied(&self.device, self.dtype)
            ) {
                (false, _) => "no",
                (true, true) => "yes",
                (true, false) => "requested, but this build has no fused path (runs as plain)",
            }
        );

        // Load.
        let t0 = Instant::now();
        let model = match args.model {
            Some(p) => flux2::Flux2Transformer::new(
                &p.transformer(),
                veetance_models::qlinear::WeightBuilder::from_var_builder(
                    seeded::var_builder(args.seed, 0.5, dtype, dev),
                    veetance_models::qlinear::LinearFormat::AsStored,
                ),
            )?,
            None => {
                let path = args.transformer.as_deref().unwrap_or(Path::new(""));
                flux2::load_transformer(path, None, dtype, dev)
                    .with_context(|| format!("{}: cannot load the transformer", path.display()))?
            }
        };
        sync(dev)?;
        let load_transformer_ms = ms_since(t0);
        let cfg = model.config().clone();

        let t0 = Instant::now();
        let pipeline = if args.no_generation {
            None
        } else {
            Some(self.load_pipeline(args)?)
        };
        sync(dev)?;
        let load_pipeline_ms = ms_since(t0);
        let load_peak = sampler.as_ref().map(|s| s.take_peak());
        println!(
            "loaded: transformer {load_transformer_ms:.0} ms{}",
            if pipeline.is_some() {
                format!(", text encoder + VAE {load_pipeline_ms:.0} ms")
            } else {
                String::new()
            }
        );

        // One transformer forward.
        let text_tokens = args
            .text_tokens
            .or(pipeline.as_ref().map(|p| p.encoder.config().max_length))
            .unwrap_or(match args.model {
                Some(Preset::Tiny) => Preset::Tiny.text_encoder().max_length,
                _ => 512,
            });
        let inputs = match &args.inputs {
            Some(path) => ForwardInputs::load(path, &cfg, dev)?,
            None => ForwardInputs::synthetic(
                &cfg,
                args.width,
                args.height,
                text_tokens,
                args.seed,
                dtype,
                dev,
            )?,
        };
        let forward_flop = flops::transformer(
            &cfg,
            inputs.image_tokens() as u64,
            inputs.text_tokens() as u64,
        );
        let mut velocity = None;
        let mut first_forward_ms = None;
        for _ in 0..args.warmup {
            let t0 = Instant::now();
            velocity = Some(self.options.forward(&model, &inputs)?);
            if first_forward_ms.is_none() {
                sync(dev)?;
                first_forward_ms = Some(ms_since(t0));
            }
        }
        sync(dev)?;
        if let Some(ms) = first_forward_ms {
            // Module loads, and the driver's JIT for PTX, happen here in a fresh process.
            println!("first forward of this process: {ms:.1} ms");
        }
        let cudnn = veetance_models::cudnn_status();
        println!("{cudnn}");
        let mut forward_ms = Vec::with_capacity(args.iters);
        for _ in 0..args.iters {
            sync(dev)?;
            let t0 = Instant::now();
            velocity = Some(self.options.forward(&model, &inputs)?);
            sync(dev)?;
            forward_ms.push(ms_since(t0));
        }
        let forward_peak = sampler.as_ref().map(|s| s.take_peak());
        let velocity = velocity.ok_or_else(|| anyhow!("no forward ran"))?;
        let fwd = stats(&forward_ms).ok_or_else(|| anyhow!("no timed forward"))?;
        let velocity32 = velocity.to_dtype(DType::F32)?;
        let velocity_rms = velocity32.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        if !velocity_rms.is_finite() {
            eprintln!("warning: the velocity has non-finite values (rms {velocity_rms})");
        }
        println!(
            "forward ({} image + {} text tokens, {:.2} TFLOP): median {:.2} ms, min {:.2} ms over {} iters = {:.1} TFLOP/s{}",
            inputs.image_tokens(),
            inputs.text_tokens(),
            forward_flop as f64 / 1e12,
            fwd.median,
            fwd.min,
            forward_ms.len(),
            flops::tflops(forward_flop, fwd.median),
            forward_peak
                .map(|p| format!(", peak device memory {:.2} GiB", p as f64 / GIB))
                .unwrap_or_default()
        );
        if let Some(path) = &args.dump_velocity {
            let map =
                HashMap::from([("velocity".to_string(), velocity32.to_device(&Device::Cpu)?)]);
            candle_core::safetensors::save(&map, path)
                .with_context(|| format!("{}: cannot write the velocity", path.display()))?;
            println!("velocity written to {}", path.display());
        }
        let (image_tokens, text_tokens) = (inputs.image_tokens(), inputs.text_tokens());
        drop(inputs);

        // A whole generation.
        let generation = match &pipeline {
            None => Json::Null,
            Some(p) => {
                let gen = self.time_generation(args, &model, p)?;
                let peak = sampler.as_ref().map(|s| s.take_peak());
                let mut j = gen.to_json(args, &cfg, p);
                j["peak_bytes"] = json!(peak);
                gen.print(args, &cfg, p, peak);
                j
            }
        };

        let overall_peak = [load_peak, forward_peak, generation["peak_bytes"].as_u64()]
            .into_iter()
            .flatten()
            .max();
        let memory = match &sampler {
            None => Json::Null,
            Some(s) => json!({
                "source": "driver total - free (all processes), sampled every mem_interval_ms",
                "total_bytes": s.total,
                "baseline_bytes": s.baseline,
                "load_peak_bytes": load_peak,
                "forward_peak_bytes": forward_peak,
                "peak_bytes": overall_peak,
            }),
        };

        Ok(json!({
            "veetance_version": env!("CARGO_PKG_VERSION"),
            "device": self.device_name,
            "dtype": format!("{dtype:?}").to_lowercase(),
            "model": {
                "source": source,
                "preset": args.model.map(Preset::name),
                "transformer": {
                    "hidden_size": cfg.hidden_size(),
                    "double_blocks": cfg.num_layers,
                    "single_blocks": cfg.num_single_layers,
                    "heads": cfg.num_attention_heads,
                    "context_dim": cfg.joint_attention_dim,
                },
            },
            "attention": self.options.attention.to_string(),
            "compiled_requested": self.options.compiled,
            "compiled_applied": self.options.compiled && self.options.compiled_applied(&self.device, self.dtype),
            "seed": args.seed,
            "warmup": args.warmup,
            "iters": args.iters,
            "gen_iters": pipeline.as_ref().map(|_| args.gen_iters.unwrap_or(args.iters).max(1)),
            "load_ms": {"transformer": load_transformer_ms, "text_encoder_and_vae": pipeline.as_ref().map(|_| load_pipeline_ms)},
            "first_forward_ms": first_forward_ms,
            "cudnn": cudnn,
            "forward": {
                "inputs": args.inputs.as_ref().map(|p| p.display().to_string()),
                "image_tokens": image_tokens,
                "text_tokens": text_tokens,
                "flop": forward_flop,
                "median_ms": fwd.median,
                "min_ms": fwd.min,
                "mean_ms": fwd.mean,
                "times_ms": forward_ms,
                "tflops_median": flops::tflops(forward_flop, fwd.median),
                "tflops_best": flops::tflops(forward_flop, fwd.min),
                "velocity_rms": velocity_rms,
                "velocity_file": args.dump_velocity.as_ref().map(|p| p.display().to_string()),
                "peak_bytes": forward_peak,
            },
            "generation": generation,
            "memory": memory,
        }))
    }

    fn load_pipeline(&self, args: &BenchArgs) -> anyhow::Result<Pipeline> {
        let (dev, dtype) = (&self.device, self.dtype);
        if let Some(p) = args.model {
            let te_cfg = p.text_encoder();
            let model = qwen3::Qwen3Encoder::new(
                &te_cfg,
                veetance_models::qlinear::WeightBuilder::from_var_builder(
                    seeded::var_builder(args.seed ^ 1, 0.5, dtype, dev),
                    veetance_models::qlinear::LinearFormat::AsStored,
                ),
            )?;
            // A short prompt's worth of fixed ids, right-padded like the tokenizer does.
            let num_real = 32.min(te_cfg.max_length);
            let pad = (151_643u32).min(te_cfg.vocab_size as u32 - 1);
            let ids = (0..te_cfg.max_length)
                .map(|i| {
                    if i < num_real {
                        (i as u32 * 7919 + 13) % te_cfg.vocab_size as u32
                    } else {
                        pad
                    }
                })
                .collect();
            let vae_cfg = p.vae();
            let vae = vae::Flux2Vae::new(
                &vae_cfg,
                vae_parts(args),
                seeded::var_builder(args.seed ^ 2, 1.0, dtype, dev),
            )?;
            return Ok(Pipeline {
                encoder: Encoder::Random {
                    model,
                    ids,
                    num_real,
                },
                vae,
                vae_config: vae_cfg,
                references: load_references(args, dtype, dev)?,
            });
        }
        let te = args
            .text_encoder
            .as_deref()
            .ok_or_else(|| anyhow!("--text-encoder is needed"))?;
        let vae_path = args
            .vae
            .as_deref()
            .ok_or_else(|| anyhow!("--vae is needed"))?;
        // Without one beside the weights: the built-in Qwen3 tokenizer.
        let tokenizer = match &args.tokenizer {
            Some(t) => Some(t.clone()),
            None => sibling(te, "tokenizer.json", "tokenizer.json"),
        };
        let files = qwen3::TextEncoderFiles {
            weights: te.to_path_buf(),
            tokenizer,
            config: sibling(te, "config.json", "config.json"),
        };
        // Without a config.json: Qwen3-8B by the embedding width, else Qwen3-4B (as LoadTextEncoder).
        let preset = match files.config {
            Some(_) => None,
            None => Some(preset_by_width(te)),
        };
        let encoder = qwen3::TextEncoder::load(&files, preset.as_ref(), dtype, dev)
            .with_context(|| format!("{}: cannot load the text encoder", te.display()))?;
        let json = vae_path.join("config.json");
        let vae_cfg = if vae_path.is_dir() && json.is_file() {
            vae::Config::from_file(&json)?
        } else {
            vae::Config::flux2()
        };
        let vae = vae::load_vae(vae_path, Some(&vae_cfg), vae_parts(args), dtype, dev)
            .with_context(|| format!("{}: cannot load the VAE", vae_path.display()))?;
        Ok(Pipeline {
            encoder: Encoder::Files {
                encoder,
                prompt: args.prompt.clone(),
            },
            vae,
            vae_config: vae_cfg,
            references: load_references(args, dtype, dev)?,
        })
    }

    fn time_generation(
        &self,
        args: &BenchArgs,
        model: &flux2::Flux2Transformer,
        p: &Pipeline,
    ) -> anyhow::Result<Generation> {
        let iters = args.gen_iters.unwrap_or(args.iters).max(1);
        let warmup = usize::from(args.warmup > 0);
        let mut runs = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let run = self.generate_once(args, model, p)?;
            if i >= warmup {
                runs.push(run);
            }
        }
        Ok(Generation { runs })
    }

    /// encode -> noise -> `steps` sampler steps -> decode, synchronised at each stage boundary.
    fn generate_once(
        &self,
        args: &BenchArgs,
        model: &flux2::Flux2Transformer,
        p: &Pipeline,
    ) -> anyhow::Result<GenRun> {
        let dev = &self.device;
        let (h, w) = (args.height / 16, args.width / 16);
        sync(dev)?;
        let start = Instant::now();
        let txt = p.encoder.encode()?;
        sync(dev)?;
        let encode_ms = ms_since(start);

        // Reference images: VAE-encoded and packed, as the pipeline does on every call.
        let t0 = Instant::now();
        let references = if p.references.is_empty() {
            None
        } else {
            let latents = p
                .references
                .iter()
                .map(|image| p.vae.encode(image))
                .collect::<veetance_models::Result<Vec<_>>>()?;
            Some(sampling::References::new(&latents, dev)?)
        };
        sync(dev)?;
        let reference_ms = ms_since(t0);

        let t0 = Instant::now();
        let noise = sampling::seeded_noise(args.seed, 1, args.height, args.width, self.dtype, dev)?;
        let latent = sampling::pack_latents(&noise)?;
        let img_ids = sampling::image_ids(h, w, dev)?;
        let txt_ids = sampling::text_ids(txt.dim(1)?, dev)?;
        let sigmas = sampling::schedule(args.steps, h * w);
        sync(dev)?;
        let prepare_ms = ms_since(t0);

        let velocity = Patched {
            model,
            options: self.options,
        };
        let mut steps_ms = Vec::with_capacity(args.steps);
        let mut sync_error = None;
        let mut lap = Instant::now();
        let latent = sampling::denoise_with(
            &velocity,
            &latent,
            &img_ids,
            TextCondition {
                txt: &txt,
                txt_ids: &txt_ids,
            },
            None,
            &sigmas,
            sampling::DenoiseExtras {
                references: references.as_ref(),
                ..Default::default()
            },
            |_, _| match dev.synchronize() {
                Ok(()) => {
                    steps_ms.push(ms_since(lap));
                    lap = Instant::now();
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    sync_error = Some(e);
                    ControlFlow::Break(())
                }
            },
        );
        if let Some(e) = sync_error {
            return Err(anyhow!(e).context("device synchronisation failed"));
        }
        let latent = latent?;

        let t0 = Instant::now();
        let image = p.vae.decode(&latent, Some((h, w)))?;
        sync(dev)?;
        let decode_ms = ms_since(t0);
        let total_ms = ms_since(start);
        let image_rms = image.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        if let Some(path) = &args.save_generation {
            let tensors = [
                (
                    "noise",
                    noise.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                ),
                (
                    "image",
                    image.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                ),
            ];
            candle_core::safetensors::save(&tensors.into_iter().collect(), path)
                .with_context(|| format!("--save-generation {}", path.display()))?;
        }
        Ok(GenRun {
            total_ms,
            encode_ms,
            reference_ms,
            prepare_ms,
            steps_ms,
            decode_ms,
            image_rms,
        })
    }
}

/// The timed generations.
struct Generation {
    runs: Vec<GenRun>,
}

struct GenRun {
    total_ms: f64,
    encode_ms: f64,
    /// VAE-encoding and packing the reference images (0 without).
    reference_ms: f64,
    prepare_ms: f64,
    steps_ms: Vec<f64>,
    decode_ms: f64,
    image_rms: f32,
}

struct GenFlops {
    encode: u64,
    step: u64,
    decode: u64,
    total: u64,
}

impl Generation {
    fn flops(&self, args: &BenchArgs, cfg: &flux2::Config, p: &Pipeline) -> GenFlops {
        let te = p.encoder.config();
        // Reference tokens join the image tokens at every step (their VAE encode is not counted).
        let n_ref: u64 = p
            .references
            .iter()
            .map(|r| (r.dim(2).unwrap_or(0) / 16 * (r.dim(3).unwrap_or(0) / 16)) as u64)
            .sum();
        let n_img = sampling::image_seq_len(args.width, args.height) as u64 + n_ref;
        let encode = flops::text_encoder(te, te.max_length as u64);
        let step = flops::transformer(cfg, n_img, te.max_length as u64);
        let decode = flops::vae_decode(&p.vae_config, args.width as u64, args.height as u64);
        GenFlops {
            encode,
            step,
            decode,
            total: encode + args.steps as u64 * step + decode,
        }
    }

    fn column(&self, f: impl Fn(&GenRun) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }

    fn to_json(&self, args: &BenchArgs, cfg: &flux2::Config, p: &Pipeline) -> Json {
        let f = self.flops(args, cfg, p);
        let total = self.column(|r| r.total_ms);
        let encode = self.column(|r| r.encode_ms);
        let decode = self.column(|r| r.decode_ms);
        let per_step: Vec<Json> = (0..args.steps)
            .map(|i| stats_json(&self.column(|r| r.steps_ms.get(i).copied().unwrap_or(f64::NAN))))
            .collect();
        let all_steps: Vec<f64> = self
            .runs
            .iter()
            .flat_map(|r| r.steps_ms.iter().copied())
            .collect();
        let med = |xs: &[f64]| stats(xs).map_or(0.0, |s| s.median);
        json!({
            "width": args.width,
            "height": args.height,
            "steps": args.steps,
            "text_tokens": p.encoder.config().max_length,
            "flop": {"encode": f.encode, "step": f.step, "decode": f.decode, "total": f.total},
            "total": stats_json(&total),
            "encode": stats_json(&encode),
            "prepare": stats_json(&self.column(|r| r.prepare_ms)),
            "references": p.references.iter().map(|r| r.dims().to_vec()).collect::<Vec<_>>(),
            "reference_encode": stats_json(&self.column(|r| r.reference_ms)),
            "steps_each": per_step,
            "step": stats_json(&all_steps),
            "decode": stats_json(&decode),
            "tflops": {
                "total": flops::tflops(f.total, med(&total)),
                "encode": flops::tflops(f.encode, med(&encode)),
                "step": flops::tflops(f.step, med(&all_steps)),
                "decode": flops::tflops(f.decode, med(&decode)),
            },
            "image_rms": self.runs.last().map(|r| r.image_rms),
        })
    }

    fn print(&self, args: &BenchArgs, cfg: &flux2::Config, p: &Pipeline, peak: Option<u64>) {
        let f = self.flops(args, cfg, p);
        let med = |xs: Vec<f64>| stats(&xs).map_or(f64::NAN, |s| s.median);
        let total = med(self.column(|r| r.total_ms));
        let steps: Vec<String> = (0..args.steps)
            .map(|i| {
                format!(
                    "{:.1}",
                    med(self.column(|r| r.steps_ms.get(i).copied().unwrap_or(f64::NAN)))
                )
            })
            .collect();
        println!(
            "generation {}x{}{}, {} steps ({:.2} TFLOP): median {:.1} ms (min {:.1}) over {} runs = {:.1} TFLOP/s; encode {:.1} ms{}, steps [{}] ms, decode {:.1} ms{}",
            args.width,
            args.height,
            if p.references.is_empty() {
                String::new()
            } else {
                format!(" with {} reference image(s)", p.references.len())
            },
            args.steps,
            f.total as f64 / 1e12,
            total,
            stats(&self.column(|r| r.total_ms)).map_or(f64::NAN, |s| s.min),
            self.runs.len(),
            flops::tflops(f.total, total),
            med(self.column(|r| r.encode_ms)),
            if p.references.is_empty() {
                String::new()
            } else {
                format!(
                    ", references {:.1} ms",
                    med(self.column(|r| r.reference_ms))
                )
            },
            steps.join(", "),
            med(self.column(|r| r.decode_ms)),
            peak.map(|p| format!(", peak device memory {:.2} GiB", p as f64 / GIB))
                .unwrap_or_default()
        );
    }
}

/// `<stem>.<suffix>` or `plain` beside `weights` (or inside it, for a folder), as the loader nodes
/// look for a text encoder's tokenizer and config.
fn sibling(weights: &Path, suffix: &str, plain: &str) -> Option<PathBuf> {
    let dir = if weights.is_dir() {
        weights.to_path_buf()
    } else {
        weights.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let stem = weights
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    [dir.join(format!("{stem}.{suffix}")), dir.join(plain)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Qwen3-8B when the embedding is 4096 wide, else Qwen3-4B.
fn preset_by_width(weights: &Path) -> qwen3::Config {
    let width = veetance_models::weights::WeightFiles::open_path(weights)
        .ok()
        .and_then(|f| {
            f.shape("model.embed_tokens.weight")
                .or_else(|| f.shape("embed_tokens.weight"))
                .and_then(|s| s.get(1).copied())
        });
    match width {
        Some(4096) => qwen3::Config::qwen3_8b(),
        _ => qwen3::Config::qwen3_4b(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_names_parse_and_print_back() {
        assert_eq!("plain".parse(), Ok(Attention::Plain));
        assert_eq!("chunked".parse(), Ok(Attention::Chunked(1024)));
        assert_eq!("chunked:256".parse(), Ok(Attention::Chunked(256)));
        assert_eq!("flash".parse(), Ok(Attention::Flash));
        assert_eq!("flash_fp8".parse(), Ok(Attention::FlashFp8));
        for a in [
            Attention::Plain,
            Attention::Chunked(77),
            Attention::Flash,
            Attention::FlashFp8,
        ] {
            assert_eq!(a.to_string().parse(), Ok(a));
        }
        assert!("chunked:0"
            .parse::<Attention>()
            .unwrap_err()
            .contains("positive"));
        assert!("chunked:x".parse::<Attention>().is_err());
        let e = "sage".parse::<Attention>().unwrap_err();
        assert!(e.contains("plain, chunked, chunked:N, flash"), "{e}");
    }

    #[test]
    fn stats_take_the_middle() {
        let s = stats(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.mean), (2.0, 1.0, 2.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn tiny_preset_matches_the_test_models() {
        // The shapes of assets/tiny-models, so that --model tiny times what the tiny files hold.
        let t = Preset::Tiny.transformer();
        assert_eq!(
            (t.hidden_size(), t.num_layers, t.num_single_layers),
            (32, 2, 2)
        );
        assert_eq!(
            t.joint_attention_dim,
            Preset::Tiny.text_encoder().output_dim()
        );
        assert!(t.validate().is_ok());
        for p in [Preset::Klein4b, Preset::Klein9b] {
            assert_eq!(
                p.transformer().joint_attention_dim,
                p.text_encoder().output_dim()
            );
        }
    }
}
