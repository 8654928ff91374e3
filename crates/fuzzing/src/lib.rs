//! Fuzz entry points: one `pub fn <target>(data: &[u8])` per parser of untrusted input, each
//! feeding the bytes to the real parser the front ends and the server use and checking what must
//! hold whatever the bytes are. A target never panics on bad input (a parser's error is an
//! answer, not a failure); it panics only when an invariant breaks, which libFuzzer then reports
//! as a crash.
//!
//! The same functions serve `fuzz/` (cargo-fuzz, libFuzzer, nightly; `fuzz_targets/<target>.rs`
//! is one call into here) and the replay test of this crate (`tests/replay.rs`, stable, part of
//! `cargo test --workspace`), which feeds every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` to its target. [`TARGETS`] lists them by name for both.
//! `.verify/fuzz.sh` runs the campaigns; `docs/reliability.md` ("Fuzzing") has what they found.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use candle_core::{DType, Device};
use serde_json::Value as Json;
use veetance_core::{Graph, NodeRegistry, RunEnv};
use veetance_models::gguf::GgufFile;
use veetance_models::weights::{guess_model_kind, TensorIndex, WeightFiles};
use veetance_models::{flux2, lora, qwen3, vae};
use veetance_workflow::WorkflowFile;

/// A fuzz target: the bytes of one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("workflow_ron", workflow_ron),
    ("comfy_json", comfy_json),
    ("png_text", png_text),
    ("png_image", png_image),
    ("safetensors", safetensors),
    ("gguf", gguf),
    ("model_config", model_config),
    ("tokenizer_json", tokenizer_json),
    ("prompt_tokens", prompt_tokens),
    ("server_prompt", server_prompt),
    ("server_upload", server_upload),
    ("server_ws", server_ws),
];

/// Every node the CLI, the editor and the server know.
fn registry() -> &'static NodeRegistry {
    static REGISTRY: LazyLock<NodeRegistry> = LazyLock::new(veetance_nodes::registry);
    &REGISTRY
}

/// The run environment validation checks files against: folders that do not exist, so that a
/// node's file checks answer "missing" without touching anything.
fn check_env() -> RunEnv {
    let root = std::env::temp_dir().join("veetance-fuzzing-absent");
    RunEnv {
        out_dir: root.join("output"),
        models_dir: root.join("models"),
        temp_dir: Some(root.join("temp")),
        input_dir: Some(root.join("input")),
        ..RunEnv::default()
    }
}

