//! The workflow `POST /v1/images/generations` runs (`--default-workflow`), and the rule by which
//! a request's prompt, size and seed are set on it.
//!
//! The file is a native `.ron` workflow or ComfyUI JSON (API prompt or UI workflow); either is
//! turned into an API prompt once, at start-up, and checked then. For each request a copy is
//! changed as follows, nodes taken in id order (numeric ids by value first, then the others by
//! name):
//!
//! - **prompt**: the first text-encoder node (`CLIPTextEncode`, `TextEncode`) whose `text` is a
//!   non-empty string gets the request's prompt; when its `text` is a link, the source node's
//!   `value` (a `PrimitiveStringMultiline`, `PrimitiveString` or `String`) gets it, provided it
//!   holds a non-empty string. Empty texts (negative prompts) are never chosen.
//! - **size** (`"WxH"`): `width` and `height` of every latent or scheduler node
//!   (`EmptyLatent`, `EmptyFlux2LatentImage`, `EmptyLatentImage`, `EmptySD3LatentImage`,
//!   `Flux2Scheduler`); a linked width or height sets the source's `value`.
//! - **seed**: `seed` of `Sampler`, `Seed` and `KSampler`; `noise_seed` of `RandomNoise`,
//!   `KSamplerAdvanced` and `SamplerCustom`; a linked seed sets the source's `value` (or
//!   `seed`). Image `i` of a request gets seed `seed + i`.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};
use veetance_core::NodeRegistry;
use veetance_workflow::{ParamValue, WorkflowFile};

use crate::worker::link_of;

const TEXT_ENCODERS: [&str; 2] = ["CLIPTextEncode", "TextEncode"];
const SIZED: [&str; 5] = [
    "EmptyLatent",
    "EmptyFlux2LatentImage",
    "EmptyLatentImage",
    "EmptySD3LatentImage",
    "Flux2Scheduler",
];
const SEEDED: [(&str, &str); 6] = [
    ("Sampler", "seed"),
    ("Seed", "seed"),
    ("KSampler", "seed"),
    ("RandomNoise", "noise_seed"),
    ("KSamplerAdvanced", "noise_seed"),
    ("SamplerCustom", "noise_seed"),
];

/// The OpenAI route's workflow, as an API prompt.
#[derive(Clone, Debug)]
pub struct DefaultWorkflow {
    pub path: PathBuf,
    pub prompt: Json,
}

/// Node ids in the rule's order: numbers by value, then other ids by name.
fn ordered_ids(nodes: &Map<String, Json>) -> Vec<&String> {
    let mut ids: Vec<&String> = nodes.keys().collect();
    ids.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    });
    ids
}

fn class_of(node: &Json) -> &str {
    node.get("class_type").and_then(Json::as_str).unwrap_or("")
}

/// Where an input's value lives: the node's own input, or for a link, the source node's
/// `value` (or another named input). `(node id, input name)`.
fn slot(
    nodes: &Map<String, Json>,
    id: &str,
    input: &str,
    source_inputs: &[&str],
) -> Option<(String, String)> {
    let value = nodes.get(id)?.get("inputs")?.get(input)?;
    match link_of(value) {
        Some((src, _)) => {
            let src_inputs = nodes.get(src)?.get("inputs")?.as_object()?;
            let name = source_inputs
                .iter()
                .find(|n| src_inputs.contains_key(**n))?;
            Some((src.to_string(), name.to_string()))
        }
        None => Some((id.to_string(), input.to_string())),
    }
}

fn get<'a>(nodes: &'a Map<String, Json>, (id, input): &(String, String)) -> Option<&'a Json> {
    nodes.get(id)?.get("inputs")?.get(input)
}

fn set(nodes: &mut Map<String, Json>, (id, input): &(String, String), value: Json) {
    if let Some(inputs) = nodes
        .get_mut(id)
        .and_then(|n| n.get_mut("inputs"))
        .and_then(Json::as_object_mut)
    {
        inputs.insert(input.clone(), value);
    }
}

/// The place the request's prompt text goes (see the module docs).
fn text_slot(nodes: &Map<String, Json>) -> Option<(String, String)> {
    ordered_ids(nodes)
        .into_iter()
        .filter(|id| TEXT_ENCODERS.contains(&class_of(&nodes[*id])))
        .filter_map(|id| slot(nodes, id, "text", &["value"]))
        .find(|s| {
            get(nodes, s)
                .and_then(Json::as_str)
                .is_some_and(|t| !t.trim().is_empty())
        })
}

