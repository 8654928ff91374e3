//! `SaveImage`: writes a batch of images as numbered PNG files inside the run's output folder,
//! embedding the workflow (and ComfyUI's `prompt` and `workflow` when a ComfyUI graph runs).

use std::path::{Path, PathBuf};

use veetance_core::{
    ExecContext, Freshness, Image, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem, Params,
    PortType, RunEnv, Value,
};

use crate::png_io::{write_png_temp, WORKFLOW_PNG_KEYWORD};

pub struct SaveImage {
    schema: NodeSchema,
}

impl Default for SaveImage {
    fn default() -> Self {
        Self::new()
    }
}

impl SaveImage {
    pub fn new() -> Self {
        SaveImage {
            schema: NodeSchema::new("SaveImage", "Save Image", "image")
                .doc(
                    "Writes each image of the batch as `<prefix>_<NNNNN>.png` in the output folder \
                     (`--out`), numbering on from the highest file already there (00001, 00002, \
                     ...). The workflow is embedded in each file (text chunk \
                     `veetance-workflow`), and a ComfyUI graph's `prompt` and `workflow` as ComfyUI \
                     embeds them. Files appear complete or not at all. Like every node, \
                     it is served from the cache when nothing it depends on changed, so an \
                     unchanged graph run again writes no new file.",
                )
                .input("images", PortType::Image, "The images to save.")
                .param(ParamDef::string(
                    "filename_prefix",
                    "veetance",
                    "File name before `_00001.png`; may contain sub-folders (`portraits/cat`), \
                     which are created. It must stay inside the output folder: no absolute \
                     path, no `..`, no empty names.",
                ))
                .output("path", PortType::String, "The path of the first file written.")
                .output_node(),
        }
    }
}

/// A checked filename prefix: the sub-folders to create and the file stem.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub folders: Vec<String>,
    pub stem: String,
}

/// Splits a prefix into folders and stem, refusing anything that could name a place outside the
/// output folder. Both `/` and `\` separate folders, so a workflow written on Windows means the
/// same everywhere.
pub(crate) fn parse_prefix(prefix: &str) -> Result<Prefix, String> {
    if prefix.trim().is_empty() {
        return Err("the filename prefix is empty".into());
    }
    let path = Path::new(prefix);
    if path.is_absolute() || path.has_root() || prefix.starts_with(['/', '\\']) {
        return Err(format!(
            "{prefix:?} is an absolute path; the prefix must be relative to the output folder"
        ));
    }
    let mut segments: Vec<&str> = prefix.split(['/', '\\']).collect();
    let stem = segments.pop().unwrap_or_default();
    let mut folders = Vec::with_capacity(segments.len());
    for segment in segments {
        match segment {
            "." => continue,
            _ => {
                check_segment(prefix, segment)?;
                folders.push(segment.to_string());
            }
        }
    }
    if stem.is_empty() {
        return Err(format!(
            "{prefix:?} ends with a separator; it must end with a file name"
        ));
    }
    check_segment(prefix, stem)?;
    if stem == "." {
        return Err(format!("{prefix:?} must end with a file name, not '.'"));
    }
    Ok(Prefix {
        folders,
        stem: stem.to_string(),
    })
}

fn check_segment(prefix: &str, segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err(format!("{prefix:?} has an empty folder name"));
    }
    if segment == ".." {
        return Err(format!(
            "{prefix:?} contains '..'; files may not be written outside the output folder"
        ));
    }
    if segment.contains(':') {
        // A drive (`C:`) or an alternate data stream on Windows.
        return Err(format!("{prefix:?} contains ':', which is not allowed"));
    }
    if segment.chars().any(char::is_control) {
        return Err(format!("{prefix:?} contains a control character"));
    }
    if segment.trim() != segment || segment.ends_with('.') {
        return Err(format!(
            "{prefix:?}: the name {segment:?} starts or ends with a space or ends with '.'"
        ));
    }
    Ok(())
}

/// The number after the highest `<stem>_<digits>.png` in `dir` (1 when there is none).
fn next_number(dir: &Path, stem: &str) -> Result<u64, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list output folder '{}': {e}", dir.display()))?;
    let mut highest = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_prefix(stem)
            .and_then(|rest| rest.strip_prefix('_'))
            .and_then(|rest| rest.strip_suffix(".png"))
            .filter(|digits| digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(n) = number {
            highest = highest.max(n);
        }
    }
    Ok(highest.saturating_add(1))
}

