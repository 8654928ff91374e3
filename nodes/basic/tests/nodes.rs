//! Behaviour of the primitive, seed, generator and image-operation nodes.

mod common;

use common::{engine, exec, exec_image, exec_with, flat, link, params, run};
use veetance_core::{CancelToken, Graph, Image, NodeError, RunEnv, Value};
use veetance_nodes_basic::SEED_MAX;

#[test]
fn primitives_output_their_value() {
    let int = exec("Int", &[("value", Value::Int(-7))], vec![]).unwrap();
    assert!(int[0].scalar_eq(&Value::Int(-7)));
    // An integer literal for a Float param comes out as a Float.
    let float = exec("Float", &[("value", Value::Int(3))], vec![]).unwrap();
    assert!(float[0].scalar_eq(&Value::Float(3.0)));
    let flag = exec("Bool", &[("value", Value::Bool(true))], vec![]).unwrap();
    assert!(flag[0].scalar_eq(&Value::Bool(true)));
    let text = exec("String", &[("value", Value::string("a\nb"))], vec![]).unwrap();
    assert!(text[0].scalar_eq(&Value::string("a\nb")));
}

fn seed_graph(seed: i64, control: &str) -> Graph {
    let mut graph = Graph::new();
    graph
        .add_node(
            "seed",
            "Seed",
            params(&[
                ("seed", Value::Int(seed)),
                ("control", Value::choice(control)),
            ]),
        )
        .unwrap();
    graph
}

fn seeds_over_runs(seed: i64, control: &str, runs: usize) -> Vec<i64> {
    let mut engine = engine();
    let graph = seed_graph(seed, control);
    (0..runs)
        .map(|_| {
            let report = run(&mut engine, &graph, &["seed"], &RunEnv::default()).unwrap();
            report.outputs["seed"][0].as_int().unwrap()
        })
        .collect()
}

#[test]
fn fixed_seed_is_the_same_every_run() {
    assert_eq!(seeds_over_runs(1234, "fixed", 3), vec![1234, 1234, 1234]);
}

#[test]
fn increment_seed_adds_the_run_index() {
    assert_eq!(seeds_over_runs(10, "increment", 3), vec![10, 11, 12]);
    // Wraps within the seed range rather than leaving it.
    assert_eq!(seeds_over_runs(SEED_MAX, "increment", 2), vec![SEED_MAX, 0]);
}

#[test]
fn randomized_seed_differs_across_runs() {
    let seeds = seeds_over_runs(0, "randomize", 4);
    let mut unique = seeds.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{seeds:?}");
    assert!(seeds.iter().all(|s| (0..=SEED_MAX).contains(s)));
}

#[test]
fn seed_control_cannot_be_linked() {
    // It decides caching before anything runs, so it must be a constant.
    let mut graph = seed_graph(1, "fixed");
    graph
        .add_node(
            "mode",
            "String",
            params(&[("value", Value::string("randomize"))]),
        )
        .unwrap();
    link(&mut graph, ("mode", "value"), ("seed", "control"));
    let err = run(&mut engine(), &graph, &["seed"], &RunEnv::default()).unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
}

#[test]
fn horizontal_gradient_runs_from_color_a_to_color_b() {
    let img = exec_image(
        "GradientImage",
        &[
            ("width", Value::Int(5)),
            ("height", Value::Int(2)),
            ("color_a", Value::string("#ff0000")),
            ("color_b", Value::string("#0000FF")),
        ],
        vec![],
    );
    assert_eq!(
        (img.batch, img.height, img.width, img.channels),
        (1, 2, 5, 3)
    );
    let px = |x: usize, y: usize| &img.data[(y * 5 + x) * 3..][..3];
    assert_eq!(px(0, 0), &[1.0, 0.0, 0.0]);
    assert_eq!(px(4, 1), &[0.0, 0.0, 1.0]);
    assert_eq!(px(2, 0), &[0.5, 0.0, 0.5]);
    assert_eq!(px(2, 0), px(2, 1));
}

#[test]
fn vertical_diagonal_and_radial_gradients_have_their_shape() {
    let gradient = |direction: &str| {
        exec_image(
            "GradientImage",
            &[
                ("width", Value::Int(9)),
                ("height", Value::Int(9)),
                ("direction", Value::choice(direction)),
            ],
            vec![],
        )
    };
    let red = |img: &Image, x: usize, y: usize| img.data[(y * 9 + x) * 3];
    let v = gradient("vertical");
    assert_eq!(
        (red(&v, 0, 0), red(&v, 8, 0), red(&v, 3, 8)),
        (0.0, 0.0, 1.0)
    );
    let d = gradient("diagonal");
    assert_eq!((red(&d, 0, 0), red(&d, 8, 8)), (0.0, 1.0));
    assert_eq!(red(&d, 8, 0), red(&d, 0, 8));
    let r = gradient("radial");
    assert!(red(&r, 4, 4) < 0.1);
    assert_eq!(red(&r, 0, 0), 1.0);
    assert_eq!(red(&r, 0, 4), red(&r, 8, 4));
}

