//! `torch_rng` against PyTorch's own output, bit for bit.
//!
//! The fixture `assets/parity/torch_randn.safetensors` was made by
//! `.verify/parity/make_torch_noise.py` with torch 2.15.0 (see its metadata); this test needs no
//! Python. Groups: `avx2` (torch's output, Linux x86-64 build), `scalar` (torch's DEFAULT-capability
//! kernel, glibc), `comfy` (ComfyUI's `prepare_noise` with `batch_index`, on torch) and
//! `avx2_msvc_emulated` (torch's AVX2 header built without FP contraction, as MSVC builds the
//! Windows wheels; not torch's own output). `VEETANCE_TORCH_NOISE_FIXTURE=/path/to/file` checks another file made by that script
//! (e.g. its `--stress` output) instead.

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use veetance_models::torch_rng::{
    comfy_noise, comfy_noise_batch_index, comfy_noise_with, randn_with, NormalKernel,
};

fn fixture_path() -> PathBuf {
    match std::env::var_os("VEETANCE_TORCH_NOISE_FIXTURE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets/parity/torch_randn.safetensors"),
    }
}

/// What one tensor name asks for: `GROUP/seed=S/shape=AxBx…[/batch_index=i,j,…]`.
struct Case {
    group: String,
    seed: u64,
    shape: Vec<usize>,
    batch_index: Option<Vec<usize>>,
}

fn parse_name(name: &str) -> Case {
    let mut parts = name.split('/');
    let group = parts.next().unwrap().to_string();
    let (mut seed, mut shape, mut batch_index) = (None, None, None);
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: bad part {part}"));
        match key {
            "seed" => seed = Some(value.parse::<u64>().unwrap()),
            "shape" => shape = Some(value.split('x').map(|d| d.parse().unwrap()).collect()),
            "batch_index" => {
                batch_index = Some(value.split(',').map(|d| d.parse().unwrap()).collect())
            }
            _ => panic!("{name}: unknown key {key}"),
        }
    }
    Case {
        group,
        seed: seed.unwrap_or_else(|| panic!("{name}: no seed")),
        shape: shape.unwrap_or_else(|| panic!("{name}: no shape")),
        batch_index,
    }
}

/// `None` when every bit agrees, else a description of the first difference.
fn first_mismatch(ours: &[f32], torch: &[f32]) -> Option<String> {
    if ours.len() != torch.len() {
        return Some(format!("{} values, torch has {}", ours.len(), torch.len()));
    }
    let i = ours
        .iter()
        .zip(torch)
        .position(|(a, b)| a.to_bits() != b.to_bits())?;
    let count = ours
        .iter()
        .zip(torch)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    Some(format!(
        "{count} of {} differ; first at index {i}: ours {:e} ({:#010x}), torch {:e} ({:#010x})",
        ours.len(),
        ours[i],
        ours[i].to_bits(),
        torch[i],
        torch[i].to_bits()
    ))
}

#[test]
fn randn_matches_torch_bit_for_bit() {
    let path = fixture_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    println!("fixture metadata: {:?}", metadata.metadata());
    let file = SafeTensors::deserialize(&bytes).unwrap();

    let mut failures = Vec::new();
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    let mut msvc_differs_from_gcc = 0;
    for (name, view) in file.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let torch: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let case = parse_name(&name);
        let numel: usize = case.shape.iter().product();
        let ours = match (case.group.as_str(), &case.batch_index) {
            ("avx2", None) => {
                if case.shape.len() == 4 {
                    comfy_noise(case.seed, &case.shape)
                } else {
                    randn_with(case.seed, numel, NormalKernel::Avx2Gcc)
                }
            }
            ("avx2_msvc_emulated", None) => {
                let linux = comfy_noise_with(case.seed, &case.shape, NormalKernel::Avx2Gcc);
                if first_mismatch(&linux, &torch).is_some() {
                    msvc_differs_from_gcc += 1;
                }
                comfy_noise_with(case.seed, &case.shape, NormalKernel::Avx2Msvc)
            }
            ("scalar", None) => randn_with(case.seed, numel, NormalKernel::Scalar),
            ("comfy", Some(inds)) => comfy_noise_batch_index(case.seed, &case.shape, inds),
            _ => panic!("{name}: unknown case"),
        };
        if let Some(what) = first_mismatch(&ours, &torch) {
            failures.push(format!("{name}: {what}"));
        }
        *checked.entry(case.group).or_default() += 1;
    }
    println!("tensors checked per group: {checked:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A fixture that lost a group must not pass by checking nothing.
    assert!(
        checked.get("avx2").copied().unwrap_or(0) >= 10,
        "{checked:?}"
    );
    if std::env::var_os("VEETANCE_TORCH_NOISE_FIXTURE").is_none() {
        assert_eq!(checked.get("avx2"), Some(&50), "{checked:?}");
        assert_eq!(checked.get("scalar"), Some(&10), "{checked:?}");
        assert_eq!(checked.get("comfy"), Some(&3), "{checked:?}");
        assert_eq!(checked.get("avx2_msvc_emulated"), Some(&21), "{checked:?}");
        // The two AVX2 builds must be told apart by the fixture, or checking both proves nothing.
        assert!(msvc_differs_from_gcc >= 10, "{msvc_differs_from_gcc}");
    }
}

#[test]
fn comfy_noise_for_a_klein_latent_has_its_shape_and_statistics() {
    let shape = [1, 128, 16, 16];
    let noise = comfy_noise(432_262_096_973_490, &shape);
    assert_eq!(noise.len(), 128 * 16 * 16);
    let n = noise.len() as f64;
    let mean = noise.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = noise
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(
        mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
        "mean {mean} var {var}"
    );
    // Only the low 32 bits of the seed reach the generator.
    assert_eq!(
        noise,
        comfy_noise(432_262_096_973_490 & 0xffff_ffff, &shape)
    );
}