/// A graph as a comparable value: every node (id, type, params as written) and every link.
fn graph_summary(graph: &Graph) -> (BTreeSet<String>, BTreeSet<String>) {
    let nodes = graph
        .nodes()
        .map(|n| format!("{} {} {:?}", n.id, n.type_name, n.params))
        .collect();
    let links = graph
        .links()
        .into_iter()
        .map(|l| format!("{:?}", l))
        .collect();
    (nodes, links)
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A `.ron` workflow, as `veetance`, `veetance --headless` and the editor open one: parsed,
/// turned into the core graph and validated against every registered node. A document that
/// parses must write canonical text that parses back to the same canonical text, and its graph
/// must survive the trip back into a document.
pub fn workflow_ron(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(file) = WorkflowFile::parse(text, "fuzz.ron") else {
        return;
    };
    let canonical = file.to_ron();
    let again = WorkflowFile::parse(&canonical, "canonical.ron").unwrap_or_else(|e| {
        panic!("the canonical text of a parsed workflow does not parse: {e}\n{canonical}")
    });
    assert_eq!(
        again.to_ron(),
        canonical,
        "canonical text changed on a second trip"
    );
    let Ok(graph) = file.to_graph("fuzz.ron") else {
        return;
    };
    let _ = veetance_core::validate(&graph, registry(), &check_env());
    let back = WorkflowFile::from_graph(&graph, file.layout.clone());
    let regraph = back
        .to_graph("from_graph.ron")
        .unwrap_or_else(|e| panic!("a graph's own document does not build: {e}"));
    assert_eq!(graph_summary(&regraph), graph_summary(&graph));
}

/// ComfyUI's JSON (an API prompt or a UI workflow), as the front ends open a `.json` file:
/// read into a graph, validated as ComfyUI validates, pruned to its runnable outputs and
/// converted into a `.ron` document. The API prompt made of it must read again into the same
/// graph, and the `.ron` document must parse back.
pub fn comfy_json(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let read = match veetance_comfy::read_json_text(text, registry()) {
        Ok(read) => read,
        Err(e) => {
            // The error renders for people and as ComfyUI's JSON answer.
            let _ = e.lines();
            let _ = serde_json::to_string(&e);
            return;
        }
    };
    let again = veetance_comfy::prompt_to_graph(&read.prompt, registry())
        .unwrap_or_else(|e| panic!("a prompt read_json made does not read again: {e}"));
    assert_eq!(graph_summary(&again), graph_summary(&read.graph));
    if let Some(ui) = &read.workflow {
        let _ = veetance_comfy::ui_positions(ui);
    }
    if let Ok(checked) = veetance_comfy::check_prompt(&read.graph, registry(), &check_env()) {
        let _ = veetance_comfy::prune(&read.graph, &checked.outputs);
    }
    let file = WorkflowFile::from_graph(&read.graph, None);
    let ron = file.to_ron();
    WorkflowFile::parse(&ron, "converted.ron")
        .unwrap_or_else(|e| panic!("a ComfyUI graph's .ron document does not parse: {e}\n{ron}"));
}

/// The text chunks of a PNG as the front ends read them (`load_workflow`): the Veetance
/// workflow chunk parsed as `.ron`, else ComfyUI's `prompt` / `workflow` chunks read as ComfyUI
/// JSON; also the `parameters` chunk SaveImage writes.
pub fn png_text(data: &[u8]) {
    let chunk = |key: &str| veetance_nodes_basic::read_png_text(data, key);
    let _ = chunk("parameters");
    match chunk(veetance_nodes_basic::WORKFLOW_PNG_KEYWORD) {
        Err(_) => {}
        Ok(Some(ron)) => {
            let _ = WorkflowFile::parse(&ron, "fuzz.png (embedded workflow)");
        }
        Ok(None) => {
            let (Ok(prompt), Ok(workflow)) = (chunk("prompt"), chunk("workflow")) else {
                return;
            };
            if prompt.is_some() || workflow.is_some() {
                let _ = veetance_comfy::read_png_texts(
                    prompt.as_deref(),
                    workflow.as_deref(),
                    registry(),
                );
            }
        }
    }
}

/// A PNG decoded as `LoadImage` decodes an input image (uploads included): an image that
/// decodes has the declared size, at most `MAX_SIDE` a side, with every value in [0, 1].
pub fn png_image(data: &[u8]) {
    let Ok(image) = veetance_nodes_basic::decode_png_image(data, "fuzz.png") else {
        return;
    };
    let max = veetance_nodes_basic::MAX_SIDE;
    assert!(image.width <= max && image.height <= max);
    assert!(matches!(image.channels, 3 | 4));
    assert_eq!(
        image.data.len(),
        image.batch as usize
            * image.height as usize
            * image.width as usize
            * image.channels as usize
    );
    assert!(image.data.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// What the model loaders read from any checkpoint's tensor table: the FLUX.2 layout and
/// configuration, the Qwen3 and VAE configurations, the kind of model it looks like.
fn tensor_table(files: &dyn TensorIndex) {
    let _ = guess_model_kind(files);
    if let Ok(layout) = flux2::detect_layout(files) {
        if let Ok(cfg) = flux2::infer_config(files, &layout) {
            cfg.validate().unwrap_or_else(|e| {
                panic!("a configuration read from tensor shapes does not validate: {e}")
            });
        }
    }
    if let Ok(cfg) = qwen3::Config::from_tensors(files) {
        qwen3_derived(&cfg);
    }
    if let Ok(cfg) = vae::Config::from_tensors(files) {
        let _ = cfg.validate();
    }
}

/// The sizes the text encoder derives from its configuration.
fn qwen3_derived(cfg: &qwen3::Config) {
    let _ = cfg.head_dim();
    let _ = cfg.layers_needed();
    let _ = cfg.output_dim();
}

/// A safetensors checkpoint (header, tensor table, ComfyUI's quantization descriptions) as the
/// model loaders open one, every tensor loaded on the CPU; and the same bytes read as a LoRA.
pub fn safetensors(data: &[u8]) {
    let _ = lora::read_bytes(Path::new("fuzz.safetensors"), data);
    let Ok(files) = WeightFiles::from_bytes("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    let _ = files.describe();
    let _ = files.quantized_layer_count();
    let names: Vec<String> = files.names().map(str::to_string).collect();
    for name in &names {
        assert!(files.contains(name));
        let _ = (files.shape(name), files.stored_dtype(name));
        let _ = (files.fp8_scale_name(name), files.layer_quant(name));
        if let Ok(t) = files.load(name, None, DType::F32, &Device::Cpu) {
            assert_eq!(Some(t.dims()), files.shape(name));
        }
    }
    tensor_table(&files);
}

/// A GGUF file (header, metadata, tensor infos) as the loaders open one: every tensor
/// dequantized on the CPU, the Qwen3 configuration read from its metadata.
pub fn gguf(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let _ = file.architecture();
    let names: Vec<String> = file.names().map(str::to_string).collect();
    for name in &names {
        let _ = (file.logical_shape(name), file.is_reshaped(name));
        let _ = (file.ggml_type(name), file.stored_bytes(name));
        if let Ok(t) = file.tensor(name, DType::F32, &Device::Cpu) {
            assert_eq!(Some(t.dims().to_vec()), file.logical_shape(name));
        }
        let _ = file.qtensor(name, &Device::Cpu);
    }
    if let Ok(cfg) = qwen3::Config::from_gguf(&file) {
        qwen3_derived(&cfg);
        let _ = cfg.validate();
    }
    tensor_table(&file);
}

/// A `config.json` beside a model: read as the FLUX.2 transformer's, the Qwen3 encoder's and the
/// VAE's configuration, each checked as its loader checks it.
pub fn model_config(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let _ = flux2::Config::from_json(text);
    if let Ok(cfg) = qwen3::Config::from_json(text) {
        if cfg.validate().is_ok() {
            qwen3_derived(&cfg);
        }
    }
    if let Ok(cfg) = vae::Config::from_json(text) {
        let _ = cfg.validate();
    }
}

/// A `tokenizer.json` given beside a text encoder: read as a Qwen tokenizer, then used on a
/// prompt. The ids always come padded to the length asked for.
pub fn tokenizer_json(data: &[u8]) {
    // The tokenizers crate panics on some malformed files; `read_tokenizer` catches that and
    // answers a named error, which is what is under test. libFuzzer's panic hook would abort the
    // process before the catch, so it is set aside for this one call (the default hook would
    // print every caught panic).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let read = qwen3::read_tokenizer(data);
    std::panic::set_hook(hook);
    let Ok((tokenizer, pad_id)) = read else {
        return;
    };
    if let Ok((ids, real, _)) = qwen3::tokenize(&tokenizer, pad_id, 64, "a photo of a cat") {
        assert_eq!(ids.len(), 64);
        assert!(real <= 64);
    }
}

/// A prompt's text through the built-in Qwen3 tokenizer, as every text encoder tokenizes the
/// prompts clients send: any text gives `max_length` ids, all of them known to the vocabulary.
pub fn prompt_tokens(data: &[u8]) {
    static BUILTIN: LazyLock<(Arc<tokenizers::Tokenizer>, u32)> = LazyLock::new(|| {
        let tokenizer = qwen3::builtin_tokenizer().expect("the built-in tokenizer loads");
        let pad = tokenizer
            .token_to_id("<|endoftext|>")
            .expect("the built-in tokenizer has <|endoftext|>");
        (tokenizer, pad)
    });
    let Some(text) = text(data) else { return };
    let (tokenizer, pad_id) = &*BUILTIN;
    let max_len = 512;
    let (ids, real, truncated) = qwen3::tokenize(tokenizer, *pad_id, max_len, text)
        .unwrap_or_else(|e| panic!("the built-in tokenizer refused a prompt: {e}"));
    assert_eq!(ids.len(), max_len);
    assert!(real <= max_len);
    if truncated {
        assert_eq!(real, max_len);
    }
    assert!(ids[real..].iter().all(|id| id == pad_id));
    assert!(ids
        .iter()
        .all(|&id| (id as usize) < qwen3::BUILTIN_TOKENIZER_TOKENS));
}

/// A `POST /prompt` body, as the server reads it and validates its prompt before queueing
/// (everything but the queue itself). What it accepts has a canonical UUID and a finite number.
pub fn server_prompt(data: &[u8]) {
    let Ok(request) = veetance_server::parse_prompt_request(data, registry(), Some("fuzz")) else {
        return;
    };
    assert!(
        uuid_is_canonical(&request.prompt_id),
        "{}",
        request.prompt_id
    );
    assert!(request.number.is_none_or(f64::is_finite));
    if let Ok(graph) = veetance_comfy::prompt_to_graph(&request.prompt, registry()) {
        if let Ok(checked) = veetance_comfy::check_prompt(&graph, registry(), &check_env()) {
            let _ = serde_json::to_value(&checked.node_errors);
        }
    }
}

fn uuid_is_canonical(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// A `POST /upload/image` body: the first line of the input is the multipart boundary, the rest
/// the body. Whatever the form holds, an accepted upload names one plain file in a subfolder of
/// plain parts: nothing that could leave the upload folder.
pub fn server_upload(data: &[u8]) {
    use axum::body::Body;
    use axum::http::{header, Request};
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime starts");
    }
    let (boundary, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"fuzz"[..], data),
    };
    let Ok(boundary) = std::str::from_utf8(boundary) else {
        return;
    };
    let Ok(request) = Request::builder()
        .method("POST")
        .uri("/upload/image")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let parsed = RUNTIME.with(|rt| rt.block_on(veetance_server::parse_upload(request, 1 << 20)));
    let Ok(upload) = parsed else { return };
    let plain = |s: &str| {
        let mut components = Path::new(s).components();
        matches!(components.next(), Some(std::path::Component::Normal(_)))
            && components.next().is_none()
            && !s.contains(['/', '\\', '\0'])
    };
    assert!(plain(&upload.file_name), "file name {:?}", upload.file_name);
    for part in &upload.parts {
        assert!(
            plain(part) && !part.contains(':'),
            "subfolder part {part:?}"
        );
    }
    let joined: PathBuf = upload.parts.iter().collect();
    assert!(joined.is_relative());
}

/// A client's WebSocket text message (its first is read for `feature_flags`).
pub fn server_ws(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Some(flags) = veetance_server::client_feature_flags(text) {
        let m: Json = serde_json::from_str(text).expect("a message read as flags is JSON");
        assert_eq!(m["type"], "feature_flags");
        let _ = flags.supports_preview_metadata;
    }
}
