//! Finding model files (ComfyUI's models folder layout) and fingerprinting them for the cache.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use candle_core::Device;
use veetance_core::{Freshness, ParamProblem, RunEnv};

/// Resolves a file param: an existing path (absolute, or relative to the current folder) is taken
/// as is; otherwise the name is looked up in `<models_dir>/<folder>/`. The error says where it
/// looked, what is there, and what to do.
pub fn resolve(name: &str, folder: &str, env: &RunEnv) -> Result<PathBuf, String> {
    if name.trim().is_empty() {
        return Err(format!(
            "no file given; name a file in {} or give a path",
            env.models_dir.join(folder).display()
        ));
    }
    let direct = Path::new(name);
    if direct.exists() {
        return Ok(direct.to_path_buf());
    }
    let in_models = env.models_dir.join(folder).join(name);
    if in_models.exists() {
        return Ok(in_models);
    }
    let dir = env.models_dir.join(folder);
    let available = list_folder(&dir);
    let there = if available.is_empty() {
        if dir.is_dir() {
            "it is empty".to_string()
        } else {
            "that folder does not exist".to_string()
        }
    } else {
        format!("it holds: {}", available.join(", "))
    };
    Err(format!(
        "'{name}' not found: looked for it as a path and in {} ({there}); put the file there, \
         point --models-dir (or paths.models_dir in veetance.toml) at your models folder, or give \
         a full path",
        dir.display()
    ))
}

/// Model files (and diffusers folders) in a folder, sorted, for messages and file pickers.
pub fn list_folder(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let p = e.path();
                    p.is_dir()
                        || p.extension()
                            .is_some_and(|x| x == "safetensors" || x == "gguf")
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A file's identity for the cache key: its resolved path, size and modification time (for a
/// folder, those of every file in it); with `hash_content`, a blake3 hash of the bytes instead of
/// the time, so a touched but unchanged file keeps its cache.
pub fn fingerprint(paths: &[PathBuf], hash_content: bool) -> Freshness {
    let mut h = blake3::Hasher::new();
    for path in paths {
        let mut files = vec![path.clone()];
        if path.is_dir() {
            files = std::fs::read_dir(path)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
        }
        for f in files {
            h.update(f.to_string_lossy().as_bytes());
            h.update(&[0]);
            match std::fs::metadata(&f) {
                Ok(m) => {
                    h.update(&m.len().to_le_bytes());
                    if hash_content {
                        match hash_file(&f) {
                            Ok(digest) => {
                                h.update(digest.as_bytes());
                            }
                            Err(_) => {
                                h.update(b"unreadable");
                            }
                        }
                    } else {
                        let mtime = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map(|d| d.as_nanos())
                            .unwrap_or(0);
                        h.update(&mtime.to_le_bytes());
                    }
                }
                Err(_) => {
                    h.update(b"missing");
                }
            }
        }
    }
    Freshness::Fingerprint(h.finalize().as_bytes().to_vec())
}

fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize())
}

/// The device options loaders offer.
pub const DEVICES: [&str; 3] = ["auto", "cpu", "cuda"];

/// The device a loader's `device` param names; `auto` takes the first CUDA GPU when this build has
/// CUDA and one is present, else the CPU.
pub fn device(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            format!(
                "no CUDA device: {e}{}",
                if cfg!(feature = "cuda") {
                    ""
                } else {
                    " (this build has no CUDA support; rebuild with --features cuda)"
                }
            )
        }),
        _ => Ok(if cfg!(feature = "cuda") {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
    }
}

/// Checks a device param before the run.
pub fn check_device(name: &str) -> Option<ParamProblem> {
    if name == "cuda" && !cfg!(feature = "cuda") {
        return Some(ParamProblem {
            param: "device".into(),
            message: "this build has no CUDA support; choose cpu or auto, or rebuild with \
                      --features cuda"
                .into(),
        });
    }
    None
}
