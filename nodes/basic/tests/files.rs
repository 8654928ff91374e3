//! LoadImage and SaveImage against real files: the full generate → blend → resize → save graph
//! with the workflow embedded, safe prefixes, numbering, temp-file hygiene and round trips.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{engine, link, params, run};
use veetance_core::{Graph, Image, Mask, Place, Problem, RunEnv, RunError, Value};
use veetance_nodes_basic::{read_png_image, read_png_workflow, write_png};

fn env(out_dir: &Path, workflow: Option<&str>) -> RunEnv {
    RunEnv {
        out_dir: out_dir.to_path_buf(),
        workflow: workflow.map(Arc::from),
        ..RunEnv::default()
    }
}

/// gradient + noise → blend → resize → save.
fn pipeline(prefix: &str) -> Graph {
    let mut g = Graph::new();
    g.add_node(
        "gradient",
        "GradientImage",
        params(&[
            ("width", Value::Int(64)),
            ("height", Value::Int(48)),
            ("color_a", Value::string("#102030")),
            ("color_b", Value::string("#f0e0d0")),
            ("direction", Value::choice("radial")),
        ]),
    )
    .unwrap();
    g.add_node(
        "noise",
        "NoiseImage",
        params(&[
            ("width", Value::Int(32)),
            ("height", Value::Int(32)),
            ("scale", Value::Float(4.0)),
        ]),
    )
    .unwrap();
    g.add_node("seed", "Seed", params(&[("seed", Value::Int(7))]))
        .unwrap();
    g.add_node(
        "blend",
        "ImageBlend",
        params(&[("mode", Value::choice("screen"))]),
    )
    .unwrap();
    g.add_node(
        "resize",
        "ImageResize",
        params(&[("width", Value::Int(40)), ("height", Value::Int(30))]),
    )
    .unwrap();
    g.add_node(
        "save",
        "SaveImage",
        params(&[("filename_prefix", Value::string(prefix))]),
    )
    .unwrap();
    link(&mut g, ("seed", "seed"), ("noise", "seed"));
    link(&mut g, ("gradient", "image"), ("blend", "a"));
    link(&mut g, ("noise", "image"), ("blend", "b"));
    link(&mut g, ("blend", "image"), ("resize", "image"));
    link(&mut g, ("resize", "image"), ("save", "images"));
    g
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn saved_path(report: &veetance_core::RunReport) -> PathBuf {
    PathBuf::from(report.outputs["save"][0].as_str().unwrap())
}

fn check_workflow_round_trip(workflow: &str, chunk_type: &[u8; 4]) {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &mut engine(),
        &pipeline("veetance"),
        &["save"],
        &env(dir.path(), Some(workflow)),
    )
    .unwrap();
    let path = saved_path(&report);
    assert_eq!(path, dir.path().join("veetance_00001.png"));
    assert_eq!(files_in(dir.path()), vec!["veetance_00001.png"]);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.windows(4).any(|w| w == chunk_type));
    assert_eq!(
        read_png_workflow(&bytes).unwrap().as_deref(),
        Some(workflow)
    );
    let image = read_png_image(&path).unwrap();
    assert_eq!((image.width, image.height, image.channels), (40, 30, 3));
}

#[test]
fn pipeline_saves_an_image_with_an_ascii_workflow_in_text() {
    check_workflow_round_trip("(version: 1, nodes: [\"gradient\"])\n", b"tEXt");
}

#[test]
fn pipeline_saves_an_image_with_a_unicode_workflow_in_itxt() {
    check_workflow_round_trip("(prompt: \"un chat noir, café 猫 🐈\")\n", b"iTXt");
}

#[test]
fn no_workflow_means_no_workflow_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &mut engine(),
        &pipeline("plain"),
        &["save"],
        &env(dir.path(), None),
    )
    .unwrap();
    let bytes = std::fs::read(saved_path(&report)).unwrap();
    assert_eq!(read_png_workflow(&bytes).unwrap(), None);
}

#[test]
fn comfyui_prompt_and_workflow_are_embedded_as_comfyui_does() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = r#"{"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}"#;
    let workflow = r#"{"nodes": [], "links": [], "version": 0.4}"#;
    let env = RunEnv {
        png_text: vec![
            ("prompt".into(), prompt.into()),
            ("workflow".into(), workflow.into()),
        ],
        ..env(dir.path(), Some("(version: 1)\n"))
    };
    let report = run(&mut engine(), &pipeline("comfy"), &["save"], &env).unwrap();
    let bytes = std::fs::read(saved_path(&report)).unwrap();
    let text = |key| veetance_nodes_basic::read_png_text(&bytes, key).unwrap();
    assert_eq!(text("prompt").as_deref(), Some(prompt));
    assert_eq!(text("workflow").as_deref(), Some(workflow));
    assert_eq!(
        read_png_workflow(&bytes).unwrap().as_deref(),
        Some("(version: 1)\n")
    );
}