#[test]
fn gradient_colors_are_checked_by_validation() {
    let mut graph = Graph::new();
    graph
        .add_node(
            "g",
            "GradientImage",
            params(&[("color_b", Value::string("white"))]),
        )
        .unwrap();
    let errors =
        veetance_core::validate(&graph, &common::registry(), &RunEnv::default()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].place,
        veetance_core::Place::Param("color_b".into())
    );
    assert!(errors[0].to_string().contains("#rrggbb"), "{}", errors[0]);
}

fn noise(seed: i64, scale: f64, color: bool) -> Image {
    exec_image(
        "NoiseImage",
        &[
            ("width", Value::Int(64)),
            ("height", Value::Int(48)),
            ("seed", Value::Int(seed)),
            ("scale", Value::Float(scale)),
            ("color", Value::Bool(color)),
        ],
        vec![],
    )
}

#[test]
fn noise_is_deterministic_for_a_seed() {
    let a = noise(42, 8.0, false);
    assert_eq!(a, noise(42, 8.0, false));
    assert_ne!(a, noise(43, 8.0, false));
    assert_eq!((a.height, a.width, a.channels), (48, 64, 3));
    assert!(a.data.iter().all(|v| (0.0..1.0).contains(v)));
    // Gray noise has equal channels; colour noise does not.
    assert!(a.data.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let c = noise(42, 8.0, true);
    assert!(c.data.chunks_exact(3).any(|p| p[0] != p[1]));
}

#[test]
fn larger_noise_scale_is_smoother() {
    let roughness = |img: &Image| {
        img.data
            .chunks_exact(3)
            .zip(img.data.chunks_exact(3).skip(1))
            .map(|(a, b)| (a[0] - b[0]).abs())
            .sum::<f32>()
    };
    assert!(roughness(&noise(1, 1.0, false)) > 4.0 * roughness(&noise(1, 16.0, false)));
}

#[test]
fn generators_stop_when_cancelled() {
    let cancel = CancelToken::new();
    cancel.cancel();
    for node in ["NoiseImage", "GradientImage"] {
        let err = exec_with(node, &[], vec![], &RunEnv::default(), &cancel).unwrap_err();
        assert!(matches!(err, NodeError::Cancelled), "{node}: {err}");
    }
    let err = exec_with(
        "ImageResize",
        &[],
        vec![("image", Value::Image(flat(4, 4, 3, 0.5)))],
        &RunEnv::default(),
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, NodeError::Cancelled));
}

#[test]
fn nearest_resize_copies_pixels_exactly() {
    let src = Image::new(1, 2, 2, 3, (0..12).map(|v| v as f32 / 11.0).collect()).unwrap();
    let out = exec_image(
        "ImageResize",
        &[
            ("width", Value::Int(4)),
            ("height", Value::Int(4)),
            ("method", Value::choice("nearest")),
        ],
        vec![("image", Value::Image(src.clone()))],
    );
    assert_eq!((out.height, out.width, out.channels), (4, 4, 3));
    let px = |img: &Image, x: usize, y: usize| {
        img.data[(y * img.width as usize + x) * 3..][..3].to_vec()
    };
    assert_eq!(px(&out, 0, 0), px(&src, 0, 0));
    assert_eq!(px(&out, 1, 1), px(&src, 0, 0));
    assert_eq!(px(&out, 3, 0), px(&src, 1, 0));
    assert_eq!(px(&out, 2, 3), px(&src, 1, 1));
}

#[test]
fn bilinear_resize_keeps_flat_images_flat_and_batches_whole() {
    let mut data = vec![0.25f32; 2 * 3 * 5 * 4];
    data[60..].fill(0.75);
    let src = Image::new(2, 3, 5, 4, data).unwrap();
    let out = exec_image(
        "ImageResize",
        &[("width", Value::Int(7)), ("height", Value::Int(2))],
        vec![("image", Value::Image(src))],
    );
    assert_eq!(
        (out.batch, out.height, out.width, out.channels),
        (2, 2, 7, 4)
    );
    assert!(out.frame(0).iter().all(|v| (v - 0.25).abs() < 1e-6));
    assert!(out.frame(1).iter().all(|v| (v - 0.75).abs() < 1e-6));
}

