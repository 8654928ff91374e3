//! ComfyUI's primitive nodes (`comfy_extras/nodes_primitive.py`): `PrimitiveInt`,
//! `PrimitiveFloat`, `PrimitiveString`, `PrimitiveStringMultiline`, `PrimitiveBoolean`. Each
//! passes its `value` widget to its one output.

use veetance_core::{ExecContext, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value};

const CATEGORY: &str = "utils/primitive";

/// Python's `sys.maxsize` (2^63 − 1), the bound of ComfyUI's primitive widgets.
const MAXSIZE: i64 = i64::MAX;

pub struct Primitive {
    schema: NodeSchema,
}

impl Primitive {
    fn new(type_name: &str, display_name: &str, param: ParamDef, output: (&str, PortType)) -> Self {
        Primitive {
            schema: NodeSchema::new(type_name, display_name, CATEGORY)
                .doc(&format!(
                    "ComfyUI's {type_name}: a constant {}, to feed one value into several \
                     nodes' widgets.",
                    output.0
                ))
                .param(param)
                .output(output.0, output.1, "The value of the `value` widget."),
        }
    }

    pub fn int() -> Self {
        Self::new(
            "PrimitiveInt",
            "Int",
            ParamDef::int("value", 0, -MAXSIZE, MAXSIZE, "The integer.")
                .with_control_after_generate(),
            ("INT", PortType::Int),
        )
    }

    pub fn float() -> Self {
        Self::new(
            "PrimitiveFloat",
            "Float",
            ParamDef::float(
                "value",
                0.0,
                -(MAXSIZE as f64),
                MAXSIZE as f64,
                0.1,
                "The number.",
            ),
            ("FLOAT", PortType::Float),
        )
    }

    pub fn string() -> Self {
        Self::new(
            "PrimitiveString",
            "String",
            ParamDef::string("value", "", "The text."),
            ("STRING", PortType::String),
        )
    }

    pub fn string_multiline() -> Self {
        Self::new(
            "PrimitiveStringMultiline",
            "String (Multiline)",
            ParamDef::text("value", "", "The text; may span several lines."),
            ("STRING", PortType::String),
        )
    }

    pub fn boolean() -> Self {
        Self::new(
            "PrimitiveBoolean",
            "Boolean",
            ParamDef::bool("value", false, "The flag."),
            ("BOOLEAN", PortType::Bool),
        )
    }
}

impl NodeDef for Primitive {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let value = ctx
            .params
            .get("value")
            .cloned()
            .ok_or_else(|| NodeError::failed("param 'value' is not declared"))?;
        Ok(vec![value])
    }
}
