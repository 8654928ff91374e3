//! VRAM-aware execution on the tiny models, on the CPU: the nodes are run directly with a device
//! room (what the scheduler will set from --vram-budget) to force the memory-saving paths, and
//! their outputs are compared bit for bit with the unconstrained run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use veetance_core::{
    CancelToken, CollectSink, Event, ExecContext, NodeDef, Object, Params, Payload, PortType,
    RunEnv, Value,
};
use veetance_models::{flux2, qwen3, vae};
use veetance_nodes_flux2::decode::VaeDecode;
use veetance_nodes_flux2::encode::TextEncode;
use veetance_nodes_flux2::sampler::Sampler;
use veetance_nodes_flux2::values::{
    mem_of, Conditioning, Latent, ModelHandle, ModelPatches, TextEncoderHandle, VaeHandle,
};

fn tiny(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/tiny-models")
        .join(path)
}

fn env() -> RunEnv {
    RunEnv {
        out_dir: std::env::temp_dir(),
        models_dir: tiny(""),
        run_index: 0,
        workflow: None,
        ..RunEnv::default()
    }
}

/// The node's default params with `overrides`.
fn params(node: &dyn NodeDef, overrides: &[(&str, Value)]) -> Params {
    Params(
        node.schema()
            .params
            .iter()
            .map(|p| {
                let value = overrides
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map_or_else(|| p.kind.default_value(), |(_, v)| v.clone());
                (p.name.clone(), value)
            })
            .collect(),
    )
}

