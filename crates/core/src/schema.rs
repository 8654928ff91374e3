//! Node declarations: the one place a node type states its name, category, ports, params,
//! defaults, ranges, docs and version. The editor, the CLI's `nodes` listing, validation and the
//! cache key all read from here.

use serde::Serialize;

use crate::value::{PortType, Value};

/// An input or output port.
#[derive(Clone, Debug, Serialize)]
pub struct PortDef {
    pub name: String,
    pub ty: PortType,
    /// Inputs only: a required input must be linked before the graph may run.
    pub required: bool,
    pub doc: String,
}

/// The longest text a string or path param holds, in bytes (1 MiB): a prompt is encoded to at
/// most a few hundred tokens, and the tokenizer's work and memory grow with the text.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// What a param holds, with its default and limits.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParamKind {
    Int {
        default: i64,
        min: i64,
        max: i64,
        step: i64,
    },
    Float {
        default: f64,
        min: f64,
        max: f64,
        step: f64,
    },
    Bool {
        default: bool,
    },
    String {
        default: String,
        multiline: bool,
    },
    Choice {
        options: Vec<String>,
        default: String,
    },
    /// A file path. `folder` names the models sub-folder it is usually found in
    /// (e.g. `diffusion_models`), so editors can list candidates.
    Path {
        default: String,
        folder: Option<String>,
    },
}

impl ParamKind {
    pub fn port_type(&self) -> PortType {
        match self {
            ParamKind::Int { .. } => PortType::Int,
            ParamKind::Float { .. } => PortType::Float,
            ParamKind::Bool { .. } => PortType::Bool,
            ParamKind::String { .. } | ParamKind::Path { .. } => PortType::String,
            ParamKind::Choice { .. } => PortType::Choice,
        }
    }

    pub fn default_value(&self) -> Value {
        match self {
            ParamKind::Int { default, .. } => Value::Int(*default),
            ParamKind::Float { default, .. } => Value::Float(*default),
            ParamKind::Bool { default } => Value::Bool(*default),
            ParamKind::String { default, .. } | ParamKind::Path { default, .. } => {
                Value::string(default.as_str())
            }
            ParamKind::Choice { default, .. } => Value::choice(default.as_str()),
        }
    }

    /// Checks a value against this kind and coerces it to the canonical form (an Int literal
    /// for a Float param becomes a Float; a String for a Choice becomes a Choice). The error
    /// says what was expected.
    pub fn check(&self, value: &Value) -> Result<Value, String> {
        match (self, value) {
            (ParamKind::Int { min, max, .. }, Value::Int(v)) => {
                if v < min || v > max {
                    Err(format!("{v} is out of range {min}..={max}"))
                } else {
                    Ok(Value::Int(*v))
                }
            }
            (ParamKind::Float { min, max, .. }, Value::Float(_) | Value::Int(_)) => {
                let v = value.as_float().unwrap_or_default();
                if !v.is_finite() {
                    Err(format!("{v} is not a finite number"))
                } else if v < *min || v > *max {
                    Err(format!("{v} is out of range {min}..={max}"))
                } else {
                    Ok(Value::Float(v))
                }
            }
            (ParamKind::Bool { .. }, Value::Bool(v)) => Ok(Value::Bool(*v)),
            (ParamKind::String { .. } | ParamKind::Path { .. }, Value::String(s))
                if s.len() > MAX_TEXT_BYTES =>
            {
                Err(format!(
                    "the text is {} bytes long; text params hold at most {} (1 MiB)",
                    s.len(),
                    MAX_TEXT_BYTES
                ))
            }
            (ParamKind::String { .. } | ParamKind::Path { .. }, Value::String(s)) => {
                Ok(Value::String(s.clone()))
            }
            (ParamKind::Choice { options, .. }, Value::Choice(s) | Value::String(s)) => {
                if options.iter().any(|o| o == &**s) {
                    Ok(Value::Choice(s.clone()))
                } else {
                    Err(format!("{s:?} is not one of {}", options.join(", ")))
                }
            }
            (kind, v) => Err(format!(
                "expected {}, found {} {v}",
                kind.describe(),
                v.port_type()
            )),
        }
    }

    /// Parses a command-line value (`--set node.param=value`) for this kind.
    pub fn parse_str(&self, text: &str) -> Result<Value, String> {
        let value = match self {
            ParamKind::Int { .. } => Value::Int(
                text.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{text:?} is not an integer"))?,
            ),
            ParamKind::Float { .. } => Value::Float(
                text.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{text:?} is not a number"))?,
            ),
            ParamKind::Bool { .. } => match text.trim() {
                "true" | "1" | "yes" | "on" => Value::Bool(true),
                "false" | "0" | "no" | "off" => Value::Bool(false),
                _ => return Err(format!("{text:?} is not true or false")),
            },
            ParamKind::String { .. } | ParamKind::Path { .. } => Value::string(text),
            ParamKind::Choice { .. } => Value::choice(text),
        };
        self.check(&value)
    }

    /// A short description for messages: "an integer in 1..=100".
    pub fn describe(&self) -> String {
        match self {
            ParamKind::Int { min, max, .. } => format!("an integer in {min}..={max}"),
            ParamKind::Float { min, max, .. } => format!("a number in {min}..={max}"),
            ParamKind::Bool { .. } => "true or false".into(),
            ParamKind::String { .. } => "a string".into(),
            ParamKind::Path { .. } => "a file path".into(),
            ParamKind::Choice { options, .. } => format!("one of {}", options.join(", ")),
        }
    }
}