/// Creates `out_dir/<folders>` and checks that, with symlinks resolved, it is inside `out_dir`.
fn output_folder(out_dir: &Path, prefix: &Prefix) -> Result<PathBuf, String> {
    let mut dir = out_dir.to_path_buf();
    dir.extend(&prefix.folders);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create output folder '{}': {e}", dir.display()))?;
    let root = out_dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve output folder '{}': {e}", out_dir.display()))?;
    let resolved = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve output folder '{}': {e}", dir.display()))?;
    if !resolved.starts_with(&root) {
        return Err(format!(
            "'{}' leads outside the output folder '{}' (through a link); refusing to write there",
            dir.display(),
            out_dir.display()
        ));
    }
    Ok(dir)
}

impl NodeDef for SaveImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        match params.str("filename_prefix").map(parse_prefix) {
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(message)) => vec![ParamProblem {
                param: "filename_prefix".into(),
                message,
            }],
            Err(e) => vec![ParamProblem {
                param: "filename_prefix".into(),
                message: e.to_string(),
            }],
        }
    }

    /// The output folder: the same graph saved to another `--out` runs again.
    fn freshness(&self, _params: &Params, env: &RunEnv) -> Freshness {
        Freshness::Fingerprint(env.out_dir.as_os_str().as_encoded_bytes().to_vec())
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let images = ctx.image("images")?;
        let prefix_text = ctx.params.str("filename_prefix")?;
        let prefix = parse_prefix(prefix_text)
            .map_err(|e| NodeError::failed(format!("param 'filename_prefix': {e}")))?;
        let dir = output_folder(&ctx.env.out_dir, &prefix).map_err(NodeError::failed)?;
        let written = save_images(ctx, images, &dir, &prefix.stem)?;
        Ok(vec![Value::string(written[0].display().to_string())])
    }
}

/// The text chunks a PNG written by this run embeds, in order: the image's own metadata
/// (generation parameters, say; never under the workflow's key), the run's workflow
/// (`veetance-workflow`), then the run's
/// [`RunEnv::png_text`] (ComfyUI's `prompt` and `workflow` when a ComfyUI graph runs). A key that
/// comes later replaces an earlier one.
pub fn png_chunks(image: &Image, env: &RunEnv) -> Vec<(String, String)> {
    let mut chunks: Vec<(String, String)> = Vec::new();
    let later = image
        .meta
        .iter()
        // Only the run's own workflow is embedded under this key.
        .filter(|(k, _)| k != WORKFLOW_PNG_KEYWORD)
        .cloned()
        .chain(
            env.workflow
                .iter()
                .map(|w| (WORKFLOW_PNG_KEYWORD.to_string(), w.to_string())),
        )
        .chain(env.png_text.iter().cloned());
    for (key, text) in later {
        chunks.retain(|(k, _)| *k != key);
        chunks.push((key, text));
    }
    chunks
}

/// Writes each image of the batch as `<dir>/<stem>_<NNNNN>.png` (numbering on from the highest
/// file there, never replacing one), with [`png_chunks`] embedded, through a temporary file;
/// reports each file with `output_written`. Returns the paths written, at least one. SaveImage
/// and ComfyUI's PreviewImage.
pub fn save_images(
    ctx: &ExecContext<'_>,
    images: &Image,
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, NodeError> {
    let chunks = png_chunks(images, ctx.env);
    let mut number = next_number(dir, stem).map_err(NodeError::failed)?;
    let mut written = Vec::new();
    for index in 0..images.batch {
        ctx.check_cancelled()?;
        let mut temp = write_png_temp(
            dir,
            stem,
            images.frame(index),
            images.width,
            images.height,
            images.channels,
            &chunks,
        )
        .map_err(NodeError::failed)?;
        let target = loop {
            let target = dir.join(format!("{stem}_{number:05}.png"));
            number = number.saturating_add(1);
            if temp.persist_new(&target).map_err(NodeError::failed)? {
                break target;
            }
        };
        ctx.output_written(target.display().to_string());
        written.push(target);
    }
    if written.is_empty() {
        return Err(NodeError::failed(
            "the image batch is empty; nothing was saved",
        ));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_inside_the_folder_are_split() {
        assert_eq!(
            parse_prefix("portraits/cat").unwrap(),
            Prefix {
                folders: vec!["portraits".into()],
                stem: "cat".into()
            }
        );
        assert_eq!(parse_prefix("./a\\b").unwrap().folders, vec!["a"]);
        assert_eq!(parse_prefix("veetance").unwrap().stem, "veetance");
    }

    #[test]
    fn prefixes_that_could_escape_are_refused() {
        for bad in [
            "",
            " ",
            "../escape",
            "/abs/path",
            "a/../../b",
            "a//b",
            "a/",
            "..",
            ".",
            "\\x",
            "C:/x",
            "c:x",
            "a/\u{0}",
            "a/..",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
