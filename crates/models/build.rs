//! With the `cuda` feature, compiles our own kernels (kernels/*.cu) to PTX with nvcc, the same
//! toolchain candle's kernels need. The PTX is embedded in the library and JIT-compiled by the
//! driver on first use. Without the feature nothing happens.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    // Hopper builds target sm_90a (what candle's kernels are built for here); others as given.
    let arch = if cap == "90" {
        "sm_90a".to_string()
    } else {
        format!("sm_{cap}")
    };
    let nvcc = std::env::var("NVCC")
        .ok()
        .or_else(|| {
            std::env::var("CUDA_ROOT")
                .ok()
                .map(|r| format!("{r}/bin/nvcc"))
                .filter(|p| std::path::Path::new(p).exists())
        })
        .unwrap_or_else(|| "nvcc".to_string());
    // Each entry becomes `<name>.ptx` in OUT_DIR; flash_sm90 (wgmma) is always built for
    // sm_90a and only loaded on such devices.
    const KERNELS: &[&str] = &["flux2", "vae", "quant", "flash_sm90"];
    for name in KERNELS {
        let arch = if *name == "flash_sm90" {
            "sm_90a"
        } else {
            &arch
        };
        let src = format!("kernels/{name}.cu");
        let dst = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", &format!("-arch={arch}"), "-o"])
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run nvcc ({nvcc}): {e}; the cuda feature needs the CUDA toolkit (set NVCC or CUDA_ROOT)")
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
