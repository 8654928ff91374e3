//! Moving the FLUX.2 transformer between devices, and streaming its blocks.
//!
//! A child module of `model` (declared there with `#[path]`) so that it can see the layers' private
//! fields without widening them: the walk below lists every field of every layer, so a layer that
//! gains a tensor fails to compile here until the walk covers it.
//!
//! * [`Flux2Transformer::map_tensors`] / [`Flux2Transformer::to_device`]: every weight, once.
//! * [`Flux2Transformer::place`]: the non-block weights and the first blocks of a [`BlockPlan`] on
//!   the device, the other blocks in host memory. `forward` copies a host block to the compute
//!   device just before it runs (`placement::on_device`), so the result is bit-identical to the
//!   resident model's: the same kernels run on the same values.
//! * [`Flux2Transformer::plan_blocks`] chooses the plan from the device bytes a caller may use.

use crate::qlinear::QLinear;
use candle_core::{Device, Tensor};

use super::{
    DoubleStreamBlock, Flux2Transformer, Mlp, MlpEmbedder, Modulation, QkNorm, SelfAttention,
    SingleStreamBlock,
};
use crate::placement::{
    leading_that_fit, move_tensor, tensor_bytes, Movable, TensorFn, WeightBytes,
};

type CResult<T> = candle_core::Result<T>;

fn linear(l: &QLinear, f: TensorFn<'_>) -> CResult<QLinear> {
    l.map_tensors(f)
}

impl QkNorm {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let QkNorm {
            query_norm,
            key_norm,
            eps,
        } = self;
        Ok(QkNorm {
            query_norm: f(query_norm)?,
            key_norm: f(key_norm)?,
            eps: *eps,
        })
    }
}

impl Modulation {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let Modulation { lin, sets } = self;
        Ok(Modulation {
            lin: linear(lin, f)?,
            sets: *sets,
        })
    }
}

impl Mlp {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let Mlp { lin_in, lin_out } = self;
        Ok(Mlp {
            lin_in: linear(lin_in, f)?,
            lin_out: linear(lin_out, f)?,
        })
    }
}

impl SelfAttention {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let SelfAttention { qkv, norm, proj } = self;
        Ok(SelfAttention {
            qkv: linear(qkv, f)?,
            norm: norm.map_tensors(f)?,
            proj: linear(proj, f)?,
        })
    }
}

impl MlpEmbedder {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let MlpEmbedder {
            in_layer,
            out_layer,
        } = self;
        Ok(MlpEmbedder {
            in_layer: linear(in_layer, f)?,
            out_layer: linear(out_layer, f)?,
        })
    }
}

impl Movable for DoubleStreamBlock {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let DoubleStreamBlock {
            img_attn,
            img_mlp,
            txt_attn,
            txt_mlp,
            heads,
            eps,
        } = self;
        Ok(DoubleStreamBlock {
            img_attn: img_attn.map_tensors(f)?,
            img_mlp: img_mlp.map_tensors(f)?,
            txt_attn: txt_attn.map_tensors(f)?,
            txt_mlp: txt_mlp.map_tensors(f)?,
            heads: *heads,
            eps: *eps,
        })
    }

    fn probe(&self) -> &Tensor {
        &self.img_attn.norm.query_norm
    }
}

impl Movable for SingleStreamBlock {
    fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let SingleStreamBlock {
            linear1,
            linear2,
            norm,
            heads,
            hidden,
            mlp_hidden,
            eps,
        } = self;
        Ok(SingleStreamBlock {
            linear1: linear(linear1, f)?,
            linear2: linear(linear2, f)?,
            norm: norm.map_tensors(f)?,
            heads: *heads,
            hidden: *hidden,
            mlp_hidden: *mlp_hidden,
            eps: *eps,
        })
    }

    fn probe(&self) -> &Tensor {
        &self.norm.query_norm
    }
}

/// How many blocks of each kind stay on the device, counted from the first; the others live in
/// host memory and are copied to the device for each forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlan {
    pub resident_double: usize,
    pub resident_single: usize,
}

impl BlockPlan {
    /// Every block on the device (no streaming).
    pub fn all(model: &Flux2Transformer) -> Self {
        BlockPlan {
            resident_double: model.double_blocks.len(),
            resident_single: model.single_blocks.len(),
        }
    }

    /// No block on the device: each one streamed.
    pub fn none() -> Self {
        BlockPlan {
            resident_double: 0,
            resident_single: 0,
        }
    }
}

