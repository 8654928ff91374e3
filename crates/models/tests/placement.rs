//! Moving models between devices and streaming their blocks, on the tiny models of
//! assets/tiny-models.
//!
//! On a CPU-only machine a move to the CPU shares the tensors, so these tests check what a move
//! is built from: the walk reaches every tensor the loader produced (counts and bytes), a model
//! rebuilt from deep copies of its tensors computes the same bits, and a model placed for
//! streaming (blocks left in host memory) computes the same bits as the resident one. The `cuda`
//! tests at the end run the real device moves (`cargo test -p veetance-models --features cuda
//! --test placement`).

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use veetance_models::flux2::{self, BlockPlan, Flux2Transformer, Layout};
use veetance_models::placement::{is_out_of_memory, tensor_bytes};
use veetance_models::qwen3::{self, TextEncoder, TextEncoderFiles};
use veetance_models::sampling::{image_ids, text_ids};
use veetance_models::vae;
use veetance_models::weights::{build_model_recorded, Source, WeightFiles};

fn tiny(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/tiny-models")
        .join(path)
}

const TRANSFORMER: &str = "diffusion_models/flux2-klein-tiny.safetensors";

/// The tiny transformer and the tensors its loader handed out.
fn transformer_recorded(device: &Device) -> (Flux2Transformer, Vec<(String, Tensor)>) {
    let files = WeightFiles::open_path(&tiny(TRANSFORMER)).unwrap();
    let layout = flux2::detect_layout(&files).unwrap();
    let cfg = flux2::infer_config(&files, &layout).unwrap();
    let Layout::Bfl { prefix } = layout else {
        panic!("the tiny transformer is in BFL layout")
    };
    build_model_recorded(
        Arc::new(files),
        move |n| Source::Name(format!("{prefix}{n}")),
        DType::F32,
        device,
        |vb| {
            Flux2Transformer::new(
                &cfg,
                veetance_models::qlinear::WeightBuilder::from_var_builder(
                    vb,
                    veetance_models::qlinear::LinearFormat::AsStored,
                ),
            )
        },
    )
    .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// One forward of the transformer on fixed pseudo-random inputs (4x4 latent tokens, 6 text tokens).
fn velocity(model: &Flux2Transformer, device: &Device) -> Vec<u32> {
    let cfg = model.config();
    let (h, w, n_txt) = (4, 4, 6);
    let ramp = |n: usize, scale: f32| -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.618).sin() * scale).collect()
    };
    let img = Tensor::from_vec(
        ramp(h * w * cfg.in_channels, 1.0),
        (1, h * w, cfg.in_channels),
        device,
    )
    .unwrap();
    let txt = Tensor::from_vec(
        ramp(n_txt * cfg.joint_attention_dim, 0.5),
        (1, n_txt, cfg.joint_attention_dim),
        device,
    )
    .unwrap();
    let t = Tensor::new(&[0.7f32], device).unwrap();
    let out = model
        .forward(
            &img,
            &image_ids(h, w, device).unwrap(),
            &txt,
            &text_ids(n_txt, device).unwrap(),
            &t,
        )
        .unwrap();
    bits(&out)
}

#[test]
fn transformer_walk_visits_every_tensor_the_loader_produced() {
    let (model, loaded) = transformer_recorded(&Device::Cpu);
    assert!(!loaded.is_empty());
    assert_eq!(model.tensor_count(), loaded.len());
    let loaded_bytes: u64 = loaded.iter().map(|(_, t)| tensor_bytes(t)).sum();
    let bytes = model.weight_bytes();
    assert_eq!(bytes.total(), loaded_bytes);
    assert_eq!(
        bytes.host, loaded_bytes,
        "a CPU model holds everything in host memory"
    );
}

#[test]
fn transformer_rebuilt_from_copies_of_every_tensor_gives_identical_bits() {
    let (model, _) = transformer_recorded(&Device::Cpu);
    let mut copied = 0;
    let copy = model
        .map_tensors(&mut |t| {
            copied += 1;
            t.copy()
        })
        .unwrap();
    assert_eq!(copied, model.tensor_count());
    let moved = model.to_device(&Device::Cpu).unwrap();
    let reference = velocity(&model, &Device::Cpu);
    assert_eq!(velocity(&copy, &Device::Cpu), reference);
    assert_eq!(velocity(&moved, &Device::Cpu), reference);
}

