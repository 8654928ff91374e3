//! With the `cuda` feature, compiles our kernels (cuda/*.cu) with nvcc into fat binaries: a
//! compiled cubin for each architecture of `VEETANCE_CUDA_ARCHS` (default `80,86,89,90a`: Ampere,
//! the RTX 30 series, Ada, Hopper) plus the PTX of the lowest one, which the driver JIT-compiles
//! only on a GPU none of the cubins fits (a newer one). The fat binaries are embedded in the
//! library, so a fresh process on a fresh machine runs our kernels without a JIT pass.
//!
//! `flash_sm90.cu` (`wgmma`) is built for sm_90a only and loaded only on such devices. Without the
//! feature nothing happens. A quick build for one GPU: `VEETANCE_CUDA_ARCHS=90a`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-env-changed=VEETANCE_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let archs = std::env::var("VEETANCE_CUDA_ARCHS").unwrap_or_else(|_| "80,86,89,90a".into());
    let archs: Vec<String> = archs
        .split(',')
        .map(|a| a.trim().trim_start_matches("sm_").to_string())
        .filter(|a| !a.is_empty())
        .collect();
    assert!(
        !archs.is_empty(),
        "VEETANCE_CUDA_ARCHS names no architecture (expected e.g. 80,86,89,90a)"
    );
    let nvcc = std::env::var("NVCC")
        .ok()
        .or_else(|| {
            std::env::var("CUDA_ROOT")
                .ok()
                .map(|r| format!("{r}/bin/nvcc"))
                .filter(|p| std::path::Path::new(p).exists())
        })
        .unwrap_or_else(|| "nvcc".to_string());

    // Each entry becomes `<name>.fatbin` in OUT_DIR.
    const KERNELS: &[&str] = &["flux2", "vae", "quant", "gguf", "flash_sm90"];
    for name in KERNELS {
        let mut gencode: Vec<String> = Vec::new();
        if *name == "flash_sm90" {
            gencode.push("-gencode=arch=compute_90a,code=sm_90a".into());
        } else {
            for a in &archs {
                gencode.push(format!("-gencode=arch=compute_{a},code=sm_{a}"));
            }
            // PTX of the lowest architecture for GPUs newer than every cubin. (An `a` target's
            // PTX runs only on that exact architecture, so it is never the fallback.)
            let lowest = archs
                .iter()
                .filter(|a| !a.ends_with('a'))
                .min_by_key(|a| a.parse::<u32>().unwrap_or(u32::MAX));
            if let Some(a) = lowest {
                gencode.push(format!("-gencode=arch=compute_{a},code=compute_{a}"));
            }
        }
        let src = format!("cuda/{name}.cu");
        let dst = out_dir.join(format!("{name}.fatbin"));
        let status = Command::new(&nvcc)
            .args(["-fatbin", "-O3", "-std=c++17"])
            .args(&gencode)
            .arg("-o")
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run nvcc ({nvcc}): {e}; the cuda feature needs the CUDA toolkit (set NVCC or CUDA_ROOT)")
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