/// What [`Flux2Transformer::plan_blocks`] decided, with the numbers behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPlan {
    pub blocks: BlockPlan,
    /// Blocks copied to the device at every forward.
    pub streamed: usize,
    /// Weight bytes on the device under this plan, including the streaming buffer.
    pub device_bytes: u64,
    /// Whether even the fully streamed model needs more than the room given.
    pub over_room: bool,
}

fn block_bytes<B: Movable>(block: &B) -> u64 {
    let mut bytes = 0;
    // Counting cannot fail: the function returns its input.
    let _ = block.map_tensors(&mut |t| {
        bytes += tensor_bytes(t);
        Ok(t.clone())
    });
    bytes
}

impl Flux2Transformer {
    /// This model with every weight replaced by `f(weight)`, each weight visited exactly once.
    pub fn map_tensors(&self, f: TensorFn<'_>) -> CResult<Self> {
        let Flux2Transformer {
            img_in,
            txt_in,
            time_in,
            double_stream_modulation_img,
            double_stream_modulation_txt,
            single_stream_modulation,
            double_blocks,
            single_blocks,
            final_adaln,
            final_linear,
            cfg,
            dtype,
            rope_cache: _,
            stage: _,
        } = self;
        Ok(Flux2Transformer {
            img_in: linear(img_in, f)?,
            txt_in: linear(txt_in, f)?,
            time_in: time_in.map_tensors(f)?,
            double_stream_modulation_img: double_stream_modulation_img.map_tensors(f)?,
            double_stream_modulation_txt: double_stream_modulation_txt.map_tensors(f)?,
            single_stream_modulation: single_stream_modulation.map_tensors(f)?,
            double_blocks: double_blocks
                .iter()
                .map(|b| b.map_tensors(f))
                .collect::<CResult<_>>()?,
            single_blocks: single_blocks
                .iter()
                .map(|b| b.map_tensors(f))
                .collect::<CResult<_>>()?,
            final_adaln: linear(final_adaln, f)?,
            final_linear: linear(final_linear, f)?,
            cfg: cfg.clone(),
            dtype: *dtype,
            // RoPE tables are per device: the moved model builds its own.
            rope_cache: Default::default(),
            // Other tensors: nothing of theirs is page-locked yet.
            stage: Default::default(),
        })
    }

    /// A copy with every weight on `device` (bit-identical values). Weights already there are
    /// shared, not copied.
    pub fn to_device(&self, device: &Device) -> CResult<Self> {
        self.map_tensors(&mut |t| move_tensor(t, device))
    }

    /// How many weight tensors the model holds.
    pub fn tensor_count(&self) -> usize {
        let mut n = 0;
        let _ = self.map_tensors(&mut |t| {
            n += 1;
            Ok(t.clone())
        });
        n
    }

    /// Weight bytes per tier, as the model is placed now.
    pub fn weight_bytes(&self) -> WeightBytes {
        let mut bytes = WeightBytes::default();
        let _ = self.map_tensors(&mut |t| {
            bytes.add(t);
            Ok(t.clone())
        });
        bytes
    }

    /// The device the model computes on: where its input projection lives (blocks may be in host
    /// memory when it streams).
    pub fn device(&self) -> Device {
        self.img_in.device()
    }

    /// Host memory this model's streamed blocks hold page-locked (see [`crate::staging`]).
    pub fn stage_stats(&self) -> crate::staging::StageStats {
        self.stage.stats()
    }

    /// Blocks that are not on the compute device, so are copied to it at every forward.
    pub fn streamed_blocks(&self) -> usize {
        let device = self.device();
        let off = |p: &Tensor| !p.device().same_device(&device);
        self.double_blocks.iter().filter(|b| off(b.probe())).count()
            + self.single_blocks.iter().filter(|b| off(b.probe())).count()
    }

