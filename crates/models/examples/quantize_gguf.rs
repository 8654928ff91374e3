//! Converts a safetensors checkpoint to GGUF the way ComfyUI-GGUF (transformer) and llama.cpp
//! (Qwen3) lay it out, for the GPU comparison in `.verify/gpu/quant.sh`.
//!
//! ```text
//! quantize_gguf flux  <in.safetensors> <out.gguf> <Q8_0|Q4_K|...>
//! quantize_gguf qwen3 <in.safetensors> <out.gguf> <Q8_0|Q4_K|...>
//! ```
//!
//! flux: BFL names (a `model.diffusion_model.` prefix is stripped, as ComfyUI-GGUF's converter
//! does); 1-D and <= 1024-element tensors F32, `img_in`/`txt_in`/`time_in`/`final_layer` F16, rows
//! that are not whole blocks F16, the rest in the asked type. qwen3: llama.cpp names and `qwen3.*`
//! metadata read from the shapes (eps 1e-6, RoPE base 1e6), norms F32, the rest (embedding
//! included) in the asked type. Tensors are quantized on all cores.

use std::collections::HashMap;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use veetance_models::gguf;

fn parse_type(s: &str) -> Option<GgmlDType> {
    Some(match s {
        "Q8_0" => GgmlDType::Q8_0,
        "Q4_0" => GgmlDType::Q4_0,
        "Q5_0" => GgmlDType::Q5_0,
        "Q4_K" => GgmlDType::Q4K,
        "Q5_K" => GgmlDType::Q5K,
        "Q6_K" => GgmlDType::Q6K,
        "F16" => GgmlDType::F16,
        _ => return None,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, kind, input, output, qtype] = args.as_slice() else {
        return Err("usage: quantize_gguf <flux|qwen3> <in.safetensors> <out.gguf> <type>".into());
    };
    let q = parse_type(qtype).ok_or(format!("unknown type {qtype}"))?;
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(input, &Device::Cpu)?;
    let mut jobs: Vec<(String, String, GgmlDType)> = Vec::new();
    let mut metadata: Vec<(String, gguf_file::Value)> = Vec::new();
    match kind.as_str() {
        "flux" => {
            metadata.push((
                "general.architecture".into(),
                gguf_file::Value::String("flux".into()),
            ));
            for (name, t) in &tensors {
                let out = name
                    .strip_prefix("model.diffusion_model.")
                    .unwrap_or(name)
                    .to_string();
                jobs.push((
                    name.clone(),
                    out.clone(),
                    gguf::comfy_flux_type(&out, t.dims(), q),
                ));
            }
        }
        "qwen3" => {
            let shape = |n: &str| tensors.get(n).map(|t| t.dims().to_vec());
            let embed = shape("model.embed_tokens.weight").ok_or("no model.embed_tokens.weight")?;
            let head_dim = shape("model.layers.0.self_attn.q_norm.weight").ok_or("no q_norm")?[0];
            let q_rows = shape("model.layers.0.self_attn.q_proj.weight").ok_or("no q_proj")?[0];
            let k_rows = shape("model.layers.0.self_attn.k_proj.weight").ok_or("no k_proj")?[0];
            let ff = shape("model.layers.0.mlp.gate_proj.weight").ok_or("no gate_proj")?[0];
            let layers = tensors
                .keys()
                .filter_map(|n| {
                    n.strip_prefix("model.layers.")?
                        .split('.')
                        .next()?
                        .parse::<u32>()
                        .ok()
                })
                .max()
                .map_or(0, |m| m + 1);
            let u = |v: usize| gguf_file::Value::U32(v as u32);
            metadata.extend([
                (
                    "general.architecture".into(),
                    gguf_file::Value::String("qwen3".into()),
                ),
                ("qwen3.block_count".into(), gguf_file::Value::U32(layers)),
                ("qwen3.embedding_length".into(), u(embed[1])),
                ("qwen3.feed_forward_length".into(), u(ff)),
                ("qwen3.attention.head_count".into(), u(q_rows / head_dim)),
                ("qwen3.attention.head_count_kv".into(), u(k_rows / head_dim)),
                ("qwen3.attention.key_length".into(), u(head_dim)),
                (
                    "qwen3.attention.layer_norm_rms_epsilon".into(),
                    gguf_file::Value::F32(1e-6),
                ),
                ("qwen3.rope.freq_base".into(), gguf_file::Value::F32(1e6)),
            ]);
            for (name, t) in &tensors {
                if name == "lm_head.weight" {
                    continue;
                }
                jobs.push((
                    name.clone(),
                    veetance_models::qwen3::llama_cpp_name(name),
                    gguf::llama_cpp_type(t.dims(), q),
                ));
            }
        }
        other => return Err(format!("unknown model kind {other} (flux or qwen3)").into()),
    }
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let chunk = jobs.len().div_ceil(threads).max(1);
    let start = std::time::Instant::now();
    let quantized: Vec<(String, QTensor)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                let tensors = &tensors;
                s.spawn(move || {
                    part.iter()
                        .map(|(name, out, ty)| {
                            let t = tensors[name].to_dtype(DType::F32)?;
                            Ok((out.clone(), QTensor::quantize(&t, *ty)?))
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| candle_core::Error::Msg("worker panicked".into()))?
            })
            .collect::<candle_core::Result<Vec<Vec<_>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, t) in &quantized {
        *counts.entry(format!("{:?}", t.dtype())).or_default() += 1;
    }
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(output)?);
    gguf_file::write(&mut file, &meta, &refs)?;
    println!(
        "{output}: {} tensors {counts:?}, quantized in {:.1} s",
        refs.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
