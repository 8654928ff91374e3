//! Loading workflows (from `.ron` files, ComfyUI's JSON, or PNGs that embed either), and the
//! `validate` and `nodes` commands.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::Value as Json;
use veetance_comfy::{check_prompt, node_error_lines, FileError, Format, PromptError, ReadJson};
use veetance_core::{validate, Graph, NodeRegistry, NodeSchema, ParamKind, RunEnv, Value};
use veetance_workflow::{Layout, WorkflowFile};

use crate::Failure;

/// The built-in workflow that `veetance --headless` runs when given no file: the golden FLUX.2
/// workflow on the tiny random-weight models in assets/tiny-models (paths relative to the
/// repository root, where it is meant to be run from).
pub const DEFAULT_WORKFLOW: &str = include_str!("../../../workflows/flux2-klein-tiny.ron");
pub const DEFAULT_WORKFLOW_NAME: &str = "workflows/flux2-klein-tiny.ron (built in)";

/// A workflow read from somewhere, with the name its messages use.
pub struct Loaded {
    pub file: WorkflowFile,
    pub origin: String,
    /// Set when the file was ComfyUI JSON, or a PNG that ComfyUI wrote: the ComfyUI document,
    /// whose graph `file` holds.
    pub comfy: Option<ReadJson>,
}

impl Loaded {
    /// The engine graph of the workflow.
    pub fn graph(&self) -> Result<Graph, Failure> {
        match &self.comfy {
            Some(read) => Ok(read.graph.clone()),
            None => self.file.to_graph(&self.origin).map_err(Failure::invalid),
        }
    }
}

/// Reads a workflow: a `.ron` file, ComfyUI JSON (an API prompt or a UI workflow, told apart by
/// their shape), or a PNG that embeds a Veetance workflow (written by SaveImage) or ComfyUI's
/// `prompt` / `workflow` text chunks.
pub fn load_workflow(path: &Path, registry: &NodeRegistry) -> Result<Loaded, Failure> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::invalid(anyhow!("{origin}: cannot read the file: {e}")))?;
    let comfy = veetance_comfy::read_file_bytes(
        path,
        &bytes,
        veetance_nodes_basic::WORKFLOW_PNG_KEYWORD,
        veetance_nodes_basic::read_png_text,
        registry,
    );
    match comfy {
        Ok(Some(found)) => return Ok(comfy_loaded(found.read, found.origin)),
        Ok(None) => {}
        Err(FileError::Unreadable(message)) => return Err(Failure::invalid(anyhow!(message))),
        Err(FileError::Refused { origin, error }) => return Err(comfy_failure(&origin, &error)),
    }
    let read =
        veetance_nodes_basic::read_workflow_text(path).map_err(|e| Failure::invalid(anyhow!(e)))?;
    let file = WorkflowFile::parse(&read.text, &read.origin).map_err(Failure::invalid)?;
    Ok(Loaded {
        file,
        origin: read.origin,
        comfy: None,
    })
}

fn comfy_loaded(read: ReadJson, origin: String) -> Loaded {
    for notice in &read.notices {
        eprintln!("warning: {origin}: {notice}");
    }
    let layout = read.workflow.as_ref().map(|ui| Layout {
        positions: veetance_comfy::ui_positions(ui),
        groups: Vec::new(),
    });
    let mut file = WorkflowFile::from_graph(&read.graph, layout);
    file.description = Some(format!(
        "Read from ComfyUI's {} {origin}",
        match read.format {
            Format::Api => "API prompt",
            Format::Ui => "UI workflow",
        }
    ));
    Loaded {
        file,
        origin,
        comfy: Some(read),
    }
}

/// A ComfyUI refusal as the CLI reports it: each node error on its own line (node id, class,
/// input), then the one `error:` line, exit code 2.
pub fn comfy_failure(origin: &str, error: &PromptError) -> Failure {
    let lines = error.lines();
    if lines.len() == 1 {
        return Failure::invalid(anyhow!("{origin}: {}", lines[0]));
    }
    for line in &lines[1..] {
        eprintln!("{origin}: {line}");
    }
    Failure::invalid(anyhow!(
        "{origin}: {} ({} problem(s)); nothing was run",
        error.error.message,
        lines.len() - 1
    ))
}

/// The ComfyUI `prompt` with the `--set` overrides applied to it, as the graph now holds them.
pub fn prompt_as_run(prompt: &Json, graph: &Graph, sets: &[String]) -> Json {
    let mut prompt = prompt.clone();
    for set in sets {
        let Some((node, param)) = set.split_once('=').and_then(|(k, _)| k.split_once('.')) else {
            continue;
        };
        let value = graph.node(node).and_then(|n| n.params.get(param));
        let inputs = prompt.get_mut(node).and_then(|n| n.get_mut("inputs"));
        if let (Some(value), Some(Json::Object(inputs))) = (value, inputs) {
            inputs.insert(param.to_string(), veetance_comfy::types::value_json(value));
        }
    }
    prompt
}

/// The built-in example workflow.
pub fn default_workflow() -> Result<Loaded, Failure> {
    let file =
        WorkflowFile::parse(DEFAULT_WORKFLOW, DEFAULT_WORKFLOW_NAME).map_err(Failure::invalid)?;
    Ok(Loaded {
        file,
        origin: DEFAULT_WORKFLOW_NAME.into(),
        comfy: None,
    })
}