/// A param: a constant set in the workflow, which a link may replace when `linkable`.
#[derive(Clone, Debug, Serialize)]
pub struct ParamDef {
    pub name: String,
    pub kind: ParamKind,
    pub doc: String,
    /// Whether a link may feed this param (like ComfyUI's widget-to-input conversion).
    pub linkable: bool,
    /// An integer param followed by ComfyUI's `control_after_generate` widget (fixed /
    /// increment / decrement / randomize): ComfyUI's UI workflows store one more value after it
    /// in `widgets_values`, and `/object_info` announces it. Front ends other than ComfyUI's
    /// ignore it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub control_after_generate: bool,
}

impl ParamDef {
    pub fn new(name: &str, kind: ParamKind, doc: &str) -> Self {
        ParamDef {
            name: name.into(),
            kind,
            doc: doc.into(),
            linkable: true,
            control_after_generate: false,
        }
    }

    pub fn int(name: &str, default: i64, min: i64, max: i64, doc: &str) -> Self {
        Self::new(
            name,
            ParamKind::Int {
                default,
                min,
                max,
                step: 1,
            },
            doc,
        )
    }

    pub fn float(name: &str, default: f64, min: f64, max: f64, step: f64, doc: &str) -> Self {
        Self::new(
            name,
            ParamKind::Float {
                default,
                min,
                max,
                step,
            },
            doc,
        )
    }

    pub fn bool(name: &str, default: bool, doc: &str) -> Self {
        Self::new(name, ParamKind::Bool { default }, doc)
    }

    pub fn string(name: &str, default: &str, doc: &str) -> Self {
        Self::new(
            name,
            ParamKind::String {
                default: default.into(),
                multiline: false,
            },
            doc,
        )
    }

    pub fn text(name: &str, default: &str, doc: &str) -> Self {
        Self::new(
            name,
            ParamKind::String {
                default: default.into(),
                multiline: true,
            },
            doc,
        )
    }

    pub fn choice(name: &str, options: &[&str], default: &str, doc: &str) -> Self {
        debug_assert!(options.contains(&default), "default must be an option");
        Self::new(
            name,
            ParamKind::Choice {
                options: options.iter().map(|s| s.to_string()).collect(),
                default: default.into(),
            },
            doc,
        )
    }

    pub fn path(name: &str, default: &str, folder: Option<&str>, doc: &str) -> Self {
        Self::new(
            name,
            ParamKind::Path {
                default: default.into(),
                folder: folder.map(Into::into),
            },
            doc,
        )
    }

    /// Marks the param as followed by ComfyUI's `control_after_generate` widget (see the field).
    pub fn with_control_after_generate(mut self) -> Self {
        self.control_after_generate = true;
        self
    }

    /// Marks the param as a constant only (no link may feed it).
    pub fn constant(mut self) -> Self {
        self.linkable = false;
        self
    }
}

/// The declaration of a node type.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSchema {
    /// The stable type name used in workflow files (`SaveImage`).
    pub type_name: String,
    pub display_name: String,
    /// Palette category, `/`-separated (`image/transform`).
    pub category: String,
    pub doc: String,
    /// Bumped whenever the node's output for the same inputs changes; part of the cache key.
    pub version: u32,
    pub inputs: Vec<PortDef>,
    pub outputs: Vec<PortDef>,
    pub params: Vec<ParamDef>,
    /// Output nodes (savers, previews) are what a run computes when no target is named.
    pub is_output: bool,
}

impl NodeSchema {
    pub fn new(type_name: &str, display_name: &str, category: &str) -> Self {
        NodeSchema {
            type_name: type_name.into(),
            display_name: display_name.into(),
            category: category.into(),
            doc: String::new(),
            version: 1,
            inputs: Vec::new(),
            outputs: Vec::new(),
            params: Vec::new(),
            is_output: false,
        }
    }

    pub fn doc(mut self, doc: &str) -> Self {
        self.doc = doc.into();
        self
    }

    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    pub fn input(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.inputs.push(PortDef {
            name: name.into(),
            ty,
            required: true,
            doc: doc.into(),
        });
        self
    }

    pub fn optional_input(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.inputs.push(PortDef {
            name: name.into(),
            ty,
            required: false,
            doc: doc.into(),
        });
        self
    }

    pub fn output(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.outputs.push(PortDef {
            name: name.into(),
            ty,
            required: false,
            doc: doc.into(),
        });
        self
    }

    pub fn param(mut self, param: ParamDef) -> Self {
        self.params.push(param);
        self
    }

    pub fn output_node(mut self) -> Self {
        self.is_output = true;
        self
    }

    pub fn input_def(&self, name: &str) -> Option<&PortDef> {
        self.inputs.iter().find(|p| p.name == name)
    }

    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|p| p.name == name)
    }

    pub fn param_def(&self, name: &str) -> Option<&ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The type a link into `port` must carry: an input's type, or a linkable param's type.
    pub fn link_target_type(&self, port: &str) -> Option<PortType> {
        if let Some(i) = self.input_def(port) {
            return Some(i.ty);
        }
        self.param_def(port)
            .filter(|p| p.linkable)
            .map(|p| p.kind.port_type())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_params_are_limited_to_a_mebibyte() {
        let kind = ParamKind::String {
            default: String::new(),
            multiline: true,
        };
        let at_limit = Value::string("a".repeat(MAX_TEXT_BYTES));
        assert!(kind.check(&at_limit).is_ok());
        let over = Value::string("a".repeat(MAX_TEXT_BYTES + 1));
        let err = kind.check(&over).unwrap_err();
        assert!(
            err.contains("1048577 bytes long") && err.contains("1 MiB"),
            "{err}"
        );
        let path = ParamKind::Path {
            default: String::new(),
            folder: None,
        };
        assert!(path.check(&over).is_err());
    }
}
