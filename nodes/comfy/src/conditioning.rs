//! ComfyUI's `CLIPTextEncode` and `ConditioningZeroOut`.

use veetance_core::{ExecContext, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value};
use veetance_nodes_flux2::encode::encode_text;
use veetance_nodes_flux2::values::{candle_err, input, object, Conditioning, TextEncoderHandle};

pub struct ClipTextEncode {
    schema: NodeSchema,
}

impl ClipTextEncode {
    pub fn new() -> Self {
        ClipTextEncode {
            schema: NodeSchema::new(
                "CLIPTextEncode",
                "CLIP Text Encode (Prompt)",
                "model/conditioning",
            )
            .doc(
                "ComfyUI's CLIPTextEncode: encodes a prompt with the FLUX.2 [klein] text encoder, \
                 as TextEncode does (chat template, 512 tokens, three layers' hidden states).",
            )
            .input(
                "clip",
                PortType::TextEncoder,
                "The text encoder, from CLIPLoader.",
            )
            .param(ParamDef::text("text", "", "The text to be encoded."))
            .output(
                "CONDITIONING",
                PortType::Conditioning,
                "The encoded prompt, for a guider.",
            ),
        }
    }
}

impl Default for ClipTextEncode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for ClipTextEncode {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let encoder = input::<TextEncoderHandle>(ctx, "clip", PortType::TextEncoder)?;
        let text = ctx.params.str("text")?.to_string();
        let conditioning = encode_text(ctx, encoder, text)?;
        Ok(vec![object(PortType::Conditioning, conditioning)])
    }
}

pub struct ConditioningZeroOut {
    schema: NodeSchema,
}

impl ConditioningZeroOut {
    pub fn new() -> Self {
        ConditioningZeroOut {
            schema: NodeSchema::new(
                "ConditioningZeroOut",
                "Conditioning Zero Out",
                "model/conditioning/transform",
            )
            .doc(
                "ComfyUI's ConditioningZeroOut: a conditioning of zeros, of the same shape as the \
                 input (the distilled klein template's negative, unused at cfg 1).",
            )
            .input(
                "conditioning",
                PortType::Conditioning,
                "The conditioning whose shape to take.",
            )
            .output(
                "CONDITIONING",
                PortType::Conditioning,
                "Zeros of that shape.",
            ),
        }
    }
}

impl Default for ConditioningZeroOut {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for ConditioningZeroOut {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let c = input::<Conditioning>(ctx, "conditioning", PortType::Conditioning)?;
        let hidden = c
            .hidden
            .zeros_like()
            .map_err(candle_err("ConditioningZeroOut"))?;
        Ok(vec![object(
            PortType::Conditioning,
            Conditioning {
                hidden,
                prompt: String::new(),
                references: c.references.clone(),
                home: c.home.clone(),
            },
        )])
    }
}
