//! Every file in workflows/ loads, validates against the full registry, and round-trips through
//! the format unchanged (text, and document through the engine graph).

use std::path::{Path, PathBuf};

use veetance_core::{validate, NodeRegistry, ParamKind, RunEnv};
use veetance_workflow::WorkflowFile;

fn workflow_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("workflows/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no workflows in {}", dir.display());
    files
}

/// Creates an empty file in `models/<folder>/` for every model file a workflow names that is not
/// a path in the repository (and a tokenizer.json beside text encoders); returns the workflow with
/// repository paths made absolute (tests do not run from the repository root).
fn stand_in_model_files(wf: &WorkflowFile, registry: &NodeRegistry, models: &Path) -> WorkflowFile {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut wf = wf.clone();
    for node in &mut wf.nodes {
        let Some(def) = registry.get(&node.type_name) else {
            continue;
        };
        for param in &def.schema().params {
            let ParamKind::Path { folder, .. } = &param.kind else {
                continue;
            };
            let Some(veetance_workflow::ParamValue::String(name)) =
                node.params.get_mut(&param.name)
            else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            // Repository files (tiny models, input images) are used as they are.
            if repo.join(&*name).exists() {
                *name = repo.join(&*name).display().to_string();
                continue;
            }
            let Some(folder) = folder else {
                continue;
            };
            let dir = models.join(folder);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), b"").unwrap();
            if folder == "text_encoders" {
                std::fs::write(dir.join("tokenizer.json"), b"").unwrap();
            }
        }
    }
    wf
}

#[test]
fn every_workflow_loads_validates_and_round_trips_unchanged() {
    let registry = veetance_nodes::registry();
    for path in workflow_files() {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let wf = WorkflowFile::parse(&text, &name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            wf.to_ron(),
            text,
            "{name} is not in canonical form; rewrite it with WorkflowFile::to_ron"
        );
        let graph = wf.to_graph(&name).unwrap_or_else(|e| panic!("{e}"));
        // Workflows for real models name files users bring: stand in empty files for them, so
        // that everything else about the workflow is validated.
        let models = tempfile::tempdir().unwrap();
        let runnable = stand_in_model_files(&wf, &registry, models.path());
        let env = RunEnv {
            models_dir: models.path().to_path_buf(),
            ..RunEnv::default()
        };
        let runnable = runnable.to_graph(&name).unwrap();
        if let Err(errors) = validate(&runnable, &registry, &env) {
            panic!(
                "{name}:\n{}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let mut back = WorkflowFile::from_graph(&graph, wf.layout.clone());
        back.description = wf.description.clone();
        assert_eq!(back, wf, "{name} changed through the engine graph");
    }
}
