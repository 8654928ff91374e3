//! ComfyUI's classes for images in: `VAEEncode` and `ReferenceLatent` (FLUX.2 [klein] editing),
//! and `FluxKVCache`, which is refused with a clear error.
//!
//! Sources (ComfyUI): `nodes.py` `VAEEncode` (pixels cropped, centred, to the VAE's downscale
//! ratio, which is 16 for the FLUX.2 VAE: 8 × 2 for its batch-norm patchified latent), the VAE's
//! own encode (`2x − 1`, the Gaussian's mean, the batch-norm normalisation);
//! `comfy_extras/nodes_edit_model.py` `ReferenceLatent` (appends to the conditioning's
//! `reference_latents`); `comfy/ldm/flux/model.py` `_forward` with Flux2's
//! `default_ref_method = "index"` and `ref_index_scale = 10` (reference `i` at time index
//! `10·(i+1)`, no spatial offset), which the sampling routine implements
//! (`veetance_models::sampling::References`).

use veetance_core::Mask;
use veetance_core::{
    ExecContext, NodeDef, NodeError, NodeSchema, ParamProblem, Params, PortType, RunEnv, Value,
};
use veetance_nodes_flux2::image_in::{encode_image, mask_tensor, with_reference};
use veetance_nodes_flux2::values::{
    input, object, optional_input, Conditioning, Latent, VaeHandle,
};

pub struct VaeEncode {
    schema: NodeSchema,
}

impl VaeEncode {
    pub fn new() -> Self {
        VaeEncode {
            schema: NodeSchema::new("VAEEncode", "VAE Encode", "model/latent")
                .doc(
                    "ComfyUI's VAEEncode: encodes images with the FLUX.2 VAE into latents, after \
                     cropping them (centred) to a multiple of 16 pixels, as ComfyUI does.",
                )
                .input("pixels", PortType::Image, "The image to be encoded.")
                .input("vae", PortType::Vae, "The VAE, from VAELoader.")
                .output("LATENT", PortType::Latent, "The encoded latent."),
        }
    }
}

impl Default for VaeEncode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for VaeEncode {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let vae = input::<VaeHandle>(ctx, "vae", PortType::Vae)?;
        let image = ctx.image("pixels")?;
        let (samples, _) = encode_image(vae, image, "VAEEncode")?;
        Ok(vec![object(
            PortType::Latent,
            Latent::new(samples, Vec::new()),
        )])
    }
}

pub struct ReferenceLatent {
    schema: NodeSchema,
}

impl ReferenceLatent {
    pub fn new() -> Self {
        ReferenceLatent {
            schema: NodeSchema::new(
                "ReferenceLatent",
                "ReferenceLatent",
                "advanced/conditioning/edit_models",
            )
            .doc(
                "ComfyUI's ReferenceLatent: sets the guiding latent for an edit model. Chain it to \
                 give several reference images; FLUX.2 [klein] joins each one's tokens to the \
                 image's with its own position (time index 10, 20, 30, ...).",
            )
            .input("conditioning", PortType::Conditioning, "The conditioning.")
            .optional_input("latent", PortType::Latent, "The reference image's latent.")
            .output(
                "CONDITIONING",
                PortType::Conditioning,
                "The conditioning with the reference appended.",
            ),
        }
    }
}

impl Default for ReferenceLatent {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for ReferenceLatent {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let conditioning = input::<Conditioning>(ctx, "conditioning", PortType::Conditioning)?;
        let out = match optional_input::<Latent>(ctx, "latent", PortType::Latent)? {
            None => conditioning.clone(),
            Some(latent) => with_reference(conditioning, latent, "ReferenceLatent")?,
        };
        Ok(vec![object(PortType::Conditioning, out)])
    }
}

/// ComfyUI's `SetLatentNoiseMask`: the latent with the mask it is inpainted under. The mask is
/// kept at its own size; the sampler resizes it to the latent grid bilinearly, as ComfyUI's
/// `reshape_mask` does, and blends as `KSamplerX0Inpaint` does.
pub struct SetLatentNoiseMask {
    schema: NodeSchema,
}

impl SetLatentNoiseMask {
    pub fn new() -> Self {
        SetLatentNoiseMask {
            schema: NodeSchema::new(
                "SetLatentNoiseMask",
                "Set Latent Noise Mask",
                "latent/inpaint",
            )
            .doc(
                "ComfyUI's SetLatentNoiseMask: the sampler repaints the latent only where the \
                     mask is 1 and keeps it where it is 0 (soft values blend).",
            )
            .input("samples", PortType::Latent, "The latent.")
            .input("mask", PortType::Mask, "The mask, 1 = repaint.")
            .output(
                "LATENT",
                PortType::Latent,
                "The latent with its noise mask.",
            ),
        }
    }
}

impl Default for SetLatentNoiseMask {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for SetLatentNoiseMask {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let latent = input::<Latent>(ctx, "samples", PortType::Latent)?;
        let mask = ctx
            .object("mask", PortType::Mask)?
            .downcast::<Mask>()
            .ok_or_else(|| NodeError::failed("SetLatentNoiseMask: input 'mask' is not a mask"))?;
        let noise_mask = mask_tensor(mask, None, "SetLatentNoiseMask")?;
        Ok(vec![object(
            PortType::Latent,
            Latent {
                noise_mask: Some(noise_mask),
                ..latent.clone()
            },
        )])
    }
}

/// ComfyUI's `FluxKVCache`: registered so that a graph using it gets a clear error rather than
/// "unknown node type". Its semantics (reference keys and values cached at the first step and
/// reused, the reference tokens then dropped from the sequence) are not implemented, and a graph
/// without it paints another picture than ComfyUI with it, so it is refused at validation.
pub struct FluxKvCache {
    schema: NodeSchema,
}

impl FluxKvCache {
    pub fn new() -> Self {
        FluxKvCache {
            schema: NodeSchema::new("FluxKVCache", "Flux KV Cache", "advanced/model")
                .doc(
                    "ComfyUI's FluxKVCache (KV cache for reference images). Not supported by \
                     Veetance yet: a graph with it is refused.",
                )
                .input("model", PortType::Model, "The model to use KV Cache on.")
                .output(
                    "MODEL",
                    PortType::Model,
                    "The patched model with KV Cache enabled.",
                ),
        }
    }
}

impl Default for FluxKvCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Why FluxKVCache is refused.
pub const KV_CACHE_UNSUPPORTED: &str =
    "FluxKVCache is not supported: Veetance does not implement ComfyUI's reference KV cache \
     (reference keys and values computed at the first step and reused, the reference tokens then \
     left out), and without it the picture differs from ComfyUI's. Run the klein image-edit \
     templates without the KV cache (image_flux2_klein_image_edit_*.json)";

impl NodeDef for FluxKvCache {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, _params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        vec![ParamProblem {
            param: "model".into(),
            message: KV_CACHE_UNSUPPORTED.into(),
        }]
    }

    fn execute(&self, _ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        Err(NodeError::failed(KV_CACHE_UNSUPPORTED))
    }
}
