//! Image preparation: ComfyUI's scaling methods against torch and Pillow
//! (`assets/parity/resample_ref.safetensors`, from `.verify/parity/make_resample_fixture.py`),
//! ImageScaleToTotalPixels' sizes, GetImageSize, crop/pad to a multiple, and the loaders'
//! input-folder rules and masks.

mod common;

use std::path::{Path, PathBuf};

use common::{exec, exec_with, flat};
use veetance_core::{CancelToken, Image, Mask, RunEnv, Value};
use veetance_nodes_basic::resample::{resize_image, total_pixels_size, Method};
use veetance_nodes_basic::{fit_to_multiple, resolve_image_path, write_png};

fn fixture() -> (Vec<u8>, PathBuf) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/parity/resample_ref.safetensors");
    (std::fs::read(&path).unwrap(), path)
}

/// An `(h, w, 3)` f32 tensor of the fixture as a one-image batch.
fn image_of(st: &safetensors::SafeTensors<'_>, name: &str) -> Image {
    let t = st.tensor(name).unwrap();
    let shape = t.shape();
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Image::new(1, shape[1] as u32, shape[2] as u32, shape[3] as u32, data).unwrap()
}

#[test]
fn scaling_methods_match_torch_and_pillow() {
    let (bytes, _) = fixture();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let input = image_of(&st, "input");
    let cancel = CancelToken::new();
    let mut checked = 0;
    for name in Method::NAMES {
        let method = Method::parse(name, "upscale_method").unwrap();
        for (w, h) in [(29, 23), (9, 7), (17, 30), (40, 6)] {
            let expected = image_of(&st, &format!("{name}_{w}x{h}"));
            let got = resize_image(&input, w, h, method, &cancel).unwrap();
            assert_eq!((got.width, got.height), (w, h));
            let worst = got
                .data
                .iter()
                .zip(expected.data.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Lanczos runs on 8-bit values: exact. The float methods differ from torch by the
            // order of f32 sums only.
            let tolerance = if method == Method::Lanczos { 0.0 } else { 2e-6 };
            assert!(
                worst <= tolerance,
                "{name} {w}x{h}: max difference {worst} > {tolerance}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 20);
}

#[test]
fn total_pixel_sizes_match_comfyui() {
    let (bytes, _) = fixture();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let sizes = meta.metadata().as_ref().unwrap()["total_pixels"].clone();
    let rows: Vec<Vec<f64>> = serde_json_lite(&sizes);
    assert_eq!(rows.len(), 8);
    for row in rows {
        let (w, h, mp, steps) = (row[0] as u32, row[1] as u32, row[2], row[3] as u32);
        assert_eq!(
            total_pixels_size(w, h, mp, steps),
            (row[4] as u32, row[5] as u32),
            "{w}x{h} at {mp} MP, steps {steps}"
        );
    }
}

/// Parses the fixture's `[[w, h, mp, steps, W, H], ...]` (numbers only).
fn serde_json_lite(text: &str) -> Vec<Vec<f64>> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split("], [")
        .map(|row| {
            row.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|v| v.trim().parse::<f64>().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn scale_to_total_pixels_and_get_size_as_nodes() {
    let image = flat(64, 32, 3, 0.25);
    let out = exec(
        "ImageScaleToTotalPixels",
        &[
            ("megapixels", Value::Float(0.01)),
            ("resolution_steps", Value::Int(16)),
            ("upscale_method", Value::choice("bilinear")),
        ],
        vec![("image", Value::Image(image))],
    )
    .unwrap();
    let scaled = out[0].as_image().unwrap().clone();
    // 0.01 MP = 10485.76 pixels at 2:1 → 144.8 × 72.4 → steps of 16: 144 × 80.
    assert_eq!((scaled.width, scaled.height), (144, 80));
    assert!(scaled.data.iter().all(|v| (v - 0.25).abs() < 1e-6));
    let size = exec("GetImageSize", &[], vec![("image", Value::Image(scaled))]).unwrap();
    let ints: Vec<i64> = size.iter().map(|v| v.as_int().unwrap()).collect();
    assert_eq!(ints, vec![144, 80, 1]);

    let err = exec(
        "ImageScaleToTotalPixels",
        &[
            ("megapixels", Value::Float(0.01)),
            ("resolution_steps", Value::Int(256)),
        ],
        vec![("image", Value::Image(flat(64, 8, 3, 0.5)))],
    )
    .unwrap_err();
    assert!(err.to_string().contains("resolution_steps"), "{err}");
}

#[test]
fn crop_and_pad_to_a_multiple_keep_the_centre() {
    // 5×3 image whose values are their x + 10 y.
    let data: Vec<f32> = (0..3)
        .flat_map(|y| (0..5).flat_map(move |x| [(x + 10 * y) as f32; 3]))
        .collect();
    let image = Image::new(1, 3, 5, 3, data).unwrap();
    let cropped = fit_to_multiple(&image, 2, false).unwrap();
    assert_eq!((cropped.width, cropped.height), (4, 2));
    // x offset (5 % 2) / 2 = 0, y offset (3 % 2) / 2 = 0: ComfyUI's VAEEncode crop.
    assert_eq!(cropped.data[0], 0.0);
    assert_eq!(cropped.data[3 * 4], 10.0);
    let padded = fit_to_multiple(&image, 4, true).unwrap();
    assert_eq!((padded.width, padded.height), (8, 4));
    // Three columns added: one on the left, two on the right; one row, at the bottom.
    let px = |x: usize, y: usize| padded.data[(y * 8 + x) * 3];
    assert_eq!(
        [px(0, 0), px(1, 0), px(5, 0), px(6, 0), px(7, 0)],
        [0.0, 0.0, 4.0, 4.0, 4.0]
    );
    assert_eq!(px(3, 3), 22.0);
    let err = fit_to_multiple(&image, 16, false).unwrap_err();
    assert!(err.contains("pad it instead"), "{err}");
    let out = exec(
        "ImageCropToMultiple",
        &[("multiple", Value::Int(2))],
        vec![("image", Value::Image(image))],
    )
    .unwrap();
    assert_eq!((out[1].as_int(), out[2].as_int()), (Some(4), Some(2)));
}

fn input_env(dir: &Path) -> RunEnv {
    RunEnv {
        out_dir: dir.join("output"),
        input_dir: Some(dir.join("input")),
        ..RunEnv::default()
    }
}

#[test]
fn image_names_resolve_in_comfyuis_folders_and_stay_inside() {
    let dir = tempfile::tempdir().unwrap();
    let env = input_env(dir.path());
    assert_eq!(
        resolve_image_path("a.png", &env).unwrap(),
        dir.path().join("input/a.png")
    );
    assert_eq!(
        resolve_image_path("sub/a.png", &env).unwrap(),
        dir.path().join("input/sub/a.png")
    );
    assert_eq!(
        resolve_image_path("b.png [output]", &env).unwrap(),
        dir.path().join("output/b.png")
    );
    for bad in [
        "../secret.png",
        "/etc/passwd",
        "sub/../../x.png",
        "x/../../y [output]",
    ] {
        let err = resolve_image_path(bad, &env).unwrap_err();
        assert!(err.contains("inside the input folder"), "{bad}: {err}");
    }
    // Without an input folder (the CLI), a path is a path.
    assert_eq!(
        resolve_image_path("../x.png", &RunEnv::default()).unwrap(),
        PathBuf::from("../x.png")
    );
}

fn mask_of(value: &Value) -> Mask {
    let Value::Object(o) = value else {
        panic!("not a mask: {value:?}")
    };
    o.downcast::<Mask>().expect("a Mask").clone()
}

#[test]
fn load_image_mask_reads_each_channel() {
    let dir = tempfile::tempdir().unwrap();
    let env = input_env(dir.path());
    std::fs::create_dir_all(dir.path().join("input")).unwrap();
    // Two RGBA pixels: (1, 0.2, 0, alpha 0) and (0, 0.6, 1, alpha 1), written at 8 bits.
    let px = [1.0, 0.2, 0.0, 0.0, 0.0, 0.6, 1.0, 1.0];
    write_png(&dir.path().join("input/m.png"), &px, 2, 1, 4, &[]).unwrap();
    let cancel = CancelToken::new();
    let channel = |name: &str| {
        let out = exec_with(
            "LoadImageMask",
            &[
                ("image", Value::string("m.png")),
                ("channel", Value::choice(name)),
            ],
            vec![],
            &env,
            &cancel,
        )
        .unwrap();
        mask_of(&out[0]).data.to_vec()
    };
    assert_eq!(channel("alpha"), vec![1.0, 0.0]);
    assert_eq!(channel("red"), vec![1.0, 0.0]);
    assert_eq!(channel("blue"), vec![0.0, 1.0]);
    let green = channel("green");
    assert!((green[0] - 51.0 / 255.0).abs() < 1e-6 && (green[1] - 153.0 / 255.0).abs() < 1e-6);

    let out = exec_with(
        "LoadImage",
        &[("image", Value::string("m.png"))],
        vec![],
        &env,
        &cancel,
    )
    .unwrap();
    let image = out[0].as_image().unwrap();
    assert_eq!(image.channels, 3);
    assert_eq!(mask_of(&out[1]).data.to_vec(), vec![1.0, 0.0]);

    let err = exec_with(
        "LoadImage",
        &[("image", Value::string("../m.png"))],
        vec![],
        &env,
        &cancel,
    )
    .unwrap_err();
    assert!(err.to_string().contains("inside the input folder"), "{err}");
}
