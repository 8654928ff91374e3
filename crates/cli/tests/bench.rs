//! `veetance bench` on the CPU with tiny models: it runs, its JSON has every figure, its velocity
//! dump is the transformer's output on the given inputs, and bad flags fail with clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

fn veetance() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veetance"));
    cmd.env_remove("VEETANCE_CONFIG").env_remove("VEETANCE_LOG");
    cmd
}

fn tiny(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/tiny-models")
        .join(rel)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("veetance runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json written")).expect("valid json")
}

#[test]
fn random_tiny_model_runs_and_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let (code, stdout, stderr) = run(veetance()
        .args([
            "bench",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--width",
            "64",
            "--height",
            "64",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--compiled",
            "--json",
        ])
        .arg(&json));
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("forward (16 image + 48 text tokens"),
        "{stdout}"
    );
    assert!(stdout.contains("generation 64x64, 4 steps"), "{stdout}");
    assert!(stdout.contains("no fused path"), "{stdout}");
    let j = read_json(&json);
    assert_eq!(j["device"], "cpu");
    assert_eq!(j["dtype"], "f32");
    assert_eq!(j["attention"], "plain");
    assert_eq!(j["compiled_requested"], true);
    assert_eq!(j["compiled_applied"], false);
    let f = &j["forward"];
    assert_eq!(f["image_tokens"], 16);
    assert_eq!(f["text_tokens"], 48);
    // flops.py's dit_flops(32, 2, 2, 96, 16, 48).
    assert_eq!(f["flop"], 9_469_952u64);
    assert_eq!(f["times_ms"].as_array().unwrap().len(), 2);
    let (med, min) = (
        f["median_ms"].as_f64().unwrap(),
        f["min_ms"].as_f64().unwrap(),
    );
    assert!(min > 0.0 && min <= med, "{f}");
    assert!(f["tflops_median"].as_f64().unwrap() > 0.0);
    let rms = f["velocity_rms"].as_f64().unwrap();
    assert!(rms.is_finite() && rms > 0.0, "velocity rms {rms}");
    assert!(f["peak_bytes"].is_null(), "no device memory on the CPU");
    assert!(j["memory"].is_null());

    let g = &j["generation"];
    assert_eq!(g["steps"], 4);
    assert_eq!(g["steps_each"].as_array().unwrap().len(), 4);
    assert_eq!(g["total"]["times_ms"].as_array().unwrap().len(), 2);
    let total = g["total"]["median_ms"].as_f64().unwrap();
    let parts = g["encode"]["median_ms"].as_f64().unwrap()
        + 4.0 * g["step"]["min_ms"].as_f64().unwrap()
        + g["decode"]["min_ms"].as_f64().unwrap();
    assert!(
        parts <= total * 1.5,
        "stages {parts} ms vs total {total} ms"
    );
    for k in ["encode", "step", "decode", "total"] {
        assert!(g["flop"][k].as_u64().unwrap() > 0, "flop.{k}");
        assert!(g["tflops"][k].as_f64().unwrap() > 0.0, "tflops.{k}");
    }
    assert!(g["image_rms"].as_f64().unwrap().is_finite());
}