fn prefix_errors(prefix: &str) -> Vec<veetance_core::ValidationError> {
    let dir = tempfile::tempdir().unwrap();
    let graph = pipeline(prefix);
    let err = run(&mut engine(), &graph, &["save"], &env(dir.path(), None)).unwrap_err();
    assert!(err.is_invalid_input(), "{prefix:?}: {err}");
    // Nothing was written anywhere near.
    assert!(files_in(dir.path()).is_empty());
    match err {
        RunError::Invalid(errors) => errors,
        other => panic!("{prefix:?}: expected a validation error, got {other}"),
    }
}

#[test]
fn save_refuses_prefixes_that_escape_the_output_folder() {
    for prefix in ["../escape", "/abs/path", "a/../../b", "", "a/", "a//b"] {
        let errors = prefix_errors(prefix);
        assert_eq!(errors.len(), 1, "{prefix:?}: {errors:?}");
        assert_eq!(errors[0].node, "save");
        assert_eq!(errors[0].place, Place::Param("filename_prefix".into()));
        assert!(matches!(errors[0].problem, Problem::Invalid { .. }));
    }
    let message = prefix_errors("../escape")[0].to_string();
    assert!(message.contains("'..'"), "{message}");
    let message = prefix_errors("/abs/path")[0].to_string();
    assert!(message.contains("absolute"), "{message}");
}

#[test]
fn save_refuses_a_linked_prefix_that_escapes_when_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut graph = pipeline("veetance");
    graph
        .add_node(
            "name",
            "String",
            params(&[("value", Value::string("../x"))]),
        )
        .unwrap();
    link(&mut graph, ("name", "value"), ("save", "filename_prefix"));
    let err = run(&mut engine(), &graph, &["save"], &env(dir.path(), None)).unwrap_err();
    assert!(matches!(err, RunError::NodeFailed { .. }), "{err}");
    assert!(err.to_string().contains("'..'"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn numbering_continues_after_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = env(dir.path(), None);
    let mut graph = pipeline("veetance");
    let first = run(&mut engine(), &graph, &["save"], &out).unwrap();
    // A second engine (no cache): the same image is written again, under the next number.
    let second = run(&mut engine(), &graph, &["save"], &out).unwrap();
    assert_eq!(saved_path(&first), dir.path().join("veetance_00001.png"));
    assert_eq!(saved_path(&second), dir.path().join("veetance_00002.png"));
    // Numbering follows the highest number present, and other prefixes do not count.
    std::fs::write(dir.path().join("veetance_00041.png"), b"").unwrap();
    std::fs::write(dir.path().join("veetance_x_00099.png"), b"").unwrap();
    graph.set_param("resize", "width", Value::Int(20)).unwrap();
    let third = run(&mut engine(), &graph, &["save"], &out).unwrap();
    assert_eq!(saved_path(&third), dir.path().join("veetance_00042.png"));
    assert_eq!(
        files_in(dir.path()),
        vec![
            "veetance_00001.png",
            "veetance_00002.png",
            "veetance_00041.png",
            "veetance_00042.png",
            "veetance_x_00099.png"
        ]
    );
}

#[test]
fn unchanged_graph_is_served_from_cache_but_a_new_out_dir_saves_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine();
    let graph = pipeline("veetance");
    run(
        &mut engine,
        &graph,
        &["save"],
        &env(&dir.path().join("a"), None),
    )
    .unwrap();
    let again = run(
        &mut engine,
        &graph,
        &["save"],
        &env(&dir.path().join("a"), None),
    )
    .unwrap();
    assert!(again.executed.is_empty(), "{:?}", again.executed);
    let moved = run(
        &mut engine,
        &graph,
        &["save"],
        &env(&dir.path().join("b"), None),
    )
    .unwrap();
    assert_eq!(moved.executed, vec!["save"]);
    assert_eq!(files_in(&dir.path().join("b")), vec!["veetance_00001.png"]);
}

