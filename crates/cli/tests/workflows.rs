//! Every file in workflows/ loads, validates against the full registry, and round-trips through
//! the format unchanged (text, and document through the engine graph).

use std::path::{Path, PathBuf};

use veetance_core::{validate, RunEnv};
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
        let env = RunEnv::default();
        if let Err(errors) = validate(&graph, &registry, &env) {
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
