//! The `veetance` binary as users and scripts meet it: runs, outputs, exit codes and errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn veetance() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veetance"));
    cmd.env_remove("VEETANCE_CONFIG").env_remove("VEETANCE_LOG");
    cmd
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn hello() -> PathBuf {
    repo().join("workflows/hello.ron")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("veetance runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Files under `dir`, recursively (none if it does not exist).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_in(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn headless_run_writes_png_and_prints_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(hello())
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let written = out.join("hello_00001.png");
    assert!(written.is_file());
    assert_eq!(stdout.trim(), written.display().to_string());
    assert!(!stderr.contains("panicked"));
}

#[test]
fn headless_without_file_runs_the_builtin_example() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in example is the tiny FLUX.2 workflow, whose model paths are relative to the
    // repository root.
    let (code, stdout, stderr) = run(veetance()
        .current_dir(repo())
        .args(["--headless", "-q", "--out"])
        .arg(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(files_in(dir.path()).len(), 1);
    assert!(stdout.contains("flux2-tiny_00001.png"), "{stdout}");
}

#[test]
fn set_overrides_a_param_and_the_png_restores_the_workflow_as_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(hello())
        .args([
            "--set",
            "seed.seed=7",
            "--set",
            "resize.width=64",
            "--set",
            "resize.height=32",
        ])
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let png = out.join("hello_00001.png");
    let bytes = std::fs::read(&png).unwrap();
    let text = veetance_nodes_basic::read_png_workflow(&bytes)
        .unwrap()
        .expect("workflow embedded");
    let wf = veetance_workflow::WorkflowFile::parse(&text, "embedded").unwrap();
    let seed = wf.nodes.iter().find(|n| n.id == "seed").unwrap();
    assert_eq!(
        seed.params["seed"],
        veetance_workflow::ParamValue::Int(7),
        "{text}"
    );
    // Running the PNG itself replays the same workflow: identical pixels.
    let out2 = dir.path().join("replay");
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&png)
        .arg("--out")
        .arg(&out2));
    assert_eq!(code, 0, "{stderr}");
    let a = veetance_nodes_basic::read_png_image(&png).unwrap();
    let b = veetance_nodes_basic::read_png_image(&out2.join("hello_00001.png")).unwrap();
    assert_eq!((a.width, a.height), (64, 32));
    assert_eq!(a, b);
}

#[test]
fn events_are_json_lines_with_node_timings_and_cache_flags() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(hello())
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--events")
        .arg(&events));
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.first().unwrap()["event"], "run_started");
    assert_eq!(lines.last().unwrap()["event"], "run_finished");
    assert_eq!(lines.last().unwrap()["ok"], true);
    let finished: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "node_finished")
        .collect();
    assert_eq!(finished.len(), 6);
    assert!(finished
        .iter()
        .all(|l| l["cached"] == false && l["duration_ms"].is_number()));
    assert!(lines.iter().any(|l| l["event"] == "output_written"));
    // Memory readings: at the start, after each executed node, at the end.
    let memory: Vec<_> = lines.iter().filter(|l| l["event"] == "memory").collect();
    assert_eq!(memory.len(), 6 + 2, "{memory:?}");
    assert_eq!(memory[0]["at"], "run_started");
    assert_eq!(memory[7]["at"], "run_finished");
    for m in &memory {
        assert!(
            m["cache_device"].is_u64() && m["cache_host"].is_u64(),
            "{m}"
        );
        if cfg!(target_os = "linux") {
            assert!(m["process_rss"].as_u64().is_some_and(|r| r > 0), "{m}");
            assert!(m["host_available"].is_u64(), "{m}");
        }
    }
    assert!(
        memory[7]["cache_host"].as_u64().unwrap() > 0,
        "the image is cached"
    );
}

#[test]
fn headless_run_ends_with_a_memory_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(veetance()
        .args(["--headless"])
        .arg(hello())
        .arg("--out")
        .arg(dir.path().join("out")));
    assert_eq!(code, 0, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("memory:"))
        .unwrap_or_else(|| panic!("no memory line in: {stderr}"));
    assert!(line.contains("cache peak"), "{line}");
    if cfg!(target_os = "linux") {
        assert!(line.contains("process peak"), "{line}");
    }
}

#[test]
fn bad_budgets_are_invalid_naming_the_flag_or_the_config_key() {
    assert_invalid(
        None,
        &["--vram-budget", "16XB"],
        &["--vram-budget", "16XB", "unknown size unit"],
    );
    assert_invalid(None, &["--ram-budget", "120%"], &["--ram-budget", "120%"]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("veetance.toml");
    std::fs::write(&config, "[cache]\nram_budget = \"16XB\"\n").unwrap();
    let config_arg = config.display().to_string();
    assert_invalid(
        None,
        &["--config", &config_arg],
        &[&config_arg, "[cache] ram_budget", "16XB"],
    );

    // The flag wins over the file: the bad value in the file is never read.
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q", "--ram-budget", "64MiB", "--config"])
        .arg(&config)
        .arg(hello())
        .arg("--out")
        .arg(dir.path().join("out")));
    assert_eq!(code, 0, "{stderr}");
}

/// Every invalid input: exit code 2, one `error:` line naming the place, no panic, nothing
/// written to the output folder.
fn assert_invalid(workflow_text: Option<&str>, extra: &[&str], expect_in_stderr: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cmd = veetance();
    cmd.args(["--headless", "-q"]);
    if let Some(text) = workflow_text {
        let file = dir.path().join("wf.ron");
        std::fs::write(&file, text).unwrap();
        cmd.arg(&file);
    }
    cmd.args(extra);
    if !extra.contains(&"--out") {
        cmd.arg("--out").arg(&out);
    }
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 2, "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    for needle in expect_in_stderr {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
    assert!(
        files_in(&out).is_empty(),
        "output written: {:?}",
        files_in(&out)
    );
}

