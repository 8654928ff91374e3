//! `/object_info`: ComfyUI's description of every node class, written from Veetance's schemas.
//!
//! Link inputs come first in `input.required` (or `input.optional` when not required), then
//! the params in their declared order, which is ComfyUI's widget order. `input_order` lists the
//! same names in that order; JSON objects here do not keep insertion order, and the frontend
//! orders inputs by `input_order`.

use std::path::Path;

use serde_json::{json, Map, Value as Json};
use veetance_core::{NodeRegistry, NodeSchema};

use crate::types::{comfy_type, input_spec, param_spec};

/// ComfyUI's own node classes that Veetance implements under the same name, inputs and widget
/// order, with the module ComfyUI defines them in.
const COMFY_CORE: &[(&str, &str)] = &[
    ("CLIPLoader", "nodes"),
    ("CLIPTextEncode", "nodes"),
    ("ConditioningZeroOut", "nodes"),
    ("LoadImage", "nodes"),
    ("LoadImageMask", "nodes"),
    ("LoraLoaderModelOnly", "nodes"),
    ("SaveImage", "nodes"),
    ("PreviewImage", "nodes"),
    ("SetLatentNoiseMask", "nodes"),
    ("UNETLoader", "nodes"),
    ("VAEDecode", "nodes"),
    ("VAEEncode", "nodes"),
    ("VAELoader", "nodes"),
    ("BasicGuider", "comfy_extras.nodes_custom_sampler"),
    ("CFGGuider", "comfy_extras.nodes_custom_sampler"),
    ("DisableNoise", "comfy_extras.nodes_custom_sampler"),
    ("KSamplerSelect", "comfy_extras.nodes_custom_sampler"),
    ("RandomNoise", "comfy_extras.nodes_custom_sampler"),
    ("SamplerCustomAdvanced", "comfy_extras.nodes_custom_sampler"),
    ("EmptyFlux2LatentImage", "comfy_extras.nodes_flux"),
    ("Flux2Scheduler", "comfy_extras.nodes_flux"),
    ("FluxKVCache", "comfy_extras.nodes_flux"),
    ("ReferenceLatent", "comfy_extras.nodes_edit_model"),
    ("GetImageSize", "comfy_extras.nodes_images"),
    (
        "ImageScaleToTotalPixels",
        "comfy_extras.nodes_post_processing",
    ),
    ("PrimitiveBoolean", "comfy_extras.nodes_primitive"),
    ("PrimitiveFloat", "comfy_extras.nodes_primitive"),
    ("PrimitiveInt", "comfy_extras.nodes_primitive"),
    ("PrimitiveString", "comfy_extras.nodes_primitive"),
    ("PrimitiveStringMultiline", "comfy_extras.nodes_primitive"),
];

/// `python_module`, which the web frontend reads for a node's source: ComfyUI's module for its
/// own classes (shown as "Comfy Core"), `custom_nodes.veetance` for Veetance's native nodes
/// (shown as the `veetance` extension, with that badge).
pub(crate) fn python_module(type_name: &str) -> &'static str {
    COMFY_CORE
        .iter()
        .find(|(name, _)| *name == type_name)
        .map_or("custom_nodes.veetance", |(_, module)| module)
}

pub(crate) fn object_info(registry: &NodeRegistry, models_dir: &Path) -> Json {
    let entries: Map<String, Json> = registry
        .schemas()
        .map(|s| (s.type_name.clone(), entry(s, models_dir)))
        .collect();
    Json::Object(entries)
}

/// One class's entry, in the full shape the frontend and strict clients (comfy-catapult's
/// pydantic model) read.
pub(crate) fn entry(schema: &NodeSchema, models_dir: &Path) -> Json {
    let mut required = Map::new();
    let mut optional = Map::new();
    let mut required_order = Vec::new();
    let mut optional_order = Vec::new();
    for port in &schema.inputs {
        let spec = input_spec(port.ty, &port.doc);
        if port.required {
            required.insert(port.name.clone(), spec);
            required_order.push(port.name.clone());
        } else {
            optional.insert(port.name.clone(), spec);
            optional_order.push(port.name.clone());
        }
    }
    for param in &schema.params {
        // A param always holds a value (its default at least), so it is required in ComfyUI's
        // sense: the widget is always sent.
        required.insert(param.name.clone(), param_spec(param, models_dir));
        required_order.push(param.name.clone());
    }
    let mut input = Map::new();
    input.insert("required".into(), Json::Object(required));
    if !optional.is_empty() {
        input.insert("optional".into(), Json::Object(optional));
    }
    let mut input_order = Map::new();
    input_order.insert("required".into(), json!(required_order));
    if !optional_order.is_empty() {
        input_order.insert("optional".into(), json!(optional_order));
    }
    json!({
        "input": input,
        "input_order": input_order,
        "output": schema.outputs.iter().map(|p| comfy_type(p.ty)).collect::<Vec<_>>(),
        "output_is_list": schema.outputs.iter().map(|_| false).collect::<Vec<_>>(),
        "output_name": schema.outputs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        "output_tooltips": schema.outputs.iter().map(|p| p.doc.as_str()).collect::<Vec<_>>(),
        "name": schema.type_name,
        "display_name": schema.display_name,
        "description": schema.doc,
        "python_module": python_module(&schema.type_name),
        "category": schema.category,
        "output_node": schema.is_output,
        "has_intermediate_output": false,
        "deprecated": false,
        "experimental": false,
        "dev_only": false,
        "api_node": false,
        "search_aliases": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_comfy_core_class_listed_is_registered() {
        let registry = veetance_nodes::registry();
        for (name, _) in COMFY_CORE {
            assert!(
                registry.get(name).is_some(),
                "{name} is listed as a ComfyUI class but no node has that name"
            );
        }
        assert_eq!(python_module("SaveImage"), "nodes");
        assert_eq!(
            python_module("SamplerCustomAdvanced"),
            "comfy_extras.nodes_custom_sampler"
        );
        // Veetance's own nodes: the frontend shows them as the `veetance` extension.
        assert_eq!(python_module("Sampler"), "custom_nodes.veetance");
    }
}
