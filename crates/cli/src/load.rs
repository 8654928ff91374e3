//! Loading workflows (from `.ron` files or PNGs that embed one), and the `validate` and
//! `nodes` commands.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use veetance_core::{validate, Graph, NodeRegistry, NodeSchema, ParamKind, RunEnv, Value};
use veetance_workflow::WorkflowFile;

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
}

/// Reads a `.ron` workflow, or the workflow embedded in a PNG written by SaveImage.
pub fn load_workflow(path: &Path) -> Result<Loaded, Failure> {
    let read =
        veetance_nodes_basic::read_workflow_text(path).map_err(|e| Failure::invalid(anyhow!(e)))?;
    let file = WorkflowFile::parse(&read.text, &read.origin).map_err(Failure::invalid)?;
    Ok(Loaded {
        file,
        origin: read.origin,
    })
}

/// The built-in example workflow.
pub fn default_workflow() -> Result<Loaded, Failure> {
    let file =
        WorkflowFile::parse(DEFAULT_WORKFLOW, DEFAULT_WORKFLOW_NAME).map_err(Failure::invalid)?;
    Ok(Loaded {
        file,
        origin: DEFAULT_WORKFLOW_NAME.into(),
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

pub fn validate_command(path: &Path, models_dir: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = load_workflow(path)?;
    let registry = veetance_nodes::registry();
    let graph = loaded
        .file
        .to_graph(&loaded.origin)
        .map_err(Failure::invalid)?;
    let env = RunEnv {
        models_dir: models_dir.unwrap_or_else(|| PathBuf::from("models")),
        ..RunEnv::default()
    };
    match validate(&graph, &registry, &env) {
        Ok(()) => {
            crate::print_stdout(&format!(
                "{}: ok ({} nodes, {} links)\n",
                loaded.origin,
                graph.node_count(),
                graph.links().len()
            ));
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