impl DefaultWorkflow {
    /// Reads and checks the workflow; the error says what is wrong with it.
    pub fn load(path: &Path, registry: &NodeRegistry) -> Result<DefaultWorkflow, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let is_ron = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ron"));
        let prompt = if is_ron {
            let file = WorkflowFile::parse(&text, &path.display().to_string())
                .map_err(|e| e.to_string())?;
            ron_to_prompt(&file, registry)?
        } else {
            let doc: Json = serde_json::from_str(&text)
                .map_err(|e| format!("not valid JSON (nor a .ron file): {e}"))?;
            match veetance_comfy::detect(&doc) {
                Some(veetance_comfy::Format::Api) => doc,
                Some(veetance_comfy::Format::Ui) => veetance_comfy::ui_to_prompt(&doc, registry)
                    .map_err(|e| e.lines().join("; "))?,
                None => return Err("neither a ComfyUI API prompt nor a UI workflow".into()),
            }
        };
        let nodes = prompt
            .as_object()
            .ok_or("the workflow is not an object of nodes")?;
        if text_slot(nodes).is_none() {
            return Err(format!(
                "no node takes the request's prompt: it needs a {} node whose text is a \
                 non-empty string (or is linked from a primitive holding one)",
                TEXT_ENCODERS.join(" or ")
            ));
        }
        veetance_comfy::prompt_to_graph(&prompt, registry).map_err(|e| e.lines().join("; "))?;
        Ok(DefaultWorkflow {
            path: path.to_path_buf(),
            prompt,
        })
    }

    /// The prompt for one image of a request.
    pub fn instantiate(&self, text: &str, size: Option<(u32, u32)>, seed: i64) -> Json {
        let mut prompt = self.prompt.clone();
        let Some(nodes) = prompt.as_object_mut() else {
            return prompt;
        };
        if let Some(s) = text_slot(nodes) {
            set(nodes, &s, json!(text));
        }
        let ids: Vec<String> = ordered_ids(nodes).into_iter().cloned().collect();
        for id in &ids {
            let class = class_of(&nodes[id]).to_string();
            if let Some((w, h)) = size {
                if SIZED.contains(&class.as_str()) {
                    for (input, v) in [("width", w), ("height", h)] {
                        if let Some(s) = slot(nodes, id, input, &["value"]) {
                            if get(nodes, &s).is_some_and(Json::is_number) {
                                set(nodes, &s, json!(v));
                            }
                        }
                    }
                }
            }
            for (seeded, input) in SEEDED {
                if class == seeded {
                    if let Some(s) = slot(nodes, id, input, &["value", "seed", "noise_seed"]) {
                        if get(nodes, &s).is_some_and(Json::is_number) {
                            set(nodes, &s, json!(seed));
                        }
                    }
                }
            }
        }
        prompt
    }
}

/// A native workflow as an API prompt over the same node types: params become inputs, links
/// `["source", output index]`.
pub fn ron_to_prompt(file: &WorkflowFile, registry: &NodeRegistry) -> Result<Json, String> {
    let mut nodes = Map::new();
    for node in &file.nodes {
        let mut inputs = Map::new();
        for (name, value) in &node.params {
            let v = match value {
                ParamValue::Bool(b) => json!(b),
                ParamValue::Int(i) => json!(i),
                ParamValue::Float(f) => json!(f),
                ParamValue::String(s) => json!(s),
            };
            inputs.insert(name.clone(), v);
        }
        nodes.insert(
            node.id.clone(),
            json!({ "class_type": node.type_name, "inputs": inputs }),
        );
    }
    for link in &file.links {
        let (from, from_port) = &link.from;
        let (to, to_port) = &link.to;
        let from_type = file
            .nodes
            .iter()
            .find(|n| &n.id == from)
            .map(|n| n.type_name.as_str())
            .ok_or_else(|| format!("a link starts at node '{from}', which does not exist"))?;
        let index = registry
            .get(from_type)
            .and_then(|d| d.schema().output_index(from_port))
            .ok_or_else(|| format!("node '{from}' ({from_type}) has no output '{from_port}'"))?;
        let inputs = nodes
            .get_mut(to)
            .and_then(|n| n.get_mut("inputs"))
            .and_then(Json::as_object_mut)
            .ok_or_else(|| format!("a link ends at node '{to}', which does not exist"))?;
        inputs.insert(to_port.clone(), json!([from, index]));
    }
    Ok(Json::Object(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(prompt: Json) -> DefaultWorkflow {
        DefaultWorkflow {
            path: PathBuf::from("w.json"),
            prompt,
        }
    }

    #[test]
    fn the_first_non_empty_text_gets_the_prompt_through_primitives() {
        let w = workflow(json!({
            "10": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a cat"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 0]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["10", 0], "clip": ["1", 0]}},
            "4": {"class_type": "PrimitiveInt", "inputs": {"value": 1024}},
            "5": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": ["4", 0], "height": 1024, "batch_size": 1}},
            "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        }));
        let p = w.instantiate("a dog", Some((512, 256)), 7);
        assert_eq!(p["10"]["inputs"]["value"], "a dog");
        assert_eq!(p["2"]["inputs"]["text"], "");
        assert_eq!(p["4"]["inputs"]["value"], 512);
        assert_eq!(p["5"]["inputs"]["height"], 256);
        assert_eq!(p["6"]["inputs"]["noise_seed"], 7);
    }

    #[test]
    fn ron_workflows_become_api_prompts() {
        let registry = veetance_nodes::registry();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../workflows/flux2-klein-tiny.ron"
        ))
        .unwrap();
        let file = WorkflowFile::parse(&text, "tiny").unwrap();
        let prompt = ron_to_prompt(&file, &registry).unwrap();
        assert_eq!(prompt["decode"]["inputs"]["latent"], json!(["sampler", 0]));
        assert_eq!(prompt["sampler"]["inputs"]["seed"], 42);
        let w = workflow(prompt);
        let p = w.instantiate("a hare", Some((32, 48)), 5);
        assert_eq!(p["prompt"]["inputs"]["text"], "a hare");
        assert_eq!(p["latent"]["inputs"]["width"], 32);
        assert_eq!(p["sampler"]["inputs"]["seed"], 5);
    }
}
