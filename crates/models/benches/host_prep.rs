//! The host-side work of one 1024² FLUX.2 [klein] generation that happens before or between the
//! GPU's kernels: the seeded starting noise (ours and ComfyUI's torch-compatible one, 128 × 64 ×
//! 64 values) and the RoPE tables of the 4096 image + 512 text positions. On the H200 these ran
//! in the measured image's time (`veetance bench`'s "prepare" and its first step).
//!
//! Run with `cargo bench -p veetance-models --bench host_prep`; figures go to docs/performance.md.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use veetance_models::{flux2, sampling, torch_rng};

/// Latent values of a 1024² image: 128 channels of 64 × 64.
const LATENT: [usize; 4] = [1, 128, 64, 64];

fn noise(c: &mut Criterion) {
    let n: usize = LATENT.iter().product();
    c.bench_function("seeded noise, veetance, 1024²", |b| {
        b.iter(|| sampling::gaussian_noise_vec(black_box(7), n))
    });
    c.bench_function("seeded noise, ComfyUI (torch CPU), 1024²", |b| {
        b.iter(|| torch_rng::comfy_noise(black_box(7), &LATENT))
    });
}

fn rope(c: &mut Criterion) {
    let cfg = flux2::Config::klein_4b();
    let img = sampling::image_ids(64, 64, &Device::Cpu).expect("image ids");
    let txt = sampling::text_ids(512, &Device::Cpu).expect("text ids");
    let ids = Tensor::cat(&[&txt, &img], 0).expect("ids");
    c.bench_function("RoPE tables, 4096 image + 512 text positions", |b| {
        b.iter(|| flux2::rope_tables(black_box(&ids), &cfg.axes_dims_rope, cfg.rope_theta))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).sample_size(20);
    targets = noise, rope
}
criterion_main!(benches);