#[test]
fn prefix_sub_folders_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut graph = Graph::new();
    graph
        .add_node(
            "save",
            "SaveImage",
            params(&[("filename_prefix", Value::string("portraits/cat"))]),
        )
        .unwrap();
    graph
        .add_node(
            "img",
            "GradientImage",
            params(&[("width", Value::Int(4)), ("height", Value::Int(4))]),
        )
        .unwrap();
    graph
        .add_node(
            "resize",
            "ImageResize",
            params(&[("width", Value::Int(3)), ("height", Value::Int(2))]),
        )
        .unwrap();
    link(&mut graph, ("img", "image"), ("resize", "image"));
    link(&mut graph, ("resize", "image"), ("save", "images"));
    let report = run(&mut engine(), &graph, &["save"], &env(dir.path(), None)).unwrap();
    let folder = dir.path().join("portraits");
    assert_eq!(saved_path(&report), folder.join("cat_00001.png"));
    assert_eq!(files_in(&folder), vec!["cat_00001.png"]);
}

#[test]
fn every_image_of_a_batch_gets_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let batch = Image::new(3, 2, 2, 4, (0..48).map(|v| v as f32 / 47.0).collect()).unwrap();
    let out = common::exec_with(
        "SaveImage",
        &[("filename_prefix", Value::string("b"))],
        vec![("images", Value::Image(batch.clone()))],
        &env(dir.path(), None),
        &veetance_core::CancelToken::new(),
    )
    .unwrap();
    assert_eq!(
        out[0].as_str().unwrap(),
        dir.path().join("b_00001.png").to_str().unwrap()
    );
    assert_eq!(
        files_in(dir.path()),
        vec!["b_00001.png", "b_00002.png", "b_00003.png"]
    );
    for i in 0..3 {
        let loaded = read_png_image(&dir.path().join(format!("b_0000{}.png", i + 1))).unwrap();
        assert_eq!(loaded.channels, 4);
        assert_eq!(loaded.frame_u8(0), batch.frame_u8(i));
    }
}

#[test]
fn failed_writes_leave_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("x.png");
    // Too few values for the shape, then an invalid chunk keyword: both fail after the temp file
    // was created.
    assert!(write_png(&target, &[0.0; 5], 2, 2, 3, &[]).is_err());
    let bad_chunk = [(" bad".to_string(), "t".to_string())];
    assert!(write_png(&target, &[0.0; 12], 2, 2, 3, &bad_chunk).is_err());
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    // A successful write leaves exactly the file.
    write_png(&target, &[0.5; 12], 2, 2, 3, &[("k".into(), "v".into())]).unwrap();
    assert_eq!(files_in(dir.path()), vec!["x.png"]);
}

#[test]
fn load_of_a_missing_file_is_a_validation_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    let mut graph = Graph::new();
    graph
        .add_node(
            "load",
            "LoadImage",
            params(&[("image", Value::string(missing.to_str().unwrap()))]),
        )
        .unwrap();
    let err = run(&mut engine(), &graph, &["load"], &env(dir.path(), None)).unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    let RunError::Invalid(errors) = &err else {
        panic!("{err}")
    };
    assert_eq!(errors[0].place, Place::Param("image".into()));
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

    // A file that is not a PNG is refused the same way.
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "hello, not an image").unwrap();
    graph
        .set_param("load", "image", Value::string(text.to_str().unwrap()))
        .unwrap();
    let err = run(&mut engine(), &graph, &["load"], &env(dir.path(), None)).unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("not a PNG"),
        "{err}"
    );
}

/// LoadImage's outputs for a file: the RGB image, its mask's values, width and height.
fn load_with_mask(path: &Path) -> (Image, Vec<f32>, i64, i64) {
    let mut graph = Graph::new();
    graph
        .add_node(
            "load",
            "LoadImage",
            params(&[("image", Value::string(path.to_str().unwrap()))]),
        )
        .unwrap();
    let dir = path.parent().unwrap();
    let report = run(&mut engine(), &graph, &["load"], &env(dir, None)).unwrap();
    let out = &report.outputs["load"];
    let Value::Object(mask) = &out[1] else {
        panic!("MASK output is {:?}", out[1])
    };
    let mask = mask.downcast::<Mask>().expect("a Mask");
    let image = out[0].as_image().unwrap().clone();
    assert_eq!((mask.width, mask.height), (image.width, image.height));
    (
        image,
        mask.data.to_vec(),
        out[2].as_int().unwrap(),
        out[3].as_int().unwrap(),
    )
}

fn load(path: &Path) -> (Image, i64, i64) {
    let (image, _, w, h) = load_with_mask(path);
    (image, w, h)
}