#[test]
fn malformed_ron_is_invalid_with_line_and_column() {
    assert_invalid(
        Some("(\n  version: 1,\n  nodes: [(id: \"a\" type: \"Int\")],\n)"),
        &[],
        &["wf.ron:3:"],
    );
}

#[test]
fn newer_version_is_invalid_by_name() {
    assert_invalid(
        Some("(version: 99, nodes: [])"),
        &[],
        &["version 99", "update Veetance"],
    );
}

#[test]
fn unknown_node_type_is_invalid_naming_the_node() {
    assert_invalid(
        Some("(version: 1, nodes: [(id: \"mystery\", type: \"NoSuchNode\")])"),
        &[],
        &["node 'mystery'", "NoSuchNode"],
    );
}

#[test]
fn cycle_is_invalid_naming_its_nodes() {
    assert_invalid(
        Some(
            "(version: 1, nodes: [(id: \"a\", type: \"ImageResize\"), (id: \"b\", type: \"ImageResize\"), (id: \"s\", type: \"SaveImage\")],\
             links: [(from: (\"a\", \"image\"), to: (\"b\", \"image\")), (from: (\"b\", \"image\"), to: (\"a\", \"image\")), (from: (\"b\", \"image\"), to: (\"s\", \"images\"))])",
        ),
        &[],
        &["cycle", "a -> b"],
    );
}

#[test]
fn mismatched_types_are_invalid_naming_node_and_port() {
    assert_invalid(
        Some(
            "(version: 1, nodes: [(id: \"n\", type: \"Int\"), (id: \"s\", type: \"SaveImage\")],\
             links: [(from: (\"n\", \"value\"), to: (\"s\", \"images\"))])",
        ),
        &[],
        &["node 's' input 'images'", "expects Image", "Int"],
    );
}

#[test]
fn missing_input_file_is_invalid_naming_param_and_file() {
    assert_invalid(
        Some(
            "(version: 1, nodes: [(id: \"load\", type: \"LoadImage\", params: {\"image\": \"no-such-file.png\"}), (id: \"s\", type: \"SaveImage\")],\
             links: [(from: (\"load\", \"image\"), to: (\"s\", \"images\"))])",
        ),
        &[],
        &["node 'load' param 'image'", "no-such-file.png"],
    );
}

#[test]
fn missing_workflow_file_is_invalid() {
    assert_invalid(None, &["does-not-exist.ron"], &["does-not-exist.ron"]);
}

#[test]
fn unwritable_output_folder_is_invalid_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let out = blocker.join("out");
    let hello = hello();
    assert_invalid(
        None,
        &[hello.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &["output folder", "a-file"],
    );
}

#[test]
fn bad_set_values_are_invalid_naming_node_and_param() {
    let hello = hello();
    let h = hello.to_str().unwrap();
    assert_invalid(
        None,
        &[h, "--set", "seed.seed=abc"],
        &["node 'seed' param 'seed'"],
    );
    assert_invalid(None, &[h, "--set", "nope.seed=1"], &["no node 'nope'"]);
    assert_invalid(None, &[h, "--set", "seed.colour=1"], &["no param 'colour'"]);
    assert_invalid(
        None,
        &[h, "--set", "resize.width=0"],
        &["node 'resize' param 'width'", "out of range"],
    );
}

#[test]
fn failure_during_the_run_exits_1_naming_the_node() {
    // A prefix that escapes the output folder, fed by a link, is only known when the run
    // reaches SaveImage.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.ron");
    std::fs::write(
        &file,
        "(version: 1, nodes: [\
            (id: \"g\", type: \"GradientImage\", params: {\"width\": 8, \"height\": 8}),\
            (id: \"name\", type: \"String\", params: {\"value\": \"../escape\"}),\
            (id: \"s\", type: \"SaveImage\")],\
         links: [(from: (\"g\", \"image\"), to: (\"s\", \"images\")), (from: (\"name\", \"value\"), to: (\"s\", \"filename_prefix\"))])",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&file)
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("node 's'"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(files_in(&out).is_empty());
    assert!(!dir.path().join("escape_00001.png").exists());
}

#[test]
fn validate_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.ron");
    std::fs::write(
        &file,
        "(version: 1, nodes: [(id: \"x\", type: \"Nope\"), (id: \"r\", type: \"ImageResize\", params: {\"width\": -1}), (id: \"s\", type: \"SaveImage\")])",
    )
    .unwrap();
    let (code, _, stderr) = run(veetance().arg("validate").arg(&file));
    assert_eq!(code, 2);
    assert!(stderr.contains("node 'x'"), "{stderr}");
    assert!(stderr.contains("node 'r' param 'width'"), "{stderr}");
    assert!(stderr.contains("node 'r' input 'image'"), "{stderr}");
    assert!(stderr.contains("node 's' input 'images'"), "{stderr}");
    let (code, stdout, _) = run(veetance().arg("validate").arg(hello()));
    assert_eq!(code, 0);
    assert!(stdout.contains("ok"));
}

#[test]
fn nodes_json_lists_every_registered_type() {
    let (code, stdout, _) = run(veetance().args(["nodes", "--json"]));
    assert_eq!(code, 0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = list
        .iter()
        .map(|n| n["type_name"].as_str().unwrap())
        .collect();
    let registry = veetance_nodes::registry();
    assert_eq!(names.len(), registry.len());
    for needed in ["SaveImage", "LoadImage", "Seed", "ImageBlend"] {
        assert!(names.contains(&needed));
    }
    let (code, text, _) = run(veetance().arg("nodes"));
    assert_eq!(code, 0);
    assert!(text.contains("SaveImage"));
}
