//! `LoadImage`: a PNG file from disk.

use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use veetance_core::{
    ExecContext, Freshness, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem, Params,
    PortType, RunEnv, Value,
};

use crate::png_io::read_png_image;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

pub struct LoadImage {
    schema: NodeSchema,
}

impl Default for LoadImage {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadImage {
    pub fn new() -> Self {
        LoadImage {
            schema: NodeSchema::new("LoadImage", "Load Image", "image")
                .doc(
                    "Loads a PNG file as a one-image batch (RGB, or RGBA when the file has \
                     transparency; 8- and 16-bit, gray and palette images are converted). A file \
                     replaced on disk (new size or modification time) is loaded again.",
                )
                .param(
                    ParamDef::path(
                        "path",
                        "",
                        None,
                        "The PNG file; a relative path is taken from the current directory. A \
                         constant only, so that validation can check the file exists.",
                    )
                    .constant(),
                )
                .output("image", PortType::Image, "The image, values in [0, 1].")
                .output("width", PortType::Int, "Width in pixels.")
                .output("height", PortType::Int, "Height in pixels."),
        }
    }
}

/// Why the file at `path` cannot be loaded, checked cheaply (exists, is a file, starts like a
/// PNG), or `None` when it looks loadable.
fn file_problem(path: &str) -> Option<String> {
    if path.trim().is_empty() {
        return Some("no image file chosen".into());
    }
    let p = Path::new(path);
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("image file '{path}' does not exist"))
        }
        Err(e) => return Some(format!("cannot read image file '{path}': {e}")),
    };
    if !meta.is_file() {
        return Some(format!("'{path}' is not a file"));
    }
    let mut signature = [0u8; 8];
    let read = std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut signature));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Some(format!("'{path}' is not a PNG file (too short)"))
        }
        Err(e) => Some(format!("cannot read image file '{path}': {e}")),
        Ok(()) if signature != PNG_SIGNATURE => Some(format!(
            "'{path}' is not a PNG file (only PNG can be loaded for now)"
        )),
        Ok(()) => None,
    }
}

impl NodeDef for LoadImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        let path = params.str("path").unwrap_or_default();
        file_problem(path)
            .map(|message| ParamProblem {
                param: "path".into(),
                message,
            })
            .into_iter()
            .collect()
    }

    /// The file's size and modification time, so that a replaced file is loaded again.
    fn freshness(&self, params: &Params, _env: &RunEnv) -> Freshness {
        let mut fingerprint = Vec::with_capacity(28);
        let meta = params
            .str("path")
            .ok()
            .and_then(|p| std::fs::metadata(p).ok());
        if let Some(meta) = meta {
            fingerprint.extend_from_slice(&meta.len().to_le_bytes());
            if let Ok(since) = meta.modified().map(|t| t.duration_since(UNIX_EPOCH)) {
                let since = since.unwrap_or_default();
                fingerprint.extend_from_slice(&since.as_secs().to_le_bytes());
                fingerprint.extend_from_slice(&since.subsec_nanos().to_le_bytes());
            }
        }
        Freshness::Fingerprint(fingerprint)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let path = ctx.params.str("path")?;
        if let Some(problem) = file_problem(path) {
            return Err(NodeError::failed(problem));
        }
        let image = read_png_image(Path::new(path)).map_err(NodeError::failed)?;
        ctx.check_cancelled()?;
        let (width, height) = (image.width as i64, image.height as i64);
        Ok(vec![
            Value::Image(image),
            Value::Int(width),
            Value::Int(height),
        ])
    }
}
