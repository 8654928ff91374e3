//! PNG reading and writing shared by `LoadImage`, `SaveImage` and later nodes: decoding to an
//! [`Image`], encoding a frame with text chunks, atomic writes through a temp file, and reading
//! back the workflow embedded in a saved image.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use png::{BitDepth, ColorType, Decoder, Limits, Transformations};
use veetance_core::Image;

/// The PNG text keyword under which `SaveImage` embeds the workflow (`.ron` text).
pub const WORKFLOW_PNG_KEYWORD: &str = "veetance-workflow";

/// The largest width or height `LoadImage` accepts (and the image nodes produce).
pub const MAX_SIDE: u32 = 16384;

/// Largest decompressed text chunk `read_png_workflow` accepts (a guard against zip bombs).
const TEXT_LIMIT: usize = 64 << 20;

/// Decodes a PNG file into a one-image batch: RGB or RGBA f32 in [0, 1]. Palette and low-bit
/// images are expanded to 8 bits (with alpha when they carry transparency), 16-bit samples keep
/// their precision, gray becomes RGB and gray+alpha becomes RGBA.
pub fn read_png_image(path: &Path) -> Result<Image, String> {
    let file =
        File::open(path).map_err(|e| format!("cannot open image '{}': {e}", path.display()))?;
    decode_png(BufReader::new(file), &path.display().to_string())
}

/// Decodes the bytes of a PNG file as [`read_png_image`] decodes a file; `origin` names it in
/// errors.
pub fn decode_png_image(bytes: &[u8], origin: &str) -> Result<Image, String> {
    decode_png(Cursor::new(bytes), origin)
}

fn decode_png<R: std::io::BufRead + std::io::Seek>(
    input: R,
    origin: &str,
) -> Result<Image, String> {
    let bad = |e: png::DecodingError| format!("'{origin}' is not a readable PNG: {e}");
    let mut decoder = Decoder::new_with_limits(
        input,
        Limits {
            // Room for the largest accepted image at 16 bits, RGBA.
            bytes: (MAX_SIDE as usize).pow(2) * 8,
        },
    );
    decoder.set_transformations(Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    // The png crate (0.18) panics expanding a palette whose length is not a whole number of RGB
    // entries (found by fuzzing); the PNG specification requires one, so refuse it here.
    if let Some(palette) = reader.info().palette.as_deref() {
        if palette.len() % 3 != 0 || palette.len() > 3 * 256 {
            return Err(format!(
                "'{origin}' is not a readable PNG: its palette (PLTE) holds {} bytes, not 1 to 256 \
                 RGB entries of 3 bytes",
                palette.len()
            ));
        }
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "'{origin}' is {width}×{height}; images up to {MAX_SIDE}×{MAX_SIDE} are supported"
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| format!("'{origin}' is too large to decode"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    buf.truncate(frame.buffer_size());
    let (in_channels, out_channels) = match frame.color_type {
        ColorType::Grayscale => (1, 3),
        ColorType::GrayscaleAlpha => (2, 4),
        ColorType::Rgb => (3, 3),
        ColorType::Rgba => (4, 4),
        ColorType::Indexed => {
            return Err(format!(
                "'{origin}': palette image was not expanded (decoder bug)"
            ))
        }
    };
    let samples: Vec<f32> = match frame.bit_depth {
        BitDepth::Eight => buf.iter().map(|&b| b as f32 / 255.0).collect(),
        BitDepth::Sixteen => buf
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]) as f32 / 65535.0)
            .collect(),
        other => {
            return Err(format!(
                "'{origin}': {other:?}-bit samples were not expanded (decoder bug)"
            ))
        }
    };
    let pixels = width as usize * height as usize;
    if samples.len() < pixels * in_channels {
        return Err(format!("'{origin}': image data is truncated"));
    }
    let data = if in_channels == out_channels {
        samples
    } else {
        // Gray (+ alpha): replicate the gray sample into R, G and B.
        let mut data = Vec::with_capacity(pixels * out_channels);
        for px in samples.chunks_exact(in_channels) {
            data.extend_from_slice(&[px[0], px[0], px[0]]);
            if in_channels == 2 {
                data.push(px[1]);
            }
        }
        data
    };
    Image::new(1, height, width, out_channels as u32, data).map_err(|e| format!("'{origin}': {e}"))
}

