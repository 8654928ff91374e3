//! Images in with the native nodes on the tiny models: VaeEncode (crop, alpha mask), the
//! Sampler's strength and inpainting mask, and their errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use veetance_core::{
    validate, Budgets, CollectSink, Engine, Graph, Link, NodeRegistry, PortRef, RunEnv, RunError,
    RunOptions, RunReport, Value,
};
use veetance_nodes_flux2::values::Latent;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn registry() -> Arc<NodeRegistry> {
    let mut reg = NodeRegistry::new();
    veetance_nodes_basic::register(&mut reg);
    veetance_nodes_flux2::register(&mut reg);
    Arc::new(reg)
}

fn s(text: &str) -> Value {
    Value::string(text)
}

fn tiny(path: &str) -> Value {
    s(&repo()
        .join("assets/tiny-models")
        .join(path)
        .display()
        .to_string())
}

/// An RGBA PNG of `width × height` in `dir`: a colour gradient, transparent on the left half
/// (to be repainted), opaque on the right.
fn rgba_png(dir: &Path, width: u32, height: u32) -> PathBuf {
    let mut data = Vec::with_capacity((width * height * 4) as usize);
    for y in 0..height {
        for x in 0..width {
            let alpha = if x < width / 2 { 0.0 } else { 1.0 };
            data.extend_from_slice(&[
                x as f32 / width as f32,
                y as f32 / height as f32,
                ((x + y) % 7) as f32 / 7.0,
                alpha,
            ]);
        }
    }
    let path = dir.join("rgba.png");
    veetance_nodes_basic::write_png(&path, &data, width, height, 4, &[]).unwrap();
    path
}

/// LoadImage → VaeEncode (mask from alpha) → Sampler (strength) → VaeDecode.
fn inpaint_graph(image: &Path, strength: f64) -> Graph {
    let mut g = Graph::new();
    let mut node = |id: &str, ty: &str, p: &[(&str, Value)]| {
        let p: BTreeMap<String, Value> =
            p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        g.add_node(id, ty, p).unwrap();
    };
    node(
        "model",
        "LoadDiffusionModel",
        &[(
            "file",
            tiny("diffusion_models/flux2-klein-tiny.safetensors"),
        )],
    );
    node(
        "text_encoder",
        "LoadTextEncoder",
        &[("file", tiny("text_encoders/qwen3-tiny.safetensors"))],
    );
    node("prompt", "TextEncode", &[("text", s("a fox"))]);
    node("vae", "LoadVae", &[("file", tiny("vae/flux2-vae-tiny"))]);
    node(
        "image",
        "LoadImage",
        &[("path", s(&image.display().to_string()))],
    );
    node("encode", "VaeEncode", &[("mask_from", s("alpha"))]);
    node(
        "sampler",
        "Sampler",
        &[
            ("steps", Value::Int(4)),
            ("strength", Value::Float(strength)),
        ],
    );
    node("decode", "VaeDecode", &[]);
    for (from, to) in [
        (("text_encoder", "text_encoder"), ("prompt", "text_encoder")),
        (("vae", "vae"), ("encode", "vae")),
        (("image", "image"), ("encode", "image")),
        (("model", "model"), ("sampler", "model")),
        (("prompt", "conditioning"), ("sampler", "positive")),
        (("encode", "latent"), ("sampler", "latent")),
        (("sampler", "latent"), ("decode", "latent")),
        (("vae", "vae"), ("decode", "vae")),
    ] {
        g.add_link(Link {
            from: PortRef::new(from.0, from.1),
            to: PortRef::new(to.0, to.1),
        });
    }
    g
}

fn env(out: &Path) -> RunEnv {
    RunEnv {
        out_dir: out.to_path_buf(),
        models_dir: repo().join("assets/tiny-models"),
        ..RunEnv::default()
    }
}

