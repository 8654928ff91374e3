//! TextEncode: a prompt to conditioning. Its output is cached like any other, so a new seed with
//! the same prompt never runs the encoder again.

use std::sync::Arc;

use veetance_core::{ExecContext, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value};
use veetance_models::qwen3::TextEncoder;

use crate::loaders::gib;
use crate::values::{input, model_err, object, Conditioning, TextEncoderHandle};

pub struct TextEncode {
    schema: NodeSchema,
}

impl TextEncode {
    pub fn new() -> Self {
        TextEncode {
            schema: NodeSchema::new("TextEncode", "Text Encode", "conditioning")
                .doc(
                    "Encodes a prompt with the Qwen3 text encoder: the chat template with thinking \
                     disabled, 512 tokens right-padded, hidden states of three layers side by side. \
                     A prompt longer than 512 tokens is cut, with a warning.",
                )
                .input(
                    "text_encoder",
                    PortType::TextEncoder,
                    "From LoadTextEncoder.",
                )
                .param(ParamDef::text("text", "", "The prompt."))
                .output(
                    "conditioning",
                    PortType::Conditioning,
                    "The encoded prompt, for the sampler.",
                ),
        }
    }
}

impl Default for TextEncode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for TextEncode {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let encoder = input::<TextEncoderHandle>(ctx, "text_encoder", PortType::TextEncoder)?;
        let text = ctx.params.str("text")?.to_string();
        let conditioning = encode_text(ctx, encoder, text)?;
        Ok(vec![object(PortType::Conditioning, conditioning)])
    }
}

/// Encodes `text` with `encoder` (placed for the device room, its layers streamed when they do
/// not fit); warns when the prompt was cut. TextEncode and ComfyUI's CLIPTextEncode.
pub fn encode_text(
    ctx: &ExecContext<'_>,
    encoder: &TextEncoderHandle,
    text: String,
) -> Result<Conditioning, NodeError> {
    let placed = placed_encoder(ctx, encoder)?;
    let embedding = placed
        .encode(&text)
        .map_err(model_err("encoding the prompt"))?;
    if embedding.truncated {
        ctx.warn(format!(
            "the prompt is longer than {} tokens with its template and was cut",
            encoder.encoder.config().max_length
        ));
    }
    Ok(Conditioning {
        hidden: embedding.hidden,
        prompt: text,
        references: Vec::new(),
        home: None,
    })
}

/// The encoder as this run uses it: as loaded when it is on its device, else moved there, with
/// its layers streamed from host memory when the device room (less a prompt's activations) does
/// not hold them. See `sampler::placed_model` for what the room means.
fn placed_encoder(
    ctx: &ExecContext<'_>,
    handle: &TextEncoderHandle,
) -> Result<Arc<TextEncoder>, NodeError> {
    let encoder = &handle.encoder;
    let bytes = encoder.weight_bytes();
    if bytes.host == 0 || (handle.device.is_cpu() && ctx.device_room().is_none()) {
        return Ok(encoder.clone());
    }
    let room = ctx.device_room().unwrap_or(u64::MAX);
    // A 512-token prompt: the f32 scores of one layer dominate (heads × 512² × 4 bytes × 2) plus
    // a few hidden-state copies; 256 MiB covers Qwen3-8B.
    let activations = 256 << 20;
    let (placed, streamed) = encoder
        .place_within(&handle.device, room.saturating_sub(activations))
        .map_err(model_err("placing the text encoder on the device"))?;
    if streamed > 0 {
        ctx.warn(format!(
            "streaming {streamed} text encoder layers from host memory: the device room ({}) does \
             not hold its weights ({}); slower but the same result",
            gib(room),
            gib(bytes.total())
        ));
    }
    Ok(Arc::new(placed))
}
