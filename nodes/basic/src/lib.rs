//! Veetance nodes that need no model: primitive constants and seeds, PNG loading (images and
//! masks, as ComfyUI's `LoadImage`/`LoadImageMask`) and saving (with the workflow embedded in
//! saved files), image preparation for a VAE (ComfyUI's `ImageScaleToTotalPixels` and
//! `GetImageSize`, `ImageCropToMultiple`), and simple image operations and generators.
//!
//! Every node declares itself once through a [`veetance_core::NodeSchema`]; [`register`] adds
//! them all to a registry. The PNG helpers ([`write_png`], [`read_png_workflow`]) are public
//! for the workflow crate, the editor and later output nodes.
//!
//! May depend on `veetance-core` and `png` only (no models, no UI).

mod generate;
mod image_ops;
mod load_image;
mod png_io;
mod prepare;
mod primitives;
pub mod resample;
mod rng;
mod save_image;

use veetance_core::NodeRegistry;

pub use generate::{parse_hex_color, GradientImage, NoiseImage};
pub use image_ops::{ImageBlend, ImageResize};
pub use load_image::{resolve_image_path, LoadImage, LoadImageMask};
pub use png_io::{
    decode_png_image, encode_png, read_png_image, read_png_text, read_png_workflow,
    read_workflow_text, write_png, WorkflowText, MAX_SIDE, WORKFLOW_PNG_KEYWORD,
};
pub use prepare::{fit_to_multiple, GetImageSize, ImageCropToMultiple, ImageScaleToTotalPixels};
pub use primitives::{Primitive, Seed};
pub use rng::SEED_MAX;
pub use save_image::{png_chunks, save_images, SaveImage};

/// Registers every node of this crate.
pub fn register(reg: &mut NodeRegistry) {
    reg.add(Primitive::int());
    reg.add(Primitive::float());
    reg.add(Primitive::bool());
    reg.add(Primitive::string());
    reg.add(Seed::new());
    reg.add(LoadImage::new());
    reg.add(LoadImageMask::new());
    reg.add(ImageScaleToTotalPixels::new());
    reg.add(GetImageSize::new());
    reg.add(ImageCropToMultiple::new());
    reg.add(SaveImage::new());
    reg.add(ImageResize::new());
    reg.add(ImageBlend::new());
    reg.add(GradientImage::new());
    reg.add(NoiseImage::new());
}
