//! `LoadImage` and `LoadImageMask`: a PNG file from disk, as ComfyUI's classes of those names
//! read it (an RGB image and a mask of what is transparent; or one channel as a mask).
//!
//! File names are resolved as ComfyUI resolves them ([`resolve_image_path`]): a bare name in the
//! run's input folder (ComfyUI's `input/`, [`RunEnv::input_dir`]), `name [output]` and
//! `name [temp]` in the output and temp folders; with no input folder set (the CLI), against the
//! current directory.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use veetance_core::{
    ExecContext, Freshness, Image, Mask, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem,
    Params, PortType, RunEnv, Value,
};

use crate::png_io::read_png_image;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Where the image named `name` is. With an input folder set (the server), names must stay
/// inside their folder: no absolute paths, no `..`.
pub fn resolve_image_path(name: &str, env: &RunEnv) -> Result<PathBuf, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("no image file chosen".into());
    }
    let Some(input) = &env.input_dir else {
        return Ok(PathBuf::from(name));
    };
    let (base, rest) = if let Some(n) = name.strip_suffix(" [output]") {
        (env.out_dir.clone(), n)
    } else if let Some(n) = name.strip_suffix(" [temp]") {
        (env.temp_dir(), n)
    } else if let Some(n) = name.strip_suffix(" [input]") {
        (input.clone(), n)
    } else {
        (input.clone(), name)
    };
    let rel = Path::new(rest);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "image name '{name}' must be a file name inside the input folder (optionally in a \
             subfolder), not an absolute path or one with '..'"
        ));
    }
    Ok(base.join(rel))
}

/// Why the file at `path` cannot be loaded, checked cheaply (exists, is a file, starts like a
/// PNG), or `None` when it looks loadable.
fn file_problem(path: &Path, name: &str) -> Option<String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "image file '{name}' does not exist (looked for {})",
                path.display()
            ))
        }
        Err(e) => return Some(format!("cannot read image file '{name}': {e}")),
    };
    if !meta.is_file() {
        return Some(format!("'{name}' is not a file"));
    }
    let mut signature = [0u8; 8];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut signature));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Some(format!("'{name}' is not a PNG file (too short)"))
        }
        Err(e) => Some(format!("cannot read image file '{name}': {e}")),
        Ok(()) if signature != PNG_SIGNATURE => Some(format!(
            "'{name}' is not a PNG file (only PNG can be loaded for now)"
        )),
        Ok(()) => None,
    }
}

/// Both loaders' validation of their `image` param: it resolves and looks like a PNG.
fn check_image_param(params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
    let name = params.str("image").unwrap_or_default();
    let problem = match resolve_image_path(name, env) {
        Err(problem) => Some(problem),
        Ok(path) => file_problem(&path, name),
    };
    problem
        .map(|message| ParamProblem {
            param: "image".into(),
            message,
        })
        .into_iter()
        .collect()
}