#[test]
fn bilinear_resize_interpolates_between_pixels() {
    // Two pixels, black and white, stretched to four: centres at 1/4 and 3/4 of the way.
    let src = Image::new(1, 1, 2, 3, vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
    let out = exec_image(
        "ImageResize",
        &[("width", Value::Int(4)), ("height", Value::Int(1))],
        vec![("image", Value::Image(src))],
    );
    let red: Vec<f32> = out.data.chunks_exact(3).map(|p| p[0]).collect();
    assert_eq!(red, vec![0.0, 0.25, 0.75, 1.0]);
}

fn blend(mode: &str, factor: f64, a: Image, b: Image) -> Result<Image, NodeError> {
    let out = exec(
        "ImageBlend",
        &[
            ("mode", Value::choice(mode)),
            ("factor", Value::Float(factor)),
        ],
        vec![("a", Value::Image(a)), ("b", Value::Image(b))],
    )?;
    Ok(out[0].as_image().unwrap().clone())
}

#[test]
fn blend_modes_compute_their_formulas() {
    let first = |mode: &str, factor: f64, a: f32, b: f32| {
        blend(mode, factor, flat(2, 2, 3, a), flat(2, 2, 3, b))
            .unwrap()
            .data[0]
    };
    assert_eq!(first("normal", 1.0, 0.2, 0.6), 0.6);
    assert_eq!(first("normal", 0.0, 0.2, 0.6), 0.2);
    assert!((first("normal", 0.5, 0.2, 0.6) - 0.4).abs() < 1e-6);
    assert_eq!(first("multiply", 1.0, 0.5, 0.5), 0.25);
    assert_eq!(first("screen", 1.0, 0.5, 0.5), 0.75);
    assert_eq!(first("add", 1.0, 0.7, 0.6), 1.0);
    assert!((first("difference", 1.0, 0.2, 0.6) - 0.4).abs() < 1e-6);
}

#[test]
fn blend_resizes_b_and_keeps_a_channels() {
    let out = blend("normal", 1.0, flat(8, 6, 4, 0.0), flat(3, 3, 3, 0.5)).unwrap();
    assert_eq!(
        (out.batch, out.height, out.width, out.channels),
        (1, 6, 8, 4)
    );
    for px in out.data.chunks_exact(4) {
        assert!((px[0] - 0.5).abs() < 1e-6);
        // b has no alpha: it counts as opaque.
        assert_eq!(px[3], 1.0);
    }
}

#[test]
fn blend_broadcasts_a_single_image_and_refuses_mismatched_batches() {
    let two = Image::new(2, 2, 2, 3, vec![0.5; 24]).unwrap();
    let out = blend("multiply", 1.0, flat(2, 2, 3, 1.0), two.clone()).unwrap();
    assert_eq!(out.batch, 2);
    let three = Image::new(3, 2, 2, 3, vec![0.5; 36]).unwrap();
    let err = blend("normal", 1.0, two, three).unwrap_err();
    assert!(err.to_string().contains("batches"), "{err}");
}

/// The brief's speed bar: a 1024×1024 gradient + noise + blend + resize + save well under a
/// second. Only meaningful in release: `cargo test --release -p veetance-nodes-basic -- --ignored`.
#[test]
#[ignore = "timing; run in release"]
fn megapixel_pipeline_is_fast_in_release() {
    let dir = tempfile::tempdir().unwrap();
    let mut graph = Graph::new();
    let side = [("width", Value::Int(1024)), ("height", Value::Int(1024))];
    let mut with = |id: &str, ty: &str, extra: &[(&str, Value)]| {
        let mut p = params(extra);
        if ty != "SaveImage" && ty != "ImageBlend" {
            p.extend(params(&side));
        }
        graph.add_node(id, ty, p).unwrap();
    };
    with(
        "g",
        "GradientImage",
        &[("direction", Value::choice("radial"))],
    );
    with("n", "NoiseImage", &[("color", Value::Bool(true))]);
    with("b", "ImageBlend", &[("mode", Value::choice("screen"))]);
    with("r", "ImageResize", &[]);
    with("s", "SaveImage", &[]);
    graph.set_param("r", "width", Value::Int(768)).unwrap();
    link(&mut graph, ("g", "image"), ("b", "a"));
    link(&mut graph, ("n", "image"), ("b", "b"));
    link(&mut graph, ("b", "image"), ("r", "image"));
    link(&mut graph, ("r", "image"), ("s", "images"));
    let env = RunEnv {
        out_dir: dir.path().to_path_buf(),
        ..RunEnv::default()
    };
    let started = std::time::Instant::now();
    run(&mut engine(), &graph, &["s"], &env).unwrap();
    let elapsed = started.elapsed();
    eprintln!("megapixel pipeline: {elapsed:?}");
    assert!(elapsed.as_secs_f64() < 0.5, "{elapsed:?}");
}