/// Whether `keyword` is a valid PNG text keyword: 1 to 79 printable Latin-1 characters, without
/// leading, trailing or doubled spaces.
fn check_keyword(keyword: &str) -> Result<(), String> {
    let printable = keyword
        .chars()
        .all(|c| matches!(c as u32, 32..=126 | 161..=255));
    if keyword.is_empty()
        || keyword.chars().count() > 79
        || !printable
        || keyword.starts_with(' ')
        || keyword.ends_with(' ')
        || keyword.contains("  ")
    {
        return Err(format!(
            "{keyword:?} is not a valid PNG text keyword (1 to 79 printable Latin-1 characters)"
        ));
    }
    Ok(())
}

/// Encodes one frame (`height × width × channels` f32 values in [0, 1], 3 or 4 channels) as an
/// 8-bit PNG with the given text chunks. ASCII text goes into a tEXt chunk, anything else into an
/// uncompressed iTXt (UTF-8) chunk.
pub fn encode_png<W: Write>(
    out: W,
    image_frame: &[f32],
    width: u32,
    height: u32,
    channels: u32,
    chunks: &[(String, String)],
) -> Result<(), String> {
    let color = match channels {
        3 => ColorType::Rgb,
        4 => ColorType::Rgba,
        n => return Err(format!("cannot write a {n}-channel image as PNG (3 or 4)")),
    };
    let expected = width as usize * height as usize * channels as usize;
    if image_frame.len() != expected || width == 0 || height == 0 {
        return Err(format!(
            "image frame has {} values, expected {width}×{height}×{channels} = {expected}",
            image_frame.len()
        ));
    }
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(color);
    encoder.set_depth(BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    for (keyword, text) in chunks {
        check_keyword(keyword)?;
        if text.contains('\0') {
            return Err(format!("text chunk {keyword:?} contains a NUL character"));
        }
        let added = if text.is_ascii() {
            encoder.add_text_chunk(keyword.clone(), text.clone())
        } else {
            encoder.add_itxt_chunk(keyword.clone(), text.clone())
        };
        added.map_err(|e| format!("cannot add text chunk {keyword:?}: {e}"))?;
    }
    let mut writer = encoder
        .write_header()
        .map_err(|e| format!("cannot write PNG header: {e}"))?;
    let bytes: Vec<u8> = image_frame
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    writer
        .write_image_data(&bytes)
        .map_err(|e| format!("cannot write PNG data: {e}"))?;
    writer
        .finish()
        .map_err(|e| format!("cannot finish PNG: {e}"))
}

/// A file being written under a temporary name; removed on drop unless persisted, so a failed or
/// panicking write never leaves it behind.
pub(crate) struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Creates a new, empty temp file in `dir` (which must exist), named after `stem` and hidden.
    pub(crate) fn create(dir: &Path, stem: &str) -> Result<(Self, File), String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{stem}.{}.{n}.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((TempFile { path, keep: false }, file)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot create a temp file in '{}': {e}",
                        dir.display()
                    ))
                }
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temp file to `target`, replacing it if it exists.
    pub(crate) fn persist_replacing(mut self, target: &Path) -> Result<(), String> {
        std::fs::rename(&self.path, target).map_err(|e| {
            format!(
                "cannot move '{}' to '{}': {e}",
                self.path.display(),
                target.display()
            )
        })?;
        self.keep = true;
        Ok(())
    }

    /// Publishes the temp file as `target` only if `target` does not exist yet. Returns false
    /// (keeping the temp file) when it does, so the caller can try another name.
    pub(crate) fn persist_new(&mut self, target: &Path) -> Result<bool, String> {
        // A hard link fails atomically when the target exists, so a file that appeared since the
        // caller chose its name is never overwritten.
        match std::fs::hard_link(&self.path, target) {
            Ok(()) => {
                self.keep = true;
                // The temp name is only a second link now; a failure to remove it is harmless
                // to the output but would leave clutter, so report it.
                std::fs::remove_file(&self.path).map_err(|e| {
                    format!("cannot remove temp file '{}': {e}", self.path.display())
                })?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // File systems without hard links: fall back to a checked rename.
            Err(_) if !target.exists() => {
                std::fs::rename(&self.path, target).map_err(|e| {
                    format!(
                        "cannot move '{}' to '{}': {e}",
                        self.path.display(),
                        target.display()
                    )
                })?;
                self.keep = true;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Encodes into a fresh temp file in `dir`, synced to disk; the caller publishes it.
pub(crate) fn write_png_temp(
    dir: &Path,
    stem: &str,
    image_frame: &[f32],
    width: u32,
    height: u32,
    channels: u32,
    chunks: &[(String, String)],
) -> Result<TempFile, String> {
    let (temp, file) = TempFile::create(dir, stem)?;
    let mut out = BufWriter::new(file);
    encode_png(&mut out, image_frame, width, height, channels, chunks)
        .map_err(|e| format!("writing '{}': {e}", temp.path().display()))?;
    let file = out
        .into_inner()
        .map_err(|e| format!("writing '{}': {}", temp.path().display(), e.error()))?;
    file.sync_all()
        .map_err(|e| format!("writing '{}': {e}", temp.path().display()))?;
    Ok(temp)
}

/// Writes one frame (`height × width × channels` f32 values in [0, 1], 3 or 4 channels) as an
/// 8-bit PNG at `path`, with `chunks` as (keyword, text) text chunks (tEXt for ASCII text, iTXt
/// otherwise). The file is written under a temporary name in the same folder and renamed into
/// place, so a partly written `path` is never visible; on error the temp file is removed. An
/// existing file at `path` is replaced. The folder must exist.
pub fn write_png(
    path: &Path,
    image_frame: &[f32],
    width: u32,
    height: u32,
    channels: u32,
    chunks: &[(String, String)],
) -> Result<(), String> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("'{}' does not name a file", path.display()))?;
    let temp = write_png_temp(dir, &stem, image_frame, width, height, channels, chunks)?;
    temp.persist_replacing(path)
}

/// The text of the first `keyword` chunk (tEXt, zTXt or iTXt) of a PNG file's bytes.
pub fn read_png_text(bytes: &[u8], keyword: &str) -> Result<Option<String>, String> {
    let mut decoder = Decoder::new(Cursor::new(bytes));
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    if let Some(text) = find_text(reader.info(), keyword)? {
        return Ok(Some(text));
    }
    // Text chunks may also follow the image data; read to the end (the image is skipped).
    reader
        .finish()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    find_text(reader.info(), keyword)
}

fn find_text(info: &png::Info<'_>, keyword: &str) -> Result<Option<String>, String> {
    if let Some(chunk) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == keyword)
    {
        return Ok(Some(chunk.text.clone()));
    }
    if let Some(chunk) = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == keyword)
    {
        let mut chunk = chunk.clone();
        chunk
            .decompress_text_with_limit(TEXT_LIMIT)
            .map_err(|e| format!("zTXt chunk {keyword:?}: {e}"))?;
        return chunk
            .get_text()
            .map(Some)
            .map_err(|e| format!("zTXt chunk {keyword:?}: {e}"));
    }
    if let Some(chunk) = info.utf8_text.iter().find(|c| c.keyword == keyword) {
        let mut chunk = chunk.clone();
        chunk
            .decompress_text_with_limit(TEXT_LIMIT)
            .map_err(|e| format!("iTXt chunk {keyword:?}: {e}"))?;
        return chunk
            .get_text()
            .map(Some)
            .map_err(|e| format!("iTXt chunk {keyword:?}: {e}"));
    }
    Ok(None)
}