    /// Places the model for streaming: the non-block weights and the blocks `plan` keeps on
    /// `device`, the other blocks in host memory. `BlockPlan::all` gives a fully resident model.
    pub fn place(&self, device: &Device, plan: BlockPlan) -> CResult<Self> {
        let host = Device::Cpu;
        let mut placed = self.clone();
        let base = |l: &QLinear| linear(l, &mut |t| move_tensor(t, device));
        placed.img_in = base(&self.img_in)?;
        placed.txt_in = base(&self.txt_in)?;
        placed.final_adaln = base(&self.final_adaln)?;
        placed.final_linear = base(&self.final_linear)?;
        let mut to_dev = |t: &Tensor| move_tensor(t, device);
        placed.time_in = self.time_in.map_tensors(&mut to_dev)?;
        placed.double_stream_modulation_img =
            self.double_stream_modulation_img.map_tensors(&mut to_dev)?;
        placed.double_stream_modulation_txt =
            self.double_stream_modulation_txt.map_tensors(&mut to_dev)?;
        placed.single_stream_modulation = self.single_stream_modulation.map_tensors(&mut to_dev)?;
        placed.double_blocks = self
            .double_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let target = if i < plan.resident_double {
                    device
                } else {
                    &host
                };
                b.map_tensors(&mut |t| move_tensor(t, target))
            })
            .collect::<CResult<_>>()?;
        placed.single_blocks = self
            .single_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let target = if i < plan.resident_single {
                    device
                } else {
                    &host
                };
                b.map_tensors(&mut |t| move_tensor(t, target))
            })
            .collect::<CResult<_>>()?;
        Ok(placed)
    }

    /// Bytes of each double block and of each single block.
    pub fn block_bytes(&self) -> (Vec<u64>, Vec<u64>) {
        (
            self.double_blocks.iter().map(block_bytes).collect(),
            self.single_blocks.iter().map(block_bytes).collect(),
        )
    }

    /// Chooses how many blocks stay on the device when the weights may take `weight_room` device
    /// bytes: everything when it all fits; otherwise the non-block weights, room for the streamed
    /// block in use and the one being copied, and as many leading double blocks, then leading single
    /// blocks, as fit in what is left.
    pub fn plan_blocks(&self, weight_room: u64) -> StreamPlan {
        let (doubles, singles) = self.block_bytes();
        let total = self.weight_bytes().total();
        let blocks_total: u64 = doubles.iter().chain(&singles).sum();
        let base = total - blocks_total;
        if total <= weight_room {
            return StreamPlan {
                blocks: BlockPlan::all(self),
                streamed: 0,
                device_bytes: total,
                over_room: false,
            };
        }
        let buffer = 2 * doubles.iter().chain(&singles).copied().max().unwrap_or(0);
        let mut left = weight_room.saturating_sub(base + buffer);
        let resident_double = leading_that_fit(&doubles, &mut left);
        // What the double blocks leave may still hold smaller single blocks.
        let resident_single = leading_that_fit(&singles, &mut left);
        let resident: u64 = doubles[..resident_double].iter().sum::<u64>()
            + singles[..resident_single].iter().sum::<u64>();
        let device_bytes = base + buffer + resident;
        StreamPlan {
            blocks: BlockPlan {
                resident_double,
                resident_single,
            },
            streamed: doubles.len() + singles.len() - resident_double - resident_single,
            device_bytes,
            over_room: device_bytes > weight_room,
        }
    }

    /// An estimate of the activation bytes one forward needs on the device for `batch` images of
    /// `img_tokens` tokens and a prompt of `txt_tokens` tokens, with attention computed `chunk`
    /// query rows at a time (`None`: all at once). Deliberately generous (about 1.25x what the
    /// largest block holds at once): residual streams, the single block's fused projection, q/k/v
    /// in f32 for RoPE, and the f32 score and probability matrices.
    pub fn activation_bytes(
        &self,
        batch: usize,
        img_tokens: usize,
        txt_tokens: usize,
        chunk: Option<usize>,
    ) -> u64 {
        let (b, l) = (batch as u64, (img_tokens + txt_tokens) as u64);
        let d = self.cfg.hidden_size() as u64;
        let mlp = self.cfg.mlp_hidden() as u64;
        let heads = self.cfg.num_attention_heads as u64;
        let s = self.dtype.size_in_bytes() as u64;
        // The plain path chunks by itself past its score limit (see `model::attention`).
        let rows = chunk
            .or_else(|| {
                crate::flux2::score_chunk_rows(
                    batch,
                    heads as usize,
                    l as usize,
                    crate::flux2::PLAIN_SCORE_LIMIT,
                )
            })
            .map_or(l, |c| (c as u64).clamp(1, l));
        // x, cat input, out, modulated x + the (3d + 2·mlp) projection, in the dtype.
        let streams = b * l * (6 * d + 2 * mlp) * s;
        // q, k, v in f32 for RoPE, and their dtype copies.
        let qkv = b * l * 3 * d * (4 + s);
        // scores and probabilities in f32, probabilities in the dtype.
        let scores = b * heads * rows * l * (8 + s);
        (streams + qkv + scores) * 5 / 4
    }
}
