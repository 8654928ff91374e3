//! What the model pickers say about each file: its size and the kind of weights it holds (bf16,
//! fp8, a GGUF quantization), read from the file's header with the model crate's readers
//! (`veetance_models::weights::WeightFiles`, `veetance_models::gguf::GgufFile`), which map the
//! file and parse its header without loading a tensor. Built without the model nodes
//! (`--no-default-features`), only the size is shown.

use std::collections::HashMap;
use std::path::Path;

/// A file of the models folder as a picker lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFileInfo {
    pub bytes: u64,
    /// `bf16`, `fp8 (e4m3)`, `GGUF Q4_K`, …; `None` when the file is not a weights file
    /// (a tokenizer, a config) or the kind cannot be told.
    pub kind: Option<String>,
}

impl ModelFileInfo {
    /// "7.75 GB · bf16", or just the size.
    pub fn label(&self) -> String {
        let size = crate::telemetry::format_bytes(self.bytes);
        match &self.kind {
            Some(kind) => format!("{size} · {kind}"),
            None => size,
        }
    }
}

/// Size and kind of `path` (`None` when it cannot be read).
pub fn inspect(path: &Path) -> Option<ModelFileInfo> {
    let meta = std::fs::metadata(path).ok()?;
    Some(ModelFileInfo {
        bytes: meta.len(),
        kind: weights_kind(path),
    })
}

/// The kind of weights a file holds: the storage type that holds the most of its parameters
/// (by bytes for GGUF, by elements for safetensors), or ComfyUI's quantization format when the
/// file declares quantized layers (`float8_e4m3fn`, `nvfp4`).
#[cfg(feature = "all-nodes")]
fn weights_kind(path: &Path) -> Option<String> {
    use veetance_models::gguf::{is_gguf, GgufFile};
    use veetance_models::weights::WeightFiles;

    let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
    if ext == "gguf" || is_gguf(path) {
        let file = GgufFile::open(path).ok()?;
        let mut by_type: HashMap<String, usize> = HashMap::new();
        for name in file.names() {
            if let (Some(ty), Some(bytes)) = (file.ggml_type(name), file.stored_bytes(name)) {
                *by_type.entry(ty.name().into_owned()).or_default() += bytes;
            }
        }
        return largest(by_type).map(|ty| format!("GGUF {ty}"));
    }
    if ext != "safetensors" {
        return None;
    }
    let files = WeightFiles::open_path(path).ok()?;
    if files.quantized_layer_count() > 0 {
        let mut formats: HashMap<String, usize> = HashMap::new();
        for name in files.names() {
            if let Some(q) = files.layer_quant(name) {
                *formats.entry(q.format.clone()).or_default() += 1;
            }
        }
        if let Some(format) = largest(formats) {
            return Some(friendly(&format));
        }
    }
    let mut by_dtype: HashMap<String, usize> = HashMap::new();
    for name in files.names() {
        if let (Some(dtype), Some(shape)) = (files.stored_dtype(name), files.shape(name)) {
            let elements = shape.iter().product::<usize>().max(1);
            *by_dtype.entry(format!("{dtype:?}")).or_default() += elements;
        }
    }
    largest(by_dtype).map(|d| friendly(&d))
}

#[cfg(not(feature = "all-nodes"))]
fn weights_kind(_path: &Path) -> Option<String> {
    None
}

/// The key with the largest count (ties: the first by name, so the answer is stable).
#[cfg_attr(
    not(any(feature = "all-nodes", test)),
    expect(
        dead_code,
        reason = "used by weights_kind, which needs the model crate"
    )
)]
fn largest(counts: HashMap<String, usize>) -> Option<String> {
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts.into_iter().next().map(|(k, _)| k)
}

/// A storage type's name as people say it: `bf16`, `fp8 (e4m3)`.
#[cfg_attr(
    not(any(feature = "all-nodes", test)),
    expect(
        dead_code,
        reason = "used by weights_kind, which needs the model crate"
    )
)]
fn friendly(name: &str) -> String {
    match name {
        "BF16" => "bf16".into(),
        "F16" => "fp16".into(),
        "F32" => "fp32".into(),
        "F64" => "fp64".into(),
        "F8_E4M3" | "float8_e4m3fn" => "fp8 (e4m3)".into(),
        "F8_E5M2" | "float8_e5m2" => "fp8 (e5m2)".into(),
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_names_and_the_largest_count() {
        assert_eq!(friendly("BF16"), "bf16");
        assert_eq!(friendly("float8_e4m3fn"), "fp8 (e4m3)");
        assert_eq!(friendly("nvfp4"), "nvfp4");
        let counts = HashMap::from([("BF16".to_string(), 10), ("F32".to_string(), 3)]);
        assert_eq!(largest(counts).as_deref(), Some("BF16"));
        let info = ModelFileInfo {
            bytes: 3 << 30,
            kind: Some("bf16".into()),
        };
        assert!(info.label().ends_with("· bf16"), "{}", info.label());
    }
}
