//! Latent previews as ComfyUI's binary WebSocket frames.
//!
//! - type 1 (`PREVIEW_IMAGE`): u32 BE event type, u32 BE image format (2 = PNG), the image;
//! - type 4 (`PREVIEW_IMAGE_WITH_METADATA`): u32 BE event type, u32 BE length of a JSON header
//!   (`node_id`, `prompt_id`, `display_node_id`, `parent_node_id`, `real_node_id`,
//!   `image_type`), the header, the image. Sent instead of type 1 to clients that advertised
//!   `supports_preview_metadata`.
//!
//! Previews are PNG (ComfyUI sends JPEG by default; PNG is format 2 of the same frame, which
//! every client that reads type 1 handles), scaled down to at most 512 pixels a side like
//! ComfyUI's `MAX_PREVIEW_RESOLUTION`.

use serde_json::json;
use veetance_core::Image;

/// The longest side of a preview, in pixels.
pub const MAX_PREVIEW_SIDE: u32 = 512;

const PREVIEW_IMAGE: u32 = 1;
const PREVIEW_IMAGE_WITH_METADATA: u32 = 4;
const FORMAT_PNG: u32 = 2;

/// The first image of the batch as a PNG, nearest-neighbour scaled to fit `max_side`.
pub fn encode_png(image: &Image, max_side: u32) -> Option<Vec<u8>> {
    if image.batch == 0 || image.width == 0 || image.height == 0 {
        return None;
    }
    let pixels = image.frame_u8(0);
    let channels = image.channels as usize;
    let scale = (image.width.max(image.height) as f64 / max_side.max(1) as f64).max(1.0);
    let width = ((image.width as f64 / scale).round() as u32).max(1);
    let height = ((image.height as f64 / scale).round() as u32).max(1);
    let mut data = Vec::with_capacity(width as usize * height as usize * channels);
    for y in 0..height {
        let sy = ((y as f64 * scale) as u32).min(image.height - 1) as usize;
        for x in 0..width {
            let sx = ((x as f64 * scale) as u32).min(image.width - 1) as usize;
            let at = (sy * image.width as usize + sx) * channels;
            data.extend_from_slice(pixels.get(at..at + channels)?);
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(if channels == 4 {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().ok()?;
        writer.write_image_data(&data).ok()?;
        writer.finish().ok()?;
    }
    Some(out)
}

/// A type-1 frame.
pub fn frame(png: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(png.len() + 8);
    out.extend_from_slice(&PREVIEW_IMAGE.to_be_bytes());
    out.extend_from_slice(&FORMAT_PNG.to_be_bytes());
    out.extend_from_slice(png);
    out
}

/// A type-4 frame.
pub fn frame_with_metadata(node: &str, prompt_id: &str, png: &[u8]) -> Vec<u8> {
    let header = json!({
        "node_id": node,
        "prompt_id": prompt_id,
        "display_node_id": node,
        "parent_node_id": null,
        "real_node_id": node,
        "image_type": "image/png",
    })
    .to_string();
    let mut out = Vec::with_capacity(png.len() + header.len() + 8);
    out.extend_from_slice(&PREVIEW_IMAGE_WITH_METADATA.to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(png);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_png_frames_within_the_size_limit() {
        let image = Image::new(1, 1024, 600, 3, vec![0.5; 1024 * 600 * 3]).unwrap();
        let png = encode_png(&image, MAX_PREVIEW_SIDE).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (300, 512));
        let f = frame(&png);
        assert_eq!(&f[..8], &[0, 0, 0, 1, 0, 0, 0, 2]);
        let m = frame_with_metadata("9", "p", &png);
        assert_eq!(&m[..4], &[0, 0, 0, 4]);
        let len = u32::from_be_bytes([m[4], m[5], m[6], m[7]]) as usize;
        let header: serde_json::Value = serde_json::from_slice(&m[8..8 + len]).unwrap();
        assert_eq!(header["image_type"], "image/png");
        assert_eq!(&m[8 + len..], &png[..]);
    }
}