/// The workflow embedded by `SaveImage` in a PNG file's bytes (the [`WORKFLOW_PNG_KEYWORD`] text
/// chunk, as tEXt, zTXt or iTXt), or `None` when the image has none.
pub fn read_png_workflow(bytes: &[u8]) -> Result<Option<String>, String> {
    read_png_text(bytes, WORKFLOW_PNG_KEYWORD)
}

/// The workflow text a file holds, as the front ends open files: a `.ron` file's text, or the
/// workflow embedded in a PNG written by `SaveImage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowText {
    pub text: String,
    /// The name messages use: the path, with " (embedded workflow)" for a PNG.
    pub origin: String,
    /// Whether it came out of a PNG (saving must then go elsewhere, never over the image).
    pub from_png: bool,
}

/// Reads the workflow text of a `.ron` file or of a PNG written by `SaveImage`, telling them apart
/// by the PNG signature. Errors are one line starting with the path.
pub fn read_workflow_text(path: &std::path::Path) -> Result<WorkflowText, String> {
    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{origin}: cannot read the file: {e}"))?;
    if bytes.starts_with(PNG_MAGIC) {
        let text = read_png_workflow(&bytes)
            .map_err(|e| format!("{origin}: not a readable PNG: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{origin}: this PNG holds no Veetance workflow (only images written by \
                     SaveImage carry one)"
                )
            })?;
        return Ok(WorkflowText {
            text,
            origin: format!("{origin} (embedded workflow)"),
            from_png: true,
        });
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{origin}: not a text file (expected .ron or .png)"))?;
    Ok(WorkflowText {
        text,
        origin,
        from_png: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(chunks: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_png(&mut out, &[0.5; 12], 2, 2, 3, chunks).unwrap();
        out
    }

    #[test]
    fn keyword_rules_follow_the_png_spec() {
        assert!(check_keyword("veetance-workflow").is_ok());
        assert!(check_keyword("").is_err());
        assert!(check_keyword(" lead").is_err());
        assert!(check_keyword("two  spaces").is_err());
        assert!(check_keyword(&"k".repeat(80)).is_err());
        assert!(check_keyword("tab\there").is_err());
    }

    #[test]
    fn ascii_text_is_stored_as_text_and_unicode_as_itxt() {
        let ascii = encode(&[("k".into(), "plain".into())]);
        assert!(ascii.windows(4).any(|w| w == b"tEXt"));
        assert!(!ascii.windows(4).any(|w| w == b"iTXt"));
        let unicode = encode(&[("k".into(), "chat é 猫".into())]);
        assert!(unicode.windows(4).any(|w| w == b"iTXt"));
        assert_eq!(
            read_png_text(&unicode, "k").unwrap().as_deref(),
            Some("chat é 猫")
        );
    }

    #[test]
    fn compressed_chunks_are_read_back() {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(ColorType::Rgb);
        encoder
            .add_ztxt_chunk(WORKFLOW_PNG_KEYWORD.into(), "zipped".into())
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[1, 2, 3]).unwrap();
        writer.finish().unwrap();
        assert_eq!(read_png_workflow(&out).unwrap().as_deref(), Some("zipped"));

        let mut out = Vec::new();
        let encoder = png::Encoder::new(&mut out, 1, 1);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[7]).unwrap();
        let mut itxt = png::text_metadata::ITXtChunk::new(WORKFLOW_PNG_KEYWORD, "zipped ü");
        itxt.compress_text().unwrap();
        // After the image data, where only a full read finds it.
        writer.write_text_chunk(&itxt).unwrap();
        writer.finish().unwrap();
        assert_eq!(
            read_png_workflow(&out).unwrap().as_deref(),
            Some("zipped ü")
        );
    }

    #[test]
    fn missing_workflow_is_none_and_garbage_is_an_error() {
        assert_eq!(read_png_workflow(&encode(&[])).unwrap(), None);
        assert!(read_png_workflow(b"not a png").is_err());
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut out = Vec::new();
        assert!(encode_png(&mut out, &[0.0; 5], 2, 2, 3, &[]).is_err());
        assert!(encode_png(&mut out, &[0.0; 8], 2, 2, 2, &[]).is_err());
        assert!(encode_png(
            &mut out,
            &[0.0; 12],
            2,
            2,
            3,
            &[("k".into(), "a\0b".into())]
        )
        .is_err());
    }
}