#[test]
fn streamed_transformer_gives_the_resident_bits() {
    let (model, _) = transformer_recorded(&Device::Cpu);
    let reference = velocity(&model, &Device::Cpu);
    let blocks = model.config().num_layers + model.config().num_single_layers;
    assert!(blocks >= 2, "the tiny model has blocks to stream");
    // No room at all: every block streamed; the plan says it cannot fit.
    let plan = model.plan_blocks(0);
    assert_eq!(plan.blocks, BlockPlan::none());
    assert_eq!(plan.streamed, blocks);
    assert!(plan.over_room);
    let streamed = model.place(&Device::Cpu, plan.blocks).unwrap();
    assert_eq!(velocity(&streamed, &Device::Cpu), reference);
    // Plenty of room: nothing streamed.
    let plan = model.plan_blocks(u64::MAX);
    assert_eq!(plan.blocks, BlockPlan::all(&model));
    assert_eq!(plan.streamed, 0);
    assert!(!plan.over_room);
    // Room for the base, the two-block buffer and one block: exactly one block stays resident.
    let total = model.weight_bytes().total();
    let full = model.plan_blocks(total);
    assert_eq!(full.streamed, 0);
    let none = model.plan_blocks(0);
    let (doubles, singles) = model.block_bytes();
    assert_eq!(doubles.len() + singles.len(), blocks);
    let largest = doubles.iter().chain(&singles).copied().max().unwrap();
    let base = total - doubles.iter().chain(&singles).sum::<u64>();
    assert_eq!(
        none.device_bytes,
        base + 2 * largest,
        "base weights and a two-block buffer"
    );
    // One byte short of everything: the room left after the base and the buffer is one byte less
    // than a double block, so no double block stays, but a (smaller) single block does.
    assert!(singles[0] < doubles[0], "klein's single blocks are smaller");
    let short = model.plan_blocks(total - 1);
    assert_eq!(
        short.blocks,
        BlockPlan {
            resident_double: 0,
            resident_single: 1
        }
    );
    assert_eq!(short.streamed, blocks - 1);
    assert!(!short.over_room);
    assert!(short.device_bytes < total);
    let partly = model.place(&Device::Cpu, short.blocks).unwrap();
    assert_eq!(velocity(&partly, &Device::Cpu), reference);
}

#[test]
fn activation_estimate_grows_with_tokens_and_shrinks_with_chunking() {
    let (model, _) = transformer_recorded(&Device::Cpu);
    let small = model.activation_bytes(1, 64, 16, None);
    let large = model.activation_bytes(1, 4096, 16, None);
    let chunked = model.activation_bytes(1, 4096, 16, Some(256));
    assert!(small > 0 && large > small && chunked < large);
}