fn run(graph: &Graph, env: &RunEnv) -> Result<RunReport, RunError> {
    if let Err(errors) = validate(graph, &registry(), env) {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        panic!("validation failed: {text:#?}");
    }
    let mut engine = Engine::new(registry(), Budgets::default());
    let options = RunOptions {
        targets: Some(vec!["decode".into(), "encode".into(), "sampler".into()]),
        env: env.clone(),
        cancel: Default::default(),
    };
    engine.run(graph, &options, &CollectSink::default())
}

fn latent(report: &RunReport, node: &str) -> Latent {
    let Value::Object(o) = &report.outputs[node][0] else {
        panic!("{node}: not an object")
    };
    o.downcast::<Latent>().expect("a latent").clone()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn vae_encode_crops_to_whole_tokens_and_takes_the_mask_from_alpha() {
    let dir = tempfile::tempdir().unwrap();
    // 70×66 pixels: cropped, centred, to 64×64 (4×4 tokens of 16 pixels).
    let png = rgba_png(dir.path(), 70, 66);
    let report = run(&inpaint_graph(&png, 0.5), &env(dir.path())).unwrap();
    let encoded = latent(&report, "encode");
    assert_eq!(encoded.samples.dims(), &[1, 128, 4, 4]);
    let mask = encoded.noise_mask.expect("a mask from the alpha channel");
    assert_eq!(mask.dims(), &[1, 64, 64]);
    // The crop starts at x = 3 (70 % 16 = 6, halved): columns 0..35 of the original are
    // transparent, so the mask's first 35 − 3 = 32 columns are 1 (repaint), the rest 0.
    let row: Vec<f32> = values(&mask)[..64].to_vec();
    assert!(row[..32].iter().all(|&v| v == 1.0), "{row:?}");
    assert!(row[32..].iter().all(|&v| v == 0.0), "{row:?}");
}

#[test]
fn inpainting_keeps_the_unmasked_tokens_exactly_and_repaints_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let png = rgba_png(dir.path(), 64, 64);
    let report = run(&inpaint_graph(&png, 0.75), &env(dir.path())).unwrap();
    let encoded = values(&latent(&report, "encode").samples);
    let sampled = values(&latent(&report, "sampler").samples);
    // (1, 128, 4, 4): token column x of row y of channel c at c*16 + y*4 + x. Columns 2 and 3
    // are opaque (kept), 0 and 1 transparent (repainted); at 4 tokens over 64 pixels the bilinear
    // resize samples pixels 16x+7 and 16x+8, so no token is half-masked.
    let (mut kept, mut repainted) = (0, 0);
    for c in 0..128 {
        for y in 0..4 {
            for x in 0..4 {
                let i = c * 16 + y * 4 + x;
                if x >= 2 {
                    assert_eq!(
                        sampled[i].to_bits(),
                        encoded[i].to_bits(),
                        "token {c},{y},{x}"
                    );
                    kept += 1;
                } else if (sampled[i] - encoded[i]).abs() > 1e-3 {
                    repainted += 1;
                }
            }
        }
    }
    assert_eq!(kept, 128 * 8);
    assert!(
        repainted > 128 * 8 * 9 / 10,
        "only {repainted} tokens changed"
    );
}

#[test]
fn a_strength_that_leaves_no_step_is_an_error_naming_the_param() {
    let dir = tempfile::tempdir().unwrap();
    let png = rgba_png(dir.path(), 64, 64);
    let err = run(&inpaint_graph(&png, 0.0), &env(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("strength") && err.contains("no step"), "{err}");
}

#[test]
fn alpha_mask_on_an_rgb_image_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = inpaint_graph(
        &repo().join("assets/tiny-models/input/edit-reference.png"),
        0.5,
    );
    g.set_param("encode", "mask_from", s("alpha")).unwrap();
    let err = run(&g, &env(dir.path())).unwrap_err().to_string();
    assert!(err.contains("alpha") && err.contains("RGBA"), "{err}");
}
