//! ComfyUI's `VAEDecode` and `PreviewImage` (`SaveImage` is the basic family's, which has
//! ComfyUI's names).

use std::hash::{BuildHasher, Hasher};

use veetance_core::{
    ExecContext, Freshness, NodeDef, NodeError, NodeSchema, Params, PortType, RunEnv, Value,
};
use veetance_nodes_flux2::decode::{decode_host_need, decode_latent, Tiles};
use veetance_nodes_flux2::values::{input, Latent, VaeHandle};

pub struct VaeDecode {
    schema: NodeSchema,
}

impl VaeDecode {
    pub fn new() -> Self {
        VaeDecode {
            schema: NodeSchema::new("VAEDecode", "VAE Decode", "model/latent")
                .doc(
                    "ComfyUI's VAEDecode: decodes latents to images with the FLUX.2 VAE, as \
                     VaeDecode does (in tiles, with a warning, when the device cannot hold a \
                     whole decode).",
                )
                .input("samples", PortType::Latent, "The latent to be decoded.")
                .input("vae", PortType::Vae, "The VAE, from VAELoader.")
                .output("IMAGE", PortType::Image, "The decoded image."),
        }
    }
}

impl Default for VaeDecode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for VaeDecode {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let vae = input::<VaeHandle>(ctx, "vae", PortType::Vae)?;
        let latent = input::<Latent>(ctx, "samples", PortType::Latent)?;
        let image = decode_latent(ctx, vae, latent, Tiles::default())?;
        Ok(vec![Value::Image(image)])
    }

    fn host_need(&self, _params: &veetance_core::Params, inputs: &[(&str, Value)]) -> Option<u64> {
        decode_host_need(inputs, Tiles::default())
    }
}

pub struct PreviewImage {
    schema: NodeSchema,
}

impl PreviewImage {
    pub fn new() -> Self {
        PreviewImage {
            schema: NodeSchema::new("PreviewImage", "Preview Image", "image")
                .doc(
                    "ComfyUI's PreviewImage: writes the images as PNG files into the run's temp \
                     folder (ComfyUI's `temp`; `--out`/temp by default), named \
                     `ComfyUI_temp_<5 letters>_NNNNN.png`, with the same text chunks as \
                     SaveImage, and reports each file.",
                )
                .input("images", PortType::Image, "The images to preview.")
                .output(
                    "path",
                    PortType::String,
                    "The path of the first file written.",
                )
                .output_node(),
        }
    }
}

impl Default for PreviewImage {
    fn default() -> Self {
        Self::new()
    }
}

/// ComfyUI's preview stem: `ComfyUI_temp_` and five random lowercase letters, so that previews
/// of different runs and nodes do not share a numbering.
fn preview_stem() -> String {
    let mut bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let letters: String = (0..5)
        .map(|_| {
            let c = (b'a' + (bits % 26) as u8) as char;
            bits /= 26;
            c
        })
        .collect();
    format!("ComfyUI_temp_{letters}")
}

impl NodeDef for PreviewImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    /// The temp folder: the same graph previewed into another folder runs again.
    fn freshness(&self, _params: &Params, env: &RunEnv) -> Freshness {
        Freshness::Fingerprint(env.temp_dir().as_os_str().as_encoded_bytes().to_vec())
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let images = ctx.image("images")?;
        let dir = ctx.env.temp_dir();
        std::fs::create_dir_all(&dir).map_err(|e| {
            NodeError::failed(format!(
                "cannot create the temp folder '{}': {e}",
                dir.display()
            ))
        })?;
        let written = veetance_nodes_basic::save_images(ctx, images, &dir, &preview_stem())?;
        Ok(vec![Value::string(written[0].display().to_string())])
    }
}
