//! Analytic FLOP counts of the FLUX.2 [klein] pipeline, the same formulas as
//! `shared/reference/flops.py` (counted from diffusers' module structure; a multiply-add is 2 FLOP).
//!
//! Only the matrix products and attention are counted (element-wise ops, norms and the
//! per-step modulation linears on one timestep are negligible and left out), so "achieved
//! TFLOP/s" is useful work per second, comparable with cuBLAS's matmul ceiling.

use veetance_models::{flux2, qwen3, vae};

/// One transformer forward on `n_img` image and `n_txt` text tokens (batch 1).
pub fn transformer(cfg: &flux2::Config, n_img: u64, n_txt: u64) -> u64 {
    let d = cfg.hidden_size() as u64;
    let h = cfg.mlp_hidden() as u64;
    let ctx = cfg.joint_attention_dim as u64;
    let in_ch = cfg.in_channels as u64;
    let out_ch = cfg.out_channels() as u64;
    let (n_double, n_single) = (cfg.num_layers as u64, cfg.num_single_layers as u64);
    let l = n_img + n_txt;
    // Per double-block stream: qkv, out projection, SwiGLU in (gate + up), SwiGLU out.
    let stream = 3 * d * d + d * d + d * 2 * h + h * d;
    // Per single block: fused qkv + MLP in, then (attention + MLP) out.
    let single = d * (3 * d + 2 * h) + (d + h) * d;
    // The image stream runs on n_img tokens and the text stream on n_txt: together on l.
    let double_linear = n_double * 2 * stream * l;
    let single_linear = n_single * 2 * single * l;
    let attention = (n_double + n_single) * 4 * l * l * d; // QK^T + PV
    let embed_out = 2 * ctx * d * n_txt + 2 * in_ch * d * n_img + 2 * d * out_ch * n_img;
    double_linear + single_linear + attention + embed_out
}

/// The text encoder on `tokens` tokens: the decoder layers it runs (27 for klein), attention
/// counted in full (no causal skipping), as flops.py does.
pub fn text_encoder(cfg: &qwen3::Config, tokens: u64) -> u64 {
    let hidden = cfg.hidden_size as u64;
    let head_dim = cfg.head_dim() as u64;
    let heads = cfg.num_attention_heads as u64;
    let kv_heads = cfg.num_key_value_heads as u64;
    let layers = cfg.layers_needed() as u64;
    let q = hidden * heads * head_dim;
    let kv = 2 * hidden * kv_heads * head_dim;
    let o = heads * head_dim * hidden;
    let mlp = 3 * hidden * cfg.intermediate_size as u64;
    let linear = 2 * (q + kv + o + mlp) * tokens * layers;
    let attention = 4 * tokens * tokens * heads * head_dim * layers;
    linear + attention
}

fn conv(cin: u64, cout: u64, k: u64, hw: u64) -> u64 {
    2 * k * k * cin * cout * hw
}

fn resnet(cin: u64, cout: u64, hw: u64) -> u64 {
    conv(cin, cout, 3, hw)
        + conv(cout, cout, 3, hw)
        + if cin != cout {
            conv(cin, cout, 1, hw)
        } else {
            0
        }
}

/// The VAE decoder (with `post_quant_conv`) for a `width` x `height` image.
pub fn vae_decode(cfg: &vae::Config, width: u64, height: u64) -> u64 {
    let z = cfg.latent_channels as u64;
    let ch: Vec<u64> = cfg.decoder_channels().iter().map(|&c| c as u64).collect();
    let Some(&top) = ch.last() else { return 0 };
    let (mut h, mut w) = (height / 8, width / 8);
    let mut f = conv(z, z, 1, h * w); // post_quant_conv
    f += conv(z, top, 3, h * w); // conv_in
    f += 2 * resnet(top, top, h * w); // mid resnets
    let n = h * w;
    f += 4 * 2 * top * top * n + 4 * n * n * top; // mid attention: q, k, v, o + QK^T, PV
    let mut cur = top;
    let levels = ch.len();
    for (i, &co) in ch.iter().rev().enumerate() {
        for _ in 0..=cfg.layers_per_block {
            f += resnet(cur, co, h * w);
            cur = co;
        }
        if i + 1 < levels {
            h *= 2;
            w *= 2;
            f += conv(cur, cur, 3, h * w); // upsample conv after nearest x2
        }
    }
    f + conv(cur, cfg.out_channels as u64, 3, h * w) // conv_out
}

/// FLOP per second in units of 10^12.
pub fn tflops(flop: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        flop as f64 / (ms * 1e-3) / 1e12
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The values below are what shared/reference/flops.py computes
    // (`dit_flops(3072, 5, 20, 7680, 4096, 512)` etc.), printed as 34.82 and 75.51 TFLOP.

    #[test]
    fn klein_4b_forward_at_1024_matches_flops_py() {
        let f = transformer(&flux2::Config::klein_4b(), 4096, 512);
        assert_eq!(f, 34_819_836_739_584);
        assert_eq!(format!("{:.1}", f as f64 / 1e12), "34.8");
    }

    #[test]
    fn klein_9b_forward_at_1024_matches_flops_py() {
        let f = transformer(&flux2::Config::klein_9b(), 4096, 512);
        assert_eq!(f, 75_514_114_998_272);
        assert_eq!(format!("{:.1}", f as f64 / 1e12), "75.5");
    }

    #[test]
    fn klein_4b_at_512_matches_flops_py() {
        // flops.py prints 10.17 TFLOP for 512x512 (1024 image tokens).
        let f = transformer(&flux2::Config::klein_4b(), 1024, 512);
        assert_eq!(format!("{:.2}", f as f64 / 1e12), "10.17");
    }

    #[test]
    fn qwen3_encoders_match_flops_py() {
        assert_eq!(
            text_encoder(&qwen3::Config::qwen3_4b(), 512),
            2_906_350_682_112
        );
        assert_eq!(
            text_encoder(&qwen3::Config::qwen3_8b(), 512),
            5_450_313_498_624
        );
    }

    #[test]
    fn vae_decoder_matches_flops_py() {
        assert_eq!(
            vae_decode(&vae::Config::flux2(), 1024, 1024),
            10_474_653_483_008
        );
        assert_eq!(
            vae_decode(&vae::Config::flux2(), 512, 512),
            2_515_584_155_648
        );
        let tiny = vae::Config {
            block_out_channels: vec![32; 4],
            layers_per_block: 1,
            ..vae::Config::flux2()
        };
        assert_eq!(vae_decode(&tiny, 64, 64), 514_326_528);
    }

    #[test]
    fn attention_grows_quadratically() {
        let cfg = flux2::Config::klein_4b();
        let a = transformer(&cfg, 4096, 512) - transformer(&cfg, 4095, 512);
        let b = transformer(&cfg, 1024, 512) - transformer(&cfg, 1023, 512);
        assert!(
            a > b,
            "the marginal token must cost more at longer sequences"
        );
    }

    #[test]
    fn tflops_divides_by_seconds() {
        assert!((tflops(2_000_000_000_000, 1000.0) - 2.0).abs() < 1e-12);
        assert_eq!(tflops(1, 0.0), 0.0);
    }
}
