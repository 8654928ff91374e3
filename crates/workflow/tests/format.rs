//! The workflow format: parsing, canonical writing, versions and migrations, errors.

use veetance_workflow::{Migration, ParamValue, WorkflowError, WorkflowFile, CURRENT_VERSION};

const SAMPLE: &str = r##"(
    version: 1,
    description: Some("two nodes"),
    nodes: [
        (id: "gradient", type: "GradientImage", params: {"color_a": "#ff0000", "height": 64, "strength": 0.5, "tile": true}),
        (id: "save", type: "SaveImage"),
    ],
    links: [
        (from: ("gradient", "image"), to: ("save", "images")),
    ],
    layout: Some((
        positions: {"gradient": (0.0, 10.5), "save": (300.0, 10.5)},
        groups: [(title: "out", rect: (0.0, 0.0, 100.0, 50.0), color: Some("#4b0082"))],
    )),
)
"##;

#[test]
fn parses_nodes_params_links_and_layout() {
    let wf = WorkflowFile::parse(SAMPLE, "sample.ron").unwrap();
    assert_eq!(wf.version, 1);
    assert_eq!(wf.nodes.len(), 2);
    let p = &wf.nodes[0].params;
    assert_eq!(p["height"], ParamValue::Int(64));
    assert_eq!(p["strength"], ParamValue::Float(0.5));
    assert_eq!(p["tile"], ParamValue::Bool(true));
    assert_eq!(p["color_a"], ParamValue::String("#ff0000".into()));
    assert_eq!(
        wf.links[0].from,
        ("gradient".to_string(), "image".to_string())
    );
    let layout = wf.layout.as_ref().unwrap();
    assert_eq!(layout.positions["save"], (300.0, 10.5));
    assert_eq!(layout.groups[0].title, "out");
}

#[test]
fn canonical_text_round_trips_unchanged() {
    let wf = WorkflowFile::parse(SAMPLE, "sample.ron").unwrap();
    let text = wf.to_ron();
    let again = WorkflowFile::parse(&text, "again.ron").unwrap();
    assert_eq!(wf, again);
    assert_eq!(text, again.to_ron());
}

#[test]
fn graph_round_trip_keeps_nodes_params_and_links() {
    let wf = WorkflowFile::parse(SAMPLE, "sample.ron").unwrap();
    let graph = wf.to_graph("sample.ron").unwrap();
    let mut back = WorkflowFile::from_graph(&graph, wf.layout.clone());
    back.description = wf.description.clone();
    assert_eq!(wf, back);
}

#[test]
fn parse_error_gives_line_and_column() {
    let bad = "(\n    version: 1,\n    nodes: [\n        (id: \"a\" type: \"X\"),\n    ],\n)\n";
    let err = WorkflowFile::parse(bad, "bad.ron").unwrap_err();
    match &err {
        WorkflowError::Parse { line, column, .. } => {
            assert_eq!(*line, 4);
            assert!(*column > 1);
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("bad.ron:4:"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn unknown_field_is_a_parse_error_naming_it() {
    let bad = "(version: 1, nodes: [(id: \"a\", type: \"X\", parms: {})])";
    let msg = WorkflowFile::parse(bad, "typo.ron")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("parms"), "{msg}");
    assert!(msg.starts_with("typo.ron:1:"), "{msg}");
}

#[test]
fn newer_version_is_refused_by_name() {
    let text = format!(
        "(version: {}, nodes: [], future_field: 3)",
        CURRENT_VERSION + 1
    );
    let err = WorkflowFile::parse(&text, "new.ron").unwrap_err();
    assert!(
        matches!(err, WorkflowError::NewerVersion { found, .. } if found == CURRENT_VERSION + 1)
    );
    let msg = err.to_string();
    assert!(
        msg.contains("version 2") && msg.contains("update Veetance"),
        "{msg}"
    );
}

#[test]
fn missing_version_is_an_error() {
    let err = WorkflowFile::parse("(nodes: [])", "nov.ron").unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
}

/// A made-up history for the test: version 1 named the node list `steps`, version 2 renamed
/// it to `nodes` and version 3 added nothing but a version bump.
fn rename_steps_to_nodes(doc: ron::Value) -> Result<ron::Value, String> {
    let ron::Value::Map(map) = doc else {
        return Err("expected a map".into());
    };
    let mut out = ron::Map::new();
    for (k, v) in map.into_iter() {
        let k = match &k {
            ron::Value::String(s) if s == "steps" => ron::Value::String("nodes".into()),
            _ => k,
        };
        out.insert(k, v);
    }
    Ok(ron::Value::Map(out))
}

fn identity(doc: ron::Value) -> Result<ron::Value, String> {
    Ok(doc)
}

#[test]
fn older_version_migrates_through_each_step_in_order() {
    let table: &[Migration] = &[rename_steps_to_nodes, identity];
    let old = "(version: 1, steps: [(id: \"a\", type: \"Int\")])";
    let wf = WorkflowFile::parse_with(old, "old.ron", table).unwrap();
    assert_eq!(wf.version, 3);
    assert_eq!(wf.nodes[0].id, "a");
    // A version-2 file skips the first step.
    let v2 = "(version: 2, nodes: [(id: \"b\", type: \"Int\")])";
    assert_eq!(
        WorkflowFile::parse_with(v2, "v2.ron", table).unwrap().nodes[0].id,
        "b"
    );
}

#[test]
fn duplicate_node_id_is_an_error_naming_it() {
    let text = "(version: 1, nodes: [(id: \"a\", type: \"Int\"), (id: \"a\", type: \"Int\")])";
    let wf = WorkflowFile::parse(text, "dup.ron").unwrap();
    let msg = wf.to_graph("dup.ron").unwrap_err().to_string();
    assert!(msg.contains("dup.ron") && msg.contains("\"a\""), "{msg}");
}

#[test]
fn save_writes_atomically_and_reloads() {
    let dir = std::env::temp_dir().join(format!("veetance-wf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.ron");
    let wf = WorkflowFile::parse(SAMPLE, "sample.ron").unwrap();
    wf.save(&path).unwrap();
    assert_eq!(WorkflowFile::load(&path).unwrap(), wf);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "prints the canonical form of a file: cargo test -p veetance-workflow -- --ignored --nocapture"]
fn print_canonical() {
    let path = std::env::var("WF").unwrap_or_else(|_| "../../workflows/hello.ron".into());
    let wf = WorkflowFile::load(std::path::Path::new(&path)).unwrap();
    print!("{}", wf.to_ron());
}