/// Writes seeded forward inputs for the tiny transformer (ctx 96).
fn write_inputs(path: &Path, channels: usize) {
    let dev = Device::Cpu;
    let n = 16;
    let img = Tensor::randn(0f32, 1.0, (1, n, channels), &dev).unwrap();
    let txt = Tensor::randn(0f32, 1.0, (1, 48, 96), &dev).unwrap();
    let img_ids = veetance_models::sampling::image_ids(4, 4, &dev).unwrap();
    let txt_ids = veetance_models::sampling::text_ids(48, &dev).unwrap();
    let t = Tensor::new(&[0.75f32], &dev).unwrap();
    let map: HashMap<String, Tensor> = [
        ("img", img),
        ("txt", txt),
        ("img_ids", img_ids),
        ("txt_ids", txt_ids),
        ("t", t),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn bench_files(
    dir: &Path,
    attention: &str,
    inputs: &Path,
    velocity: &Path,
) -> (i32, String, String) {
    run(veetance()
        .args(["bench", "--transformer"])
        .arg(tiny("diffusion_models/flux2-klein-tiny.safetensors"))
        .arg("--text-encoder")
        .arg(tiny("text_encoders/qwen3-tiny.safetensors"))
        .arg("--vae")
        .arg(tiny("vae/flux2-vae-tiny"))
        .args([
            "--device", "cpu", "--width", "32", "--height", "32", "--iters", "1", "--warmup", "0",
        ])
        .args(["--attention", attention, "--inputs"])
        .arg(inputs)
        .arg("--dump-velocity")
        .arg(velocity)
        .arg("--json")
        .arg(dir.join(format!("{attention}.json"))))
}

#[test]
fn files_with_inputs_dump_the_transformers_velocity() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs.safetensors");
    write_inputs(&inputs, 128);
    let plain = dir.path().join("plain.safetensors");
    let (code, stdout, stderr) = bench_files(dir.path(), "plain", &inputs, &plain);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let j = read_json(&dir.path().join("plain.json"));
    assert_eq!(j["forward"]["image_tokens"], 16);
    assert!(j["generation"]["total"]["median_ms"].as_f64().unwrap() > 0.0);

    // The dump is exactly what the model computes on those inputs.
    let dev = Device::Cpu;
    let model = veetance_models::flux2::load_transformer(
        &tiny("diffusion_models/flux2-klein-tiny.safetensors"),
        None,
        DType::F32,
        &dev,
    )
    .unwrap();
    let i = candle_core::safetensors::load(&inputs, &dev).unwrap();
    let expected = model
        .forward(&i["img"], &i["img_ids"], &i["txt"], &i["txt_ids"], &i["t"])
        .unwrap();
    let got = candle_core::safetensors::load(&plain, &dev).unwrap()["velocity"].clone();
    assert_eq!(got.dims(), [1, 16, 128]);
    let diff = (&got - &expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 1e-6,
        "dump differs from the model's output by {diff}"
    );

    // Chunked attention gives the same velocity (the flag reaches the model).
    let chunked = dir.path().join("chunked.safetensors");
    let (code, stdout, stderr) = bench_files(dir.path(), "chunked:5", &inputs, &chunked);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(
        read_json(&dir.path().join("chunked:5.json"))["attention"],
        "chunked:5"
    );
    let other = candle_core::safetensors::load(&chunked, &dev).unwrap()["velocity"].clone();
    let diff = (&other - &got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "chunked differs from plain by {diff}");
}

#[test]
fn inputs_of_the_wrong_width_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs.safetensors");
    write_inputs(&inputs, 64);
    let (code, _, stderr) = bench_files(
        dir.path(),
        "plain",
        &inputs,
        &dir.path().join("v.safetensors"),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("img has 64 channels"), "{stderr}");
}

#[test]
fn bad_flags_are_invalid_input() {
    let (code, _, stderr) = run(veetance().args(["bench", "--device", "cpu"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("--model"), "{stderr}");

    let (code, _, stderr) =
        run(veetance().args(["bench", "--model", "tiny", "--attention", "sage"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("plain, chunked, chunked:N, flash"),
        "{stderr}"
    );

    let (code, _, stderr) =
        run(veetance().args(["bench", "--model", "tiny", "--transformer", "x.safetensors"]));
    assert_eq!(code, 2, "{stderr}");

    let (code, _, stderr) =
        run(veetance().args(["bench", "--transformer", "x.safetensors", "--device", "cpu"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("--text-encoder and --vae"), "{stderr}");

    let (code, _, stderr) = run(veetance().args([
        "bench", "--model", "tiny", "--device", "cpu", "--width", "100",
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("multiples of 16"), "{stderr}");
}