#[test]
fn load_round_trips_a_saved_image_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &mut engine(),
        &pipeline("trip"),
        &["save", "resize"],
        &env(dir.path(), Some("wf")),
    )
    .unwrap();
    let original = report.outputs["resize"][0].as_image().unwrap().clone();
    let (loaded, width, height) = load(&saved_path(&report));
    assert_eq!((width, height), (40, 30));
    assert_eq!((loaded.batch, loaded.channels), (1, 3));
    assert_eq!(loaded.frame_u8(0), original.frame_u8(0));
}

/// Writes a PNG with the png crate directly, in a format SaveImage never produces.
fn write_raw(
    path: &Path,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    setup: impl FnOnce(&mut png::Encoder<'_, std::io::BufWriter<std::fs::File>>),
) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, 2, 1);
    encoder.set_color(color);
    encoder.set_depth(depth);
    setup(&mut encoder);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
}

#[test]
fn load_converts_gray_sixteen_bit_and_palette_images() {
    let dir = tempfile::tempdir().unwrap();
    let gray = dir.path().join("gray.png");
    write_raw(
        &gray,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0, 255],
        |_| {},
    );
    let (img, w, h) = load(&gray);
    assert_eq!((w, h, img.channels), (2, 1, 3));
    assert_eq!(&img.data[..], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);

    let gray_alpha = dir.path().join("ga.png");
    write_raw(
        &gray_alpha,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &[255, 0, 0, 255],
        |_| {},
    );
    // ComfyUI's LoadImage: RGB, and the mask is 1 − alpha.
    let (img, mask, _, _) = load_with_mask(&gray_alpha);
    assert_eq!(img.channels, 3);
    assert_eq!(&img.data[..], &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    assert_eq!(mask, vec![1.0, 0.0]);

    let deep = dir.path().join("rgb16.png");
    let half = 32768u16.to_be_bytes();
    let mut data = Vec::new();
    for v in [0u16, 65535, 32768, 1, 2, 3] {
        data.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(&data[4..6], &half);
    write_raw(
        &deep,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &data,
        |_| {},
    );
    let (img, _, _) = load(&deep);
    assert_eq!(img.channels, 3);
    assert_eq!(img.data[1], 1.0);
    assert!((img.data[2] - 32768.0 / 65535.0).abs() < 1e-7);
    assert!((img.data[3] - 1.0 / 65535.0).abs() < 1e-9);

    let palette = dir.path().join("palette.png");
    write_raw(
        &palette,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &[1, 0],
        |e| {
            e.set_palette(vec![255, 0, 0, 0, 0, 255]);
            e.set_trns(vec![255, 0]);
        },
    );
    let (img, mask, _, _) = load_with_mask(&palette);
    assert_eq!(img.channels, 3);
    assert_eq!(&img.data[..], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(mask, vec![1.0, 0.0]);
    // Without alpha the mask is all 0 (nothing to paint over).
    let (_, mask, _, _) = load_with_mask(&gray);
    assert_eq!(mask, vec![0.0, 0.0]);
}

#[test]
fn a_replaced_file_is_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.png");
    write_png(&path, &[0.0; 6], 2, 1, 3, &[]).unwrap();
    let mut graph = Graph::new();
    graph
        .add_node(
            "load",
            "LoadImage",
            params(&[("image", Value::string(path.to_str().unwrap()))]),
        )
        .unwrap();
    let mut engine = engine();
    let out = env(dir.path(), None);
    run(&mut engine, &graph, &["load"], &out).unwrap();
    let cached = run(&mut engine, &graph, &["load"], &out).unwrap();
    assert_eq!(cached.cached, vec!["load"]);
    // A different size (and a later or equal time): a different fingerprint.
    write_png(&path, &[1.0; 12], 4, 1, 3, &[]).unwrap();
    let reloaded = run(&mut engine, &graph, &["load"], &out).unwrap();
    assert_eq!(reloaded.executed, vec!["load"]);
    assert_eq!(reloaded.outputs["load"][2].as_int(), Some(4));
}

#[cfg(unix)]
#[test]
fn a_sub_folder_linking_outside_the_output_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (out, outside) = (dir.path().join("out"), dir.path().join("outside"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    let err = run(
        &mut engine(),
        &pipeline("link/cat"),
        &["save"],
        &env(&out, None),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("outside the output folder"),
        "{err}"
    );
    assert!(files_in(&outside).is_empty());
}