fn text_encoder() -> TextEncoder {
    let files = TextEncoderFiles {
        weights: tiny("text_encoders/qwen3-tiny.safetensors"),
        tokenizer: Some(tiny("text_encoders/qwen3-tiny.tokenizer.json")),
        config: Some(tiny("text_encoders/qwen3-tiny.config.json")),
    };
    let preset = qwen3::Config::from_file(&tiny("text_encoders/qwen3-tiny.config.json")).unwrap();
    TextEncoder::load(&files, Some(&preset), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn text_encoder_moved_or_streamed_gives_identical_bits() {
    let encoder = text_encoder();
    let reference = bits(&encoder.encode("a red fox in the snow").unwrap().hidden);
    let mut copied = 0;
    let copy = encoder
        .map_tensors(&mut |t| {
            copied += 1;
            t.copy()
        })
        .unwrap();
    assert_eq!(copied, encoder.tensor_count());
    assert_eq!(
        bits(&copy.encode("a red fox in the snow").unwrap().hidden),
        reference
    );
    let moved = encoder.to_device(&Device::Cpu).unwrap();
    assert_eq!(
        bits(&moved.encode("a red fox in the snow").unwrap().hidden),
        reference
    );
    let (streamed, n) = encoder.place_within(&Device::Cpu, 0).unwrap();
    assert_eq!(
        n,
        encoder.config().layers_needed(),
        "no room: every layer streamed"
    );
    assert_eq!(
        bits(&streamed.encode("a red fox in the snow").unwrap().hidden),
        reference
    );
    let (_, n) = encoder.place_within(&Device::Cpu, u64::MAX).unwrap();
    assert_eq!(n, 0);
    assert_eq!(encoder.weight_bytes().device, 0);
}

fn tiny_vae() -> vae::Flux2Vae {
    vae::load_vae(
        &tiny("vae/flux2-vae-tiny"),
        None,
        vae::Parts::EncoderAndDecoder,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn tiny_latent(vae_channels: usize) -> Tensor {
    let n = 4 * vae_channels * 4 * 4;
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos()).collect();
    Tensor::from_vec(v, (1, 4 * vae_channels, 4, 4), &Device::Cpu).unwrap()
}

#[test]
fn vae_rebuilt_from_copies_of_every_tensor_gives_identical_bits() {
    let model = tiny_vae();
    assert!(model.tensor_count() > 0);
    let cfg = vae::Config::from_file(&tiny("vae/flux2-vae-tiny/config.json"))
        .unwrap_or_else(|_| vae::Config::flux2());
    let latent = tiny_latent(cfg.latent_channels);
    let reference = bits(&model.decode(&latent, None).unwrap());
    let (copy, count) = model.map_tensors(&mut |t| t.copy()).unwrap();
    assert_eq!(count, model.tensor_count());
    assert_eq!(copy.tensor_count(), model.tensor_count());
    assert_eq!(bits(&copy.decode(&latent, None).unwrap()), reference);
    let moved = model.to_device(&Device::Cpu).unwrap();
    assert_eq!(bits(&moved.decode(&latent, None).unwrap()), reference);
    assert_eq!(model.weight_bytes().host, moved.weight_bytes().host);
}

#[test]
fn a_vae_built_without_its_tensor_list_says_it_cannot_move() {
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let model = vae::Flux2Vae::new(&vae::Config::flux2(), vae::Parts::Decoder, vb).unwrap();
    let err = model.to_device(&Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("load_vae"), "{err}");
}

#[test]
fn out_of_memory_errors_are_recognised_by_their_text() {
    assert!(is_out_of_memory(
        "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
    ));
    assert!(is_out_of_memory("Metal: Out of memory allocating buffer"));
    assert!(!is_out_of_memory("shape mismatch in matmul"));
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Real device moves; run on a GPU machine.
    use super::*;

    fn gpu() -> Option<Device> {
        Device::new_cuda(0).ok()
    }

    #[test]
    fn cuda_streamed_transformer_gives_the_resident_bits() {
        let Some(gpu) = gpu() else {
            eprintln!("no CUDA device; skipped");
            return;
        };
        let (host, _) = transformer_recorded(&Device::Cpu);
        let resident = host.to_device(&gpu).unwrap();
        assert_eq!(resident.weight_bytes().host, 0);
        let reference = velocity(&resident, &gpu);
        let streamed = host.place(&gpu, BlockPlan::none()).unwrap();
        assert!(streamed.streamed_blocks() > 0);
        assert_eq!(velocity(&streamed, &gpu), reference);
        let partly = host
            .place(
                &gpu,
                BlockPlan {
                    resident_double: 1,
                    resident_single: 0,
                },
            )
            .unwrap();
        assert_eq!(velocity(&partly, &gpu), reference);
    }

    #[test]
    fn cuda_round_trip_through_host_memory_is_bit_identical() {
        let Some(gpu) = gpu() else {
            eprintln!("no CUDA device; skipped");
            return;
        };
        let (host, _) = transformer_recorded(&Device::Cpu);
        let on_gpu = host.to_device(&gpu).unwrap();
        let back = on_gpu
            .to_device(&Device::Cpu)
            .unwrap()
            .to_device(&gpu)
            .unwrap();
        assert_eq!(velocity(&back, &gpu), velocity(&on_gpu, &gpu));
        let encoder = text_encoder().to_device(&gpu).unwrap();
        let round = encoder
            .to_device(&Device::Cpu)
            .unwrap()
            .to_device(&gpu)
            .unwrap();
        assert_eq!(
            bits(&round.encode("a fox").unwrap().hidden),
            bits(&encoder.encode("a fox").unwrap().hidden)
        );
        let (streamed, n) = text_encoder().place_within(&gpu, 0).unwrap();
        assert!(n > 0);
        assert_eq!(
            bits(&streamed.encode("a fox").unwrap().hidden),
            bits(&encoder.encode("a fox").unwrap().hidden)
        );
        let model = tiny_vae().to_device(&gpu).unwrap();
        let latent = tiny_latent(32).to_device(&gpu).unwrap();
        let round = model
            .to_device(&Device::Cpu)
            .unwrap()
            .to_device(&gpu)
            .unwrap();
        assert_eq!(
            bits(&round.decode(&latent, None).unwrap()),
            bits(&model.decode(&latent, None).unwrap())
        );
    }
}
