//! TextEncode: a prompt to conditioning. Its output is cached like any other, so a new seed with
//! the same prompt never runs the encoder again.

use veetance_core::{ExecContext, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value};

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
        let embedding = encoder
            .encoder
            .encode(&text)
            .map_err(model_err("encoding the prompt"))?;
        if embedding.truncated {
            ctx.warn(format!(
                "the prompt is longer than {} tokens with its template and was cut",
                encoder.encoder.config().max_length
            ));
        }
        Ok(vec![object(
            PortType::Conditioning,
            Conditioning {
                hidden: embedding.hidden,
                prompt: text,
            },
        )])
    }
}
