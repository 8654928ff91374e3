//! A candle `VarBuilder` backend that makes seeded random weights instead of reading files, so
//! `veetance bench --model klein-4b` builds the real model structure with no checkpoint.
//!
//! Scaled like `.verify/gpu/make_full_size_models.py`, so activations stay in a sane range:
//! matrices and convolution kernels ~ gain / sqrt(fan_in) x unit-variance noise; 1-D norm scales
//! (`*norm*.weight`, `*.scale`) 1 + 0.1 x noise; other 1-D tensors (biases) 0.05 x noise; the VAE's
//! batch-norm statistics `running_mean` 0.3 x noise and `running_var` 0.5 + U(0, 1).
//!
//! The noise is uniform on [-sqrt 3, sqrt 3] (unit variance, like the script's normal values but
//! cheaper), counter-based: element `i` of tensor `name` depends only on `(seed, name, i)`, so
//! every device and thread count gets the same weights. Large tensors are filled on all cores.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over the tensor name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Unit-variance uniform value number `i` of the stream `key`.
fn unit(key: u64, i: u64) -> f32 {
    let h = mix64(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)));
    let u = (h >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
    (2.0 * u - 1.0) * 3f32.sqrt()
}

/// How a tensor's values are made from unit noise `x`: `offset + scale * x`, or `offset + scale
/// * u` with `u` in [0, 1) when `uniform01`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rule {
    offset: f32,
    scale: f32,
    uniform01: bool,
}

fn rule(name: &str, dims: &[usize], gain: f64) -> Rule {
    let normal = |offset: f32, scale: f32| Rule {
        offset,
        scale,
        uniform01: false,
    };
    if dims.len() >= 2 {
        let fan_in: usize = dims[1..].iter().product();
        return normal(0.0, (gain / (fan_in.max(1) as f64).sqrt()) as f32);
    }
    if name.ends_with("running_var") {
        return Rule {
            offset: 0.5,
            scale: 1.0,
            uniform01: true,
        };
    }
    if name.ends_with("running_mean") {
        return normal(0.0, 0.3);
    }
    let leaf = name.rsplit('.').nth(1).unwrap_or("");
    let is_norm_scale =
        name.ends_with(".scale") || (name.ends_with("weight") && (leaf.contains("norm")));
    if is_norm_scale {
        normal(1.0, 0.1)
    } else {
        normal(0.0, 0.05)
    }
}

/// The values of tensor `name` of `len` elements under `rule`, filled on all cores when large.
fn values(seed: u64, name: &str, len: usize, rule: Rule) -> Vec<f32> {
    let key = mix64(seed ^ name_hash(name));
    let fill = |start: usize, out: &mut [f32]| {
        for (j, v) in out.iter_mut().enumerate() {
            let x = unit(key, (start + j) as u64);
            *v = if rule.uniform01 {
                let u = x / (2.0 * 3f32.sqrt()) + 0.5;
                rule.offset + rule.scale * u
            } else {
                rule.offset + rule.scale * x
            };
        }
    };
    let mut out = vec![0f32; len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    const MIN_PER_THREAD: usize = 1 << 20;
    if threads <= 1 || len < 2 * MIN_PER_THREAD {
        fill(0, &mut out);
        return out;
    }
    let per = len.div_ceil(threads).max(MIN_PER_THREAD);
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per).enumerate() {
            let fill = &fill;
            s.spawn(move || fill(c * per, chunk));
        }
    });
    out
}

/// The backend: every tensor the model asks for exists and is made on the spot.
#[derive(Debug, Clone)]
pub struct SeededBackend {
    seed: u64,
    gain: f64,
}

impl SeededBackend {
    fn make(
        &self,
        shape: &Shape,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = shape.dims();
        let r = rule(name, dims, self.gain);
        let data = values(self.seed, name, shape.elem_count(), r);
        // Made as f32 on the host, converted where it is cheapest: on the device.
        Tensor::from_vec(data, dims, &Device::Cpu)?
            .to_device(dev)?
            .to_dtype(dtype)
    }
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.make(&s, name, dtype, dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded random weights need a shape, and none was given for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` over seeded random weights (`gain`: 0.5 for the transformers, 1.0 for the VAE,
/// as make_full_size_models.py).
pub fn var_builder(seed: u64, gain: f64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededBackend { seed, gain }),
        dtype,
        device.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    #[test]
    fn matrices_are_scaled_by_fan_in() {
        let vb = var_builder(7, 0.5, DType::F32, &Device::Cpu);
        let w = vb.get((64, 256), "blocks.0.linear.weight").unwrap();
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (mean, std) = stats(&v);
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((std - 0.5 / 16.0).abs() < 0.002, "std {std}");
    }

    #[test]
    fn norms_biases_and_batch_norm_statistics() {
        let vb = var_builder(7, 1.0, DType::F32, &Device::Cpu);
        let get = |n: &str| vb.get(4096, n).unwrap().to_vec1::<f32>().unwrap();
        let (m, s) = stats(&get("double_blocks.0.img_attn.norm.query_norm.scale"));
        assert!((m - 1.0).abs() < 0.01 && (s - 0.1).abs() < 0.01, "{m} {s}");
        let (m, s) = stats(&get("decoder.mid.block_1.norm1.weight"));
        assert!((m - 1.0).abs() < 0.01 && (s - 0.1).abs() < 0.01, "{m} {s}");
        let (m, s) = stats(&get("decoder.conv_in.bias"));
        assert!(m.abs() < 0.01 && (s - 0.05).abs() < 0.005, "{m} {s}");
        let var = get("bn.running_var");
        assert!(var.iter().all(|&v| (0.5..1.5).contains(&v)));
        let (m, s) = stats(&get("bn.running_mean"));
        assert!(m.abs() < 0.03 && (s - 0.3).abs() < 0.02, "{m} {s}");
    }

    #[test]
    fn deterministic_per_seed_and_name_and_independent_of_threads() {
        let r = rule("w", &[8, 8], 1.0);
        let big = 3 << 20; // large enough to be filled on several threads
        let a = values(1, "a.weight", big, r);
        let b = values(1, "a.weight", big, r);
        assert_eq!(a, b);
        assert_ne!(a[..64], values(2, "a.weight", 64, r)[..]);
        assert_ne!(a[..64], values(1, "b.weight", 64, r)[..]);
        // The threaded fill gives the same elements as a single-threaded one.
        let key = mix64(1 ^ name_hash("a.weight"));
        for i in [0usize, 1 << 20, (2 << 20) + 5, big - 1] {
            assert_eq!(a[i], r.scale * unit(key, i as u64));
        }
    }

    #[test]
    fn unchecked_get_is_a_clear_error() {
        let b = SeededBackend { seed: 0, gain: 1.0 };
        let e = b
            .get_unchecked("x.weight", DType::F32, &Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("x.weight"));
    }
}