/// Applies `--set node.param=value` overrides, parsing each value by the param's declared kind.
pub fn apply_sets(
    graph: &mut Graph,
    registry: &NodeRegistry,
    sets: &[String],
) -> Result<(), Failure> {
    for set in sets {
        let bad = |msg: String| Failure::invalid(anyhow!("--set {set}: {msg}"));
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| bad("expected NODE.PARAM=VALUE".into()))?;
        let (node_id, param) = key.split_once('.').ok_or_else(|| {
            bad("expected NODE.PARAM=VALUE (no '.' between node and param)".into())
        })?;
        let Some(node) = graph.node(node_id) else {
            let ids: Vec<&str> = graph.nodes().map(|n| n.id.as_str()).collect();
            return Err(bad(format!(
                "there is no node '{node_id}' (nodes: {})",
                ids.join(", ")
            )));
        };
        let schema = registry
            .get(&node.type_name)
            .map(|d| d.schema())
            .ok_or_else(|| {
                bad(format!(
                    "node '{node_id}' has unknown type {:?}",
                    node.type_name
                ))
            })?;
        let def = schema.param_def(param).ok_or_else(|| {
            let names: Vec<&str> = schema.params.iter().map(|p| p.name.as_str()).collect();
            bad(format!(
                "{} has no param '{param}' (params: {})",
                schema.type_name,
                names.join(", ")
            ))
        })?;
        let parsed = def
            .kind
            .parse_str(value)
            .map_err(|m| bad(format!("node '{node_id}' param '{param}': {m}")))?;
        let stored = match parsed {
            // Files store choices as strings.
            Value::Choice(s) => Value::String(s),
            other => other,
        };
        graph
            .set_param(node_id, param, stored)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

pub fn validate_command(
    path: &Path,
    models_dir: Option<PathBuf>,
    input_dir: Option<PathBuf>,
) -> Result<(), Failure> {
    let registry = veetance_nodes::registry();
    let loaded = load_workflow(path, &registry)?;
    let graph = loaded.graph()?;
    let env = RunEnv {
        models_dir: models_dir.unwrap_or_else(|| PathBuf::from("models")),
        input_dir,
        ..RunEnv::default()
    };
    let ok = |graph: &Graph| {
        crate::print_stdout(&format!(
            "{}: ok ({} nodes, {} links)\n",
            loaded.origin,
            graph.node_count(),
            graph.links().len()
        ));
    };
    if loaded.comfy.is_some() {
        // ComfyUI's rules: only what the outputs need is checked, each problem in its terms.
        let checked =
            check_prompt(&graph, &registry, &env).map_err(|e| comfy_failure(&loaded.origin, &e))?;
        if checked.node_errors.is_empty() {
            ok(&graph);
            return Ok(());
        }
        let lines = node_error_lines(&checked.node_errors);
        for line in &lines {
            eprintln!("{}: {line}", loaded.origin);
        }
        return Err(Failure::invalid(anyhow!(
            "{}: {} problem(s); ComfyUI would run only output(s) {} of it",
            loaded.origin,
            lines.len(),
            checked.outputs.join(", ")
        )));
    }
    match validate(&graph, &registry, &env) {
        Ok(()) => {
            ok(&graph);
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", loaded.origin);
            }
            Err(Failure::invalid(anyhow!(
                "{}: {} problem(s); nothing was run",
                loaded.origin,
                errors.len()
            )))
        }
    }
}

pub fn nodes_command(json: bool) -> Result<(), Failure> {
    let registry = veetance_nodes::registry();
    let schemas: Vec<&NodeSchema> = registry.schemas().collect();
    if json {
        let text = serde_json::to_string_pretty(&schemas).map_err(Failure::run_failed)?;
        crate::print_stdout(&format!("{text}\n"));
        return Ok(());
    }
    let mut out = String::new();
    for s in schemas {
        let _ = writeln!(
            out,
            "{} — {} [{}] v{}{}",
            s.type_name,
            s.display_name,
            s.category,
            s.version,
            if s.is_output { " (output)" } else { "" }
        );
        if !s.doc.is_empty() {
            let _ = writeln!(out, "    {}", s.doc);
        }
        for p in &s.inputs {
            let opt = if p.required { "" } else { " (optional)" };
            let _ = writeln!(out, "    in  {}: {}{opt}  {}", p.name, p.ty, p.doc);
        }
        for p in &s.outputs {
            let _ = writeln!(out, "    out {}: {}  {}", p.name, p.ty, p.doc);
        }
        for p in &s.params {
            let _ = writeln!(
                out,
                "    param {} = {}  ({}{})  {}",
                p.name,
                p.kind.default_value(),
                p.kind.describe(),
                if p.linkable { ", linkable" } else { "" },
                p.doc
            );
            if let ParamKind::Path {
                folder: Some(folder),
                ..
            } = &p.kind
            {
                let _ = writeln!(out, "        looked up in <models>/{folder}/");
            }
        }
    }
    crate::print_stdout(&out);
    Ok(())
}