/// Runs `node` with `inputs` and a device room; returns its outputs and the warnings it gave.
fn execute(
    node: &dyn NodeDef,
    overrides: &[(&str, Value)],
    inputs: Vec<(&str, Value)>,
    room: Option<u64>,
) -> (Vec<Value>, Vec<String>) {
    let env = env();
    let cancel = CancelToken::default();
    let sink = CollectSink::default();
    let mut ctx = ExecContext::new(
        "node",
        params(node, overrides),
        inputs,
        &env,
        &cancel,
        &sink,
    )
    .with_device_room(room);
    let out = node.execute(&mut ctx).unwrap();
    let warnings = sink
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::Warning { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    (out, warnings)
}

fn model() -> Value {
    let model = flux2::load_transformer(
        &tiny("diffusion_models/flux2-klein-tiny.safetensors"),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    Value::Object(Object::new(
        PortType::Model,
        ModelHandle {
            weight_bytes: mem_of(model.weight_bytes()),
            model: Arc::new(model),
            device: Device::Cpu,
            file: "flux2-klein-tiny.safetensors".into(),
            patches: ModelPatches::default(),
            offloaded: false,
        },
    ))
}

fn text_encoder() -> Value {
    let encoder = qwen3::TextEncoder::load(
        &qwen3::TextEncoderFiles {
            weights: tiny("text_encoders/qwen3-tiny.safetensors"),
            tokenizer: Some(tiny("text_encoders/qwen3-tiny.tokenizer.json")),
            config: Some(tiny("text_encoders/qwen3-tiny.config.json")),
        },
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    Value::Object(Object::new(
        PortType::TextEncoder,
        TextEncoderHandle {
            weight_bytes: mem_of(encoder.weight_bytes()),
            encoder: Arc::new(encoder),
            device: Device::Cpu,
            file: "qwen3-tiny.safetensors".into(),
            offloaded: false,
        },
    ))
}

fn vae_value() -> Value {
    let model = vae::load_vae(
        &tiny("vae/flux2-vae-tiny"),
        None,
        vae::Parts::EncoderAndDecoder,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    Value::Object(Object::new(
        PortType::Vae,
        VaeHandle {
            weight_bytes: mem_of(model.weight_bytes()),
            vae: Arc::new(model),
            device: Device::Cpu,
            file: "flux2-vae-tiny".into(),
            offloaded: false,
        },
    ))
}

fn payload<T: Payload>(v: &Value) -> &T {
    match v {
        Value::Object(o) => o.downcast::<T>().unwrap(),
        other => panic!("not an object: {other:?}"),
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn latent(tokens: usize, channels: usize) -> Value {
    let samples = Tensor::zeros((1, channels, tokens, tokens), DType::F32, &Device::Cpu).unwrap();
    Value::Object(Object::new(
        PortType::Latent,
        Latent {
            samples,
            meta: Vec::new(),
            noise_mask: None,
            home: None,
        },
    ))
}

#[test]
fn a_tiny_device_room_streams_the_models_and_keeps_every_bit() {
    let encode = TextEncode::new();
    let prompt = [("text", Value::String("a red fox in the snow".into()))];
    let (cond, warnings) = execute(
        &encode,
        &prompt,
        vec![("text_encoder", text_encoder())],
        None,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let (cond_streamed, warnings) = execute(
        &encode,
        &prompt,
        vec![("text_encoder", text_encoder())],
        Some(1),
    );
    assert!(
        warnings.iter().any(|w| w.contains("streaming")),
        "TextEncode should say it streams: {warnings:?}"
    );
    assert_eq!(
        bits(&payload::<Conditioning>(&cond[0]).hidden),
        bits(&payload::<Conditioning>(&cond_streamed[0]).hidden)
    );

    let model = model();
    let channels = payload::<ModelHandle>(&model).model.config().in_channels;
    let sampler = Sampler::new();
    let inputs = || {
        vec![
            ("model", model.clone()),
            ("positive", cond[0].clone()),
            ("latent", latent(4, channels)),
        ]
    };
    let steps = [("steps", Value::Int(2)), ("seed", Value::Int(7))];
    let (resident, warnings) = execute(&sampler, &steps, inputs(), None);
    assert!(warnings.is_empty(), "{warnings:?}");
    let (streamed, warnings) = execute(&sampler, &steps, inputs(), Some(1));
    assert!(
        warnings.iter().any(|w| w.contains("streaming")),
        "the sampler should say it streams: {warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("may run out of memory")),
        "a room of one byte cannot hold even a streamed model: {warnings:?}"
    );
    assert_eq!(
        bits(&payload::<Latent>(&resident[0]).samples),
        bits(&payload::<Latent>(&streamed[0]).samples)
    );
    // A room that holds everything: no streaming, no warning.
    let (_, warnings) = execute(&sampler, &steps, inputs(), Some(u64::MAX / 2));
    assert!(warnings.is_empty(), "{warnings:?}");
}

fn image_bits(v: &Value) -> Vec<u32> {
    match v {
        Value::Image(img) => img.data.iter().map(|x| x.to_bits()).collect(),
        other => panic!("not an image: {other:?}"),
    }
}

#[test]
fn vae_decode_tiles_by_itself_when_the_room_is_too_small() {
    let decode = VaeDecode::new();
    let vae = vae_value();
    let channels = 128;
    let tokens = 16;
    let inputs = || {
        vec![
            ("vae", vae.clone()),
            ("latent", latent_noise(tokens, channels)),
        ]
    };
    let (whole, warnings) = execute(&decode, &[], inputs(), None);
    assert!(warnings.is_empty(), "{warnings:?}");
    let (auto, warnings) = execute(&decode, &[], inputs(), Some(1));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("decoding in tiles of 8")),
        "VaeDecode should say it tiles: {warnings:?}"
    );
    let (asked, _) = execute(
        &decode,
        &[("tiled", Value::Bool(true)), ("tile_size", Value::Int(8))],
        inputs(),
        None,
    );
    assert_eq!(image_bits(&auto[0]), image_bits(&asked[0]));
    // Tiles differ from the whole decode only near seams, and not by much.
    let (a, b) = (image_bits(&auto[0]), image_bits(&whole[0]));
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b, "16 tokens in tiles of 8 should have seams");
}

fn latent_noise(tokens: usize, channels: usize) -> Value {
    let n = channels * tokens * tokens;
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 0.5).collect();
    let samples = Tensor::from_vec(v, (1, channels, tokens, tokens), &Device::Cpu).unwrap();
    Value::Object(Object::new(
        PortType::Latent,
        Latent {
            samples,
            meta: Vec::new(),
            noise_mask: None,
            home: None,
        },
    ))
}

#[test]
fn payloads_on_the_host_do_not_move_and_a_moved_latent_comes_back_bit_identical() {
    let model = model();
    let handle = payload::<ModelHandle>(&model);
    assert!(handle.to_host().is_none(), "already in host memory");
    assert!(
        handle.to_device().is_none(),
        "not offloaded: nothing to bring back"
    );
    assert_eq!(handle.mem_bytes().device, 0);
    assert!(handle.mem_bytes().host > 0);
    // A latent offloaded from its home comes back there with the same bits.
    let samples = Tensor::new(&[[1.5f32, -2.25], [3.0, 0.125]], &Device::Cpu).unwrap();
    let offloaded = Latent {
        samples: samples.clone(),
        meta: vec![("k".into(), "v".into())],
        noise_mask: None,
        home: Some(Device::Cpu),
    };
    let back = offloaded.to_device().unwrap().unwrap();
    let back = back.as_any().downcast_ref::<Latent>().unwrap();
    assert_eq!(bits(&back.samples), bits(&samples));
    assert!(back.home.is_none());
    assert_eq!(back.meta, offloaded.meta);
    let cond = Conditioning {
        hidden: samples.clone(),
        prompt: "p".into(),
        references: Vec::new(),
        home: None,
    };
    assert!(cond.to_host().is_none() && cond.to_device().is_none());
}