/// The file's size and modification time, so that a replaced file is loaded again.
fn file_freshness(params: &Params, env: &RunEnv) -> Freshness {
    let mut fingerprint = Vec::with_capacity(28);
    let meta = params
        .str("image")
        .ok()
        .and_then(|name| resolve_image_path(name, env).ok())
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

fn read_image(ctx: &ExecContext<'_>) -> Result<Image, NodeError> {
    let name = ctx.params.str("image")?;
    let path = resolve_image_path(name, ctx.env).map_err(NodeError::failed)?;
    if let Some(problem) = file_problem(&path, name) {
        return Err(NodeError::failed(problem));
    }
    read_png_image(&path).map_err(NodeError::failed)
}

fn image_param() -> ParamDef {
    ParamDef::path(
        "image",
        "",
        None,
        "The PNG file: a name in the input folder (`name [output]` / `name [temp]` for the \
         output and temp folders), or, when no input folder is set (the CLI), a path from the \
         current directory. A constant only, so that validation can check the file exists.",
    )
    .constant()
}

/// Channel `k` of every pixel of frame 0 of `image`, mapped by `f`.
fn channel(image: &Image, k: usize, f: impl Fn(f32) -> f32) -> Vec<f32> {
    let c = image.channels as usize;
    image.frame(0).chunks_exact(c).map(|px| f(px[k])).collect()
}

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
                    "Loads a PNG file as a one-image RGB batch and a mask of its transparency \
                     (1 − alpha: 1 where the image is transparent, the part to paint over; all \
                     0 when the file has no alpha), as ComfyUI's LoadImage. 8- and 16-bit, \
                     gray and palette images are converted. A file replaced on disk (new size \
                     or modification time) is loaded again.",
                )
                .param(image_param())
                .output("image", PortType::Image, "The image, RGB values in [0, 1].")
                .output(
                    "mask",
                    PortType::Mask,
                    "1 − alpha, at the image's size (all 0 without alpha).",
                )
                .output("width", PortType::Int, "Width in pixels.")
                .output("height", PortType::Int, "Height in pixels."),
        }
    }
}

impl NodeDef for LoadImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        check_image_param(params, env)
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        file_freshness(params, env)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let image = read_image(ctx)?;
        ctx.check_cancelled()?;
        let (w, h) = (image.width, image.height);
        let mask = if image.channels == 4 {
            channel(&image, 3, |a| 1.0 - a)
        } else {
            vec![0.0; w as usize * h as usize]
        };
        let rgb = if image.channels == 4 {
            let data: Vec<f32> = image
                .frame(0)
                .chunks_exact(4)
                .flat_map(|px| [px[0], px[1], px[2]])
                .collect();
            Image::new(1, h, w, 3, data)
                .map_err(NodeError::failed)?
                .with_meta(image.meta.to_vec())
        } else {
            image
        };
        let mask = Mask::new(1, h, w, mask).map_err(NodeError::failed)?;
        Ok(vec![
            Value::Image(rgb),
            mask.into_value(),
            Value::Int(i64::from(w)),
            Value::Int(i64::from(h)),
        ])
    }
}

const CHANNELS: [&str; 4] = ["alpha", "red", "green", "blue"];

pub struct LoadImageMask {
    schema: NodeSchema,
}

impl Default for LoadImageMask {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadImageMask {
    pub fn new() -> Self {
        LoadImageMask {
            schema: NodeSchema::new("LoadImageMask", "Load Image (as Mask)", "mask")
                .doc(
                    "Loads one channel of a PNG file as a mask, as ComfyUI's LoadImageMask: \
                     red, green or blue as they are; alpha as 1 − alpha (1 where transparent). \
                     A file without alpha gives 1 − 1 = 0 for alpha.",
                )
                .param(image_param())
                .param(ParamDef::choice(
                    "channel",
                    &CHANNELS,
                    "alpha",
                    "Which channel becomes the mask.",
                ))
                .output("mask", PortType::Mask, "The mask, values in [0, 1]."),
        }
    }
}

impl NodeDef for LoadImageMask {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        check_image_param(params, env)
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        file_freshness(params, env)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let which = ctx.params.str("channel")?;
        let k = CHANNELS.iter().position(|c| *c == which).ok_or_else(|| {
            NodeError::failed(format!(
                "param 'channel': {which:?} is not one of {}",
                CHANNELS.join(", ")
            ))
        })?;
        let image = read_image(ctx)?;
        ctx.check_cancelled()?;
        let data = match k {
            0 if image.channels == 4 => channel(&image, 3, |a| 1.0 - a),
            // ComfyUI converts to RGBA first: a file without alpha is opaque, 1 − 1 = 0.
            0 => vec![0.0; image.width as usize * image.height as usize],
            k => channel(&image, k - 1, |v| v),
        };
        let mask = Mask::new(1, image.height, image.width, data).map_err(NodeError::failed)?;
        Ok(vec![mask.into_value()])
    }
}
