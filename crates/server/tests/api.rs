//! `veetance serve` on loopback, driven as ComfyUI clients drive ComfyUI: HTTP with reqwest, the
//! WebSocket with tungstenite. Graphs use the tiny models of `assets/tiny-models` (64×64
//! images) and two test nodes registered here (a slow image and a failing one).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::blocking::{multipart, Client};
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeRegistry, NodeSchema, ParamDef, PortType, Value,
};
use veetance_server::{Limits, ServeOptions, Server, ServerHandle};

// ------------------------------------------------------------------------- test nodes

/// An 8×8 image after `steps` steps of `step_ms` each, reporting progress and checking the
/// cancel token every step.
struct SlowImage(NodeSchema);

impl SlowImage {
    fn new() -> Self {
        SlowImage(
            NodeSchema::new("TestSlowImage", "Slow image", "test")
                .param(ParamDef::int("steps", 10, 1, 1_000_000, "Steps."))
                .param(ParamDef::int(
                    "step_ms",
                    10,
                    0,
                    10_000,
                    "Milliseconds a step.",
                ))
                .param(ParamDef::int("seed", 0, 0, 1 << 40, "Changes the colour."))
                .output("image", PortType::Image, "The image."),
        )
    }
}

impl NodeDef for SlowImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let steps = ctx.params.int("steps")? as u64;
        let step_ms = ctx.params.int("step_ms")? as u64;
        let seed = ctx.params.int("seed")?;
        for i in 1..=steps {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(step_ms));
            ctx.progress(i, steps);
        }
        let shade = (seed % 256) as f32 / 255.0;
        let image = Image::new(1, 8, 8, 3, vec![shade; 8 * 8 * 3]).map_err(NodeError::failed)?;
        Ok(vec![Value::Image(image)])
    }
}

/// Always fails.
struct FailingImage(NodeSchema);

impl NodeDef for FailingImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn execute(&self, _ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        Err(NodeError::failed("boom: this test node fails on purpose"))
    }
}

/// Fails as a GPU that ran out of memory fails.
struct OomImage(NodeSchema);

impl NodeDef for OomImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn execute(&self, _ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        Err(NodeError::out_of_memory(
            Some(80 << 30),
            "CUDA_ERROR_OUT_OF_MEMORY (test)",
        ))
    }
}

/// Would allocate `width × height` pixels (it never gets to: the server refuses it first).
struct HugeImage(NodeSchema);

impl NodeDef for HugeImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn execute(&self, _ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        panic!("the host-memory check should have stopped this run");
    }
}

fn registry() -> NodeRegistry {
    let mut reg = veetance_nodes::registry();
    reg.add(OomImage(
        NodeSchema::new("TestOomImage", "OOM image", "test").output(
            "image",
            PortType::Image,
            "Never.",
        ),
    ));
    reg.add(HugeImage(
        NodeSchema::new("TestHugeImage", "Huge image", "test")
            .param(ParamDef::int("width", 64, 1, 1 << 24, "Width."))
            .param(ParamDef::int("height", 64, 1, 1 << 24, "Height."))
            .output("image", PortType::Image, "Never."),
    ));
    reg.add(SlowImage::new());
    reg.add(FailingImage(
        NodeSchema::new("TestFailingImage", "Failing image", "test").output(
            "image",
            PortType::Image,
            "Never.",
        ),
    ));
    reg
}

// ------------------------------------------------------------------------- server

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct TestServer {
    handle: Option<ServerHandle>,
    dir: tempfile::TempDir,
    base: String,
    http: Client,
}

impl TestServer {
    fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    fn start_with(configure: impl FnOnce(&mut ServeOptions)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            models_dir: repo().join("assets/tiny-models"),
            out_dir: dir.path().join("output"),
            input_dir: dir.path().join("input"),
            temp_dir: dir.path().join("temp"),
            state_dir: dir.path().join("state"),
            user_dir: dir.path().join("user"),
            registry: Some(registry()),
            ..ServeOptions::default()
        };
        configure(&mut options);
        let handle = Server::start(options).expect("the server starts");
        let base = format!("http://{}", handle.addr());
        TestServer {
            handle: Some(handle),
            dir,
            base,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http.get(self.url(path)).send().unwrap()
    }

    fn get_json(&self, path: &str) -> Json {
        let r = self.get(path);
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().unwrap()
    }

    fn post(&self, path: &str, body: &Json) -> reqwest::blocking::Response {
        self.http.post(self.url(path)).json(body).send().unwrap()
    }

    /// Queues a prompt; its id.
    fn queue(&self, prompt: Json, extra: Json) -> String {
        let mut body = json!({ "prompt": prompt });
        if let Some(map) = extra.as_object() {
            for (k, v) in map {
                body[k] = v.clone();
            }
        }
        let r = self.post("/prompt", &body);
        let status = r.status();
        let answer: Json = r.json().unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["prompt_id"].as_str().unwrap().to_string()
    }

    /// Waits until the prompt is in the history; its entry.
    fn wait_history(&self, prompt_id: &str) -> Json {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let h = self.get_json(&format!("/history/{prompt_id}"));
            if let Some(entry) = h.get(prompt_id) {
                return entry.clone();
            }
            assert!(
                Instant::now() < deadline,
                "prompt {prompt_id} never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output_pngs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.path().join("output")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "png") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown();
        }
    }
}

// ------------------------------------------------------------------------- prompts

/// The tiny FLUX.2 graph in API form, over native node types.
fn tiny_flux(seed: i64, steps: i64) -> Json {
    json!({
        "1": {"class_type": "LoadDiffusionModel", "inputs": {"file": "flux2-klein-tiny.safetensors"}},
        "2": {"class_type": "LoadTextEncoder", "inputs": {"file": "qwen3-tiny.safetensors"}},
        "3": {"class_type": "TextEncode", "inputs": {"text": "a red fox", "text_encoder": ["2", 0]}},
        "4": {"class_type": "LoadVae", "inputs": {"file": "flux2-vae-tiny"}},
        "5": {"class_type": "EmptyLatent", "inputs": {"width": 64, "height": 64, "batch": 1}},
        "6": {"class_type": "Sampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "latent": ["5", 0],
            "seed": seed, "steps": steps}},
        "7": {"class_type": "VaeDecode", "inputs": {"vae": ["4", 0], "latent": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "tiny"}},
    })
}

fn slow(steps: i64, step_ms: i64, seed: i64) -> Json {
    json!({
        "1": {"class_type": "TestSlowImage", "inputs": {"steps": steps, "step_ms": step_ms, "seed": seed}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "slow"}},
    })
}

// ------------------------------------------------------------------------- WebSocket

#[derive(Debug, Clone)]
enum Msg {
    Json(Json),
    Binary(Vec<u8>),
}

impl Msg {
    fn kind(&self) -> &str {
        match self {
            Msg::Json(j) => j["type"].as_str().unwrap_or(""),
            Msg::Binary(_) => "<binary>",
        }
    }

    fn data(&self) -> &Json {
        match self {
            Msg::Json(j) => &j["data"],
            Msg::Binary(_) => &Json::Null,
        }
    }
}

/// A WebSocket client on a thread of its own; messages arrive on a channel.
struct Ws {
    rx: mpsc::Receiver<Msg>,
    _thread: std::thread::JoinHandle<()>,
}

impl Ws {
    fn connect(server: &TestServer, query: &str, feature_flags: Option<Json>) -> Ws {
        Self::try_connect(server, query, feature_flags).expect("the WebSocket connects")
    }

    fn try_connect(
        server: &TestServer,
        query: &str,
        feature_flags: Option<Json>,
    ) -> Result<Ws, String> {
        use futures_util::{SinkExt, StreamExt};
        let url = format!("{}/ws?{query}", server.base.replace("http://", "ws://"));
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (mut socket, _) = match tokio_tungstenite::connect_async(url).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if let Some(flags) = feature_flags {
                    let m = json!({"type": "feature_flags", "data": flags}).to_string();
                    socket
                        .send(tokio_tungstenite::tungstenite::Message::Text(m.into()))
                        .await
                        .unwrap();
                }
                let _ = ready_tx.send(Ok(()));
                while let Some(Ok(m)) = socket.next().await {
                    let m = match m {
                        tokio_tungstenite::tungstenite::Message::Text(t) => {
                            Msg::Json(serde_json::from_str(t.as_str()).unwrap())
                        }
                        tokio_tungstenite::tungstenite::Message::Binary(b) => {
                            Msg::Binary(b.to_vec())
                        }
                        _ => continue,
                    };
                    if tx.send(m).is_err() {
                        break;
                    }
                }
            });
        });
        ready_rx.recv().map_err(|e| e.to_string())??;
        Ok(Ws {
            rx,
            _thread: thread,
        })
    }

    fn next(&self) -> Msg {
        self.rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a WebSocket message within a minute")
    }

    /// Messages up to and including `executing {node: null, prompt_id}`.
    fn until_done(&self, prompt_id: &str) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.next();
            let done = m.kind() == "executing"
                && m.data()["node"].is_null()
                && m.data()["prompt_id"] == prompt_id;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    fn until(&self, mut pred: impl FnMut(&Msg) -> bool) -> Msg {
        loop {
            let m = self.next();
            if pred(&m) {
                return m;
            }
        }
    }
}

fn kinds(msgs: &[Msg]) -> Vec<&str> {
    msgs.iter().map(Msg::kind).collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

// ------------------------------------------------------------------------- tests

#[test]
fn a_prompt_runs_with_comfyuis_messages_in_order_and_history_before_the_final_executing() {
    let server = TestServer::start();
    let ws = Ws::connect(&server, "clientId=client-a", None);
    let hello = ws.next();
    assert_eq!(hello.kind(), "status");
    assert_eq!(hello.data()["sid"], "client-a");
    assert!(hello.data()["status"]["exec_info"]["queue_remaining"].is_u64());

    let prompt_id = server.queue(tiny_flux(42, 4), json!({"client_id": "client-a"}));
    let msgs = ws.until_done(&prompt_id);
    // The history is there the moment the client hears the prompt finished.
    let history = server.get_json(&format!("/history/{prompt_id}"));
    let entry = &history[&prompt_id];
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    assert_eq!(entry["status"]["completed"], true);

    let k = kinds(&msgs);
    let pos = |kind: &str| {
        k.iter()
            .position(|x| *x == kind)
            .unwrap_or_else(|| panic!("no {kind} in {k:?}"))
    };
    assert!(pos("execution_start") < pos("execution_cached"));
    assert!(pos("execution_cached") < pos("executing"));
    assert!(pos("executing") < pos("progress"));
    assert!(pos("progress") < pos("executed"));
    assert!(pos("executed") < pos("execution_success"));
    assert_eq!(*k.last().unwrap(), "executing");
    let progress: Vec<&Json> = msgs
        .iter()
        .filter(|m| m.kind() == "progress")
        .map(Msg::data)
        .collect();
    // One per sampler step (after a 0/4 as the sampler starts).
    let values: Vec<u64> = progress
        .iter()
        .map(|p| p["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values, [0, 1, 2, 3, 4]);
    assert!(progress.iter().all(|p| p["max"] == 4));
    assert_eq!(progress[0]["node"], "6");
    assert_eq!(progress[0]["prompt_id"], prompt_id.as_str());
    assert!(k.contains(&"progress_state"));
    let executed = msgs.iter().find(|m| m.kind() == "executed").unwrap().data();
    assert_eq!(executed["node"], "8");
    let image = &executed["output"]["images"][0];
    assert_eq!(image["type"], "output");
    assert_eq!(image["subfolder"], "");
    let filename = image["filename"].as_str().unwrap().to_string();
    assert!(
        msgs.iter().all(|m| !matches!(m, Msg::Binary(_))),
        "no previews unless asked"
    );
    for m in &msgs {
        if m.kind() != "status" && m.kind() != "progress_state" {
            assert_eq!(m.data()["prompt_id"], prompt_id.as_str(), "{m:?}");
        }
    }

    // History: ComfyUI's entry shape.
    assert_eq!(
        entry["outputs"]["8"]["images"][0]["filename"],
        filename.as_str()
    );
    assert_eq!(entry["prompt"][1], prompt_id.as_str());
    assert_eq!(entry["prompt"][4], json!(["8"]));
    assert_eq!(entry["meta"]["8"]["node_id"], "8");
    let messages: Vec<&str> = entry["status"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[0].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["execution_start", "execution_cached", "execution_success"]
    );
    assert!(entry["status"]["messages"][0][1]["timestamp"].is_i64());

    // The file, through /view (and the annotated form).
    let r = server.get(&format!("/view?filename={filename}&type=output&subfolder="));
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().unwrap();
    assert_eq!(png_size(&bytes), (64, 64));
    let r = server.get(&format!(
        "/api/view?filename={}",
        urlencode(&format!("{filename} [output]"))
    ));
    assert_eq!(r.bytes().unwrap(), bytes);

    // The same prompt again: everything from the cache, no new file, same outputs.
    let again = server.queue(tiny_flux(42, 4), json!({"client_id": "client-a"}));
    let msgs = ws.until_done(&again);
    let cached = msgs
        .iter()
        .find(|m| m.kind() == "execution_cached")
        .unwrap()
        .data();
    assert_eq!(cached["nodes"].as_array().unwrap().len(), 8, "{cached}");
    assert!(!kinds(&msgs).contains(&"progress"));
    let entry = server.wait_history(&again);
    assert_eq!(
        entry["outputs"]["8"]["images"][0]["filename"],
        filename.as_str()
    );
    assert_eq!(server.output_pngs().len(), 1);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn history_is_sliced_deleted_and_cleared() {
    let server = TestServer::start();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let id = server.queue(slow(1, 0, i), json!({}));
            server.wait_history(&id);
            id
        })
        .collect();
    let all = server.get_json("/history");
    let keys: Vec<&String> = all.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3);
    // Oldest first, as ComfyUI's dict (the raw text keeps the order serde_json would sort).
    let text = server.get("/history").text().unwrap();
    let at = |id: &str| text.find(id).unwrap();
    assert!(at(&ids[0]) < at(&ids[1]) && at(&ids[1]) < at(&ids[2]));
    let last = server.get_json("/history?max_items=1");
    assert_eq!(
        last.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&ids[2]]
    );
    let second = server.get_json("/api/history?max_items=1&offset=1");
    assert_eq!(
        second.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&ids[1]]
    );
    assert_eq!(server.get_json("/history/not-a-prompt"), json!({}));
    assert_eq!(
        server.get("/history?max_items=lots").status(),
        StatusCode::BAD_REQUEST
    );

    assert_eq!(
        server
            .post("/history", &json!({"delete": [ids[0]]}))
            .status(),
        StatusCode::OK
    );
    assert_eq!(server.get_json("/history").as_object().unwrap().len(), 2);
    assert_eq!(
        server
            .post("/api/history", &json!({"clear": true}))
            .status(),
        StatusCode::OK
    );
    assert_eq!(server.get_json("/history"), json!({}));
}

#[test]
fn uploads_reuse_identical_bytes_and_rename_different_ones() {
    let server = TestServer::start();
    let upload = |name: &str, bytes: &[u8], fields: &[(&str, &str)]| -> Json {
        let mut form = multipart::Form::new().part(
            "image",
            multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        let r = server
            .http
            .post(server.url("/upload/image"))
            .multipart(form)
            .send()
            .unwrap();
        let status = r.status();
        let body: Json = r.json().unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    };
    let a = upload("cat.png", b"first", &[]);
    assert_eq!(
        a,
        json!({"name": "cat.png", "subfolder": "", "type": "input"})
    );
    assert_eq!(upload("cat.png", b"first", &[])["name"], "cat.png");
    assert_eq!(upload("cat.png", b"second", &[])["name"], "cat (1).png");
    assert_eq!(upload("cat.png", b"third", &[])["name"], "cat (2).png");
    assert_eq!(upload("cat.png", b"second", &[])["name"], "cat (1).png");
    assert_eq!(
        upload("cat.png", b"replaced", &[("overwrite", "true")])["name"],
        "cat.png"
    );
    let input = server.dir.path().join("input");
    assert_eq!(std::fs::read(input.join("cat.png")).unwrap(), b"replaced");
    assert_eq!(std::fs::read(input.join("cat (1).png")).unwrap(), b"second");
    let sub = upload(
        "dog.png",
        b"x",
        &[("subfolder", "pets/dogs"), ("type", "temp")],
    );
    assert_eq!(
        sub,
        json!({"name": "dog.png", "subfolder": "pets/dogs", "type": "temp"})
    );
    assert_eq!(
        server
            .get("/view?filename=dog.png&subfolder=pets/dogs&type=temp")
            .bytes()
            .unwrap()
            .as_ref(),
        b"x"
    );
    // No temp files left behind.
    assert!(std::fs::read_dir(&input)
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")));

    // Refused: escaping names and subfolders, an unknown type, no file.
    for (name, fields) in [
        ("../evil.png", vec![]),
        ("ok.png", vec![("subfolder", "../../etc")]),
        ("ok.png", vec![("subfolder", "/abs")]),
        ("ok.png", vec![("type", "models")]),
    ] {
        let mut form = multipart::Form::new().part(
            "image",
            multipart::Part::bytes(b"z".to_vec()).file_name(name.to_string()),
        );
        for (k, v) in &fields {
            form = form.text(k.to_string(), v.to_string());
        }
        let r = server
            .http
            .post(server.url("/upload/image"))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name} {fields:?}");
        let body: Json = r.json().unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 10,
            "{body}"
        );
    }
    let form = multipart::Form::new().text("subfolder", "x");
    let r = server
        .http
        .post(server.url("/upload/image"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn bad_prompts_get_comfyuis_400_shapes() {
    let server = TestServer::start();
    let check = |body: Json, kind: &str| -> Json {
        let r = server.post("/prompt", &body);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Json = r.json().unwrap();
        assert_eq!(answer["error"]["type"], kind, "{answer}");
        for field in ["message", "details", "extra_info"] {
            assert!(answer["error"].get(field).is_some(), "{answer}");
        }
        assert!(answer["node_errors"].is_object(), "{answer}");
        answer
    };
    check(json!({"client_id": "x"}), "no_prompt");
    check(
        json!({"prompt": slow(1, 0, 0), "prompt_id": "NOT-A-UUID"}),
        "invalid_prompt_id",
    );
    check(
        json!({"prompt": slow(1, 0, 0), "prompt_id": "2F1C5D3E-8B7A-4C1E-9F0A-123456789ABC"}),
        "invalid_prompt_id",
    );
    let unknown = check(
        json!({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}),
        "missing_node_type",
    );
    assert!(unknown["error"]["message"]
        .as_str()
        .unwrap()
        .contains("NoSuchNode"));
    check(
        json!({"prompt": {"1": {"class_type": "TestSlowImage", "inputs": {}}}}),
        "prompt_no_outputs",
    );
    let r = server
        .http
        .post(server.url("/prompt"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let answer: Json = r.json().unwrap();
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    // A given canonical id is kept, and a second POST with it queues nothing new.
    let id = "2f1c5d3e-8b7a-4c1e-9f0a-123456789abc";
    let first: Json = server
        .post(
            "/prompt",
            &json!({"prompt": slow(1, 0, 9), "prompt_id": id}),
        )
        .json()
        .unwrap();
    assert_eq!(first["prompt_id"], id);
    assert_eq!(first["node_errors"], json!({}));
    let again: Json = server
        .post(
            "/prompt",
            &json!({"prompt": slow(1, 0, 9), "prompt_id": id}),
        )
        .json()
        .unwrap();
    assert_eq!(again["number"], first["number"]);
    server.wait_history(id);
    assert_eq!(server.get_json("/history").as_object().unwrap().len(), 1);
}

#[test]
fn view_refuses_everything_outside_its_folder() {
    let server = TestServer::start();
    let out = server.dir.path().join("output");
    std::fs::write(out.join("ok.png"), b"fine").unwrap();
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("sub/deep.png"), b"deep").unwrap();
    let secret = server.dir.path().join("secret.txt");
    std::fs::write(&secret, b"top secret").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&secret, out.join("link.png")).unwrap();
        std::os::unix::fs::symlink(server.dir.path(), out.join("linkdir")).unwrap();
    }
    let status = |q: &str| server.get(&format!("/view?{q}")).status();
    assert_eq!(status("filename=ok.png"), StatusCode::OK);
    assert_eq!(status("filename=deep.png&subfolder=sub"), StatusCode::OK);
    assert_eq!(status("filename=../secret.txt"), StatusCode::BAD_REQUEST);
    assert_eq!(status("filename=..%2Fsecret.txt"), StatusCode::BAD_REQUEST);
    assert_eq!(status("filename=%2Fetc%2Fpasswd"), StatusCode::BAD_REQUEST);
    assert_eq!(
        status("filename=secret.txt&subfolder=.."),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("filename=secret.txt&subfolder=..%2F"),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("filename=secret.txt&subfolder=%2F"),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("filename=passwd&subfolder=/etc"),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("filename=secret.txt&subfolder=sub%2F..%2F.."),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("filename=ok.png&type=models"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(status("filename=missing.png"), StatusCode::NOT_FOUND);
    assert_eq!(status("filename=ok.png&type=input"), StatusCode::NOT_FOUND);
    #[cfg(unix)]
    {
        assert_eq!(status("filename=link.png"), StatusCode::FORBIDDEN);
        assert_eq!(
            status("filename=secret.txt&subfolder=linkdir"),
            StatusCode::FORBIDDEN
        );
    }
    let body = server.get("/view?filename=../secret.txt").text().unwrap();
    assert!(!body.contains("top secret"));
}

#[test]
fn a_token_guards_every_route_and_the_websocket() {
    let server = TestServer::start_with(|o| o.token = Some("s3cret".into()));
    for path in [
        "/prompt",
        "/api/prompt",
        "/queue",
        "/history",
        "/object_info",
        "/system_stats",
        "/api/jobs",
        "/view?filename=x.png",
    ] {
        let r = server.get(path);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    let r = server
        .http
        .post(server.url("/prompt"))
        .json(&json!({"prompt": slow(1, 0, 0)}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server
        .http
        .get(server.url("/prompt"))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server
        .http
        .get(server.url("/api/prompt"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The query token is for the WebSocket and /view only.
    assert_eq!(
        server.get("/prompt?token=s3cret").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.get("/view?filename=x.png&token=s3cret").status(),
        StatusCode::NOT_FOUND
    );

    assert!(Ws::try_connect(&server, "clientId=c", None).is_err());
    assert!(Ws::try_connect(&server, "clientId=c&token=nope", None).is_err());
    let ws = Ws::connect(&server, "clientId=c&token=s3cret", None);
    assert_eq!(ws.next().kind(), "status");

    // A browser signs in at `/?token=` (a wrong token is refused), gets an HttpOnly,
    // SameSite=Strict cookie and is sent back to the page; the cookie then opens every route.
    assert_eq!(
        server.get("/?token=nope").status(),
        StatusCode::UNAUTHORIZED
    );
    let no_redirects = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = no_redirects
        .get(server.url("/?token=s3cret"))
        .send()
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers()["location"], "./");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let port = server.handle.as_ref().unwrap().addr().port();
    let (pair, attributes) = cookie.split_once(';').unwrap();
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(
        name,
        format!("veetance_token_{port}"),
        "one cookie per port"
    );
    assert!(
        value.len() == 64 && !value.contains("s3cret"),
        "the token itself is never sent: {cookie}"
    );
    assert!(
        attributes.contains("HttpOnly") && attributes.contains("SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = |value: &str, origin: Option<&str>| {
        let mut request = no_redirects
            .post(server.url("/api/settings/Comfy.X"))
            .header("Cookie", format!("theme=dark; {name}={value}"))
            .body("1");
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request.send().unwrap().status()
    };
    let own = format!("http://127.0.0.1:{port}");
    assert_eq!(with_cookie(value, None), StatusCode::OK);
    assert_eq!(with_cookie(value, Some(&own)), StatusCode::OK);
    assert_eq!(with_cookie("nope", Some(&own)), StatusCode::UNAUTHORIZED);
    assert_eq!(
        with_cookie(value, Some("http://127.0.0.1:1")),
        StatusCode::FORBIDDEN,
        "another port's page (refused by the loopback Origin check first)"
    );
    // On a non-loopback name (allowed with a token), a page on another port of the same host
    // cannot use the cookie: the Origin check refuses it first, and the cookie would not count.
    let as_lan_host = |origin: &str| {
        no_redirects
            .get(server.url("/api/settings"))
            .header("Host", format!("gpu-box:{port}"))
            .header("Origin", origin)
            .header("Cookie", format!("veetance_token_{port}={value}"))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(
        as_lan_host(&format!("http://gpu-box:{port}")),
        StatusCode::OK
    );
    assert_eq!(as_lan_host("http://gpu-box:8080"), StatusCode::FORBIDDEN);
}

#[test]
fn a_cross_site_origin_is_refused_on_loopback() {
    let server = TestServer::start();
    let host = server.base.trim_start_matches("http://").to_string();
    let with_origin = |origin: &str| {
        server
            .http
            .post(server.url("/prompt"))
            .header("Origin", origin)
            .json(&json!({"prompt": slow(1, 0, 0)}))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(with_origin("https://evil.example"), StatusCode::FORBIDDEN);
    assert_eq!(with_origin("http://127.0.0.1:1"), StatusCode::FORBIDDEN);
    assert_eq!(with_origin("null"), StatusCode::FORBIDDEN);
    assert_eq!(with_origin(&format!("http://{host}")), StatusCode::OK);
    let r = server
        .http
        .get(server.url("/history"))
        .header("Origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[test]
fn oversized_bodies_and_prompts_are_refused_with_clear_messages() {
    let server = TestServer::start_with(|o| {
        o.limits = Limits {
            body_bytes: 4096,
            upload_bytes: 8192,
            prompt_nodes: 3,
            ..Limits::default()
        }
    });
    let big = json!({"prompt": slow(1, 0, 0), "extra_data": {"pad": "x".repeat(10_000)}});
    let r = server.post("/prompt", &big);
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: Json = r.json().unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096 bytes"),
        "{answer}"
    );

    let form = multipart::Form::new().part(
        "image",
        multipart::Part::bytes(vec![7u8; 20_000]).file_name("big.png"),
    );
    let r = server
        .http
        .post(server.url("/upload/image"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: Json = r.json().unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("8192 bytes"),
        "{answer}"
    );

    let mut many = slow(1, 0, 0);
    for i in 3..6 {
        many[i.to_string()] = json!({"class_type": "TestSlowImage", "inputs": {}});
    }
    let r = server.post("/prompt", &json!({"prompt": many}));
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let answer: Json = r.json().unwrap();
    assert_eq!(answer["error"]["type"], "prompt_too_large");
}

#[test]
fn interrupt_stops_only_the_running_prompt_and_the_server_goes_on() {
    let server = TestServer::start();
    let ws = Ws::connect(&server, "clientId=int", None);
    let long = server.queue(slow(100_000, 5, 1), json!({"client_id": "int"}));
    ws.until(|m| m.kind() == "progress");
    // Naming another prompt does nothing.
    let other = "0e7a1b9c-1111-4222-8333-444455556666";
    assert_eq!(
        server
            .post("/interrupt", &json!({"prompt_id": other}))
            .status(),
        StatusCode::OK
    );
    assert!(server.get_json("/queue")["queue_running"][0][1] == long.as_str());
    assert_eq!(
        server
            .post("/api/interrupt", &json!({"prompt_id": long}))
            .status(),
        StatusCode::OK
    );
    let msgs = ws.until_done(&long);
    let interrupted = msgs
        .iter()
        .find(|m| m.kind() == "execution_interrupted")
        .expect("interrupted");
    assert_eq!(interrupted.data()["node_id"], "1");
    assert_eq!(interrupted.data()["node_type"], "TestSlowImage");
    let entry = server.wait_history(&long);
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(entry["status"]["completed"], false);

    // The server, its engine and its cache go on: an empty-body interrupt with nothing
    // running is harmless, and the next prompt runs.
    let r = server.http.post(server.url("/interrupt")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let next = server.queue(slow(2, 0, 2), json!({"client_id": "int"}));
    let msgs = ws.until_done(&next);
    assert!(kinds(&msgs).contains(&"execution_success"));
}

#[test]
fn a_failing_node_is_an_execution_error_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let ws = Ws::connect(&server, "clientId=f", None);
    let bad = server.queue(
        json!({
            "1": {"class_type": "TestFailingImage", "inputs": {}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f"}},
        }),
        json!({"client_id": "f"}),
    );
    let msgs = ws.until_done(&bad);
    let error = msgs
        .iter()
        .find(|m| m.kind() == "execution_error")
        .expect("execution_error")
        .data();
    assert_eq!(error["node_id"], "1");
    assert_eq!(error["node_type"], "TestFailingImage");
    assert!(error["exception_message"]
        .as_str()
        .unwrap()
        .contains("boom"));
    for field in [
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
        "executed",
        "timestamp",
    ] {
        assert!(error.get(field).is_some(), "{field} in {error}");
    }
    let entry = server.wait_history(&bad);
    assert_eq!(entry["status"]["status_str"], "error");
    let good = server.queue(slow(1, 0, 3), json!({"client_id": "f"}));
    assert!(kinds(&ws.until_done(&good)).contains(&"execution_success"));
}

#[test]
fn the_queue_runs_by_number_and_front() {
    let server = TestServer::start();
    let blocker = server.queue(slow(100_000, 5, 10), json!({}));
    while server.get_json("/queue")["queue_running"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let a = server.queue(slow(1, 0, 11), json!({}));
    let b = server.queue(slow(1, 0, 12), json!({}));
    let c = server.queue(slow(1, 0, 13), json!({"front": true}));
    let d = server.queue(slow(1, 0, 14), json!({"number": -1000.5}));
    let e = server.queue(slow(1, 0, 15), json!({"number": 1000}));
    let queue = server.get_json("/queue");
    let pending: Vec<&str> = queue["queue_pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[1].as_str().unwrap())
        .collect();
    assert_eq!(
        pending,
        [d.as_str(), c.as_str(), a.as_str(), b.as_str(), e.as_str()]
    );
    let item = &queue["queue_pending"][0];
    assert_eq!(
        item.as_array().unwrap().len(),
        5,
        "[number, prompt_id, prompt, extra_data, outputs]"
    );
    assert_eq!(item[0], json!(-1000.5));
    assert_eq!(item[4], json!(["2"]));
    assert!(item[3]["create_time"].is_i64());
    assert_eq!(
        server.get_json("/prompt")["exec_info"]["queue_remaining"],
        6
    );

    // Delete one, then let the rest run: the history's order is the run order.
    assert_eq!(
        server.post("/queue", &json!({"delete": [b]})).status(),
        StatusCode::OK
    );
    assert_eq!(
        server.post("/interrupt", &json!({})).status(),
        StatusCode::OK
    );
    server.wait_history(&e);
    let text = server.get("/history").text().unwrap();
    let at = |id: &str| text.find(id).unwrap();
    assert!(at(&blocker) < at(&d) && at(&d) < at(&c) && at(&c) < at(&a) && at(&a) < at(&e));
    assert!(!text.contains(&b));

    // Clear: f runs (wait for the worker to take it), g waits and is cleared.
    let f = server.queue(slow(100_000, 5, 16), json!({}));
    while server.get_json("/queue")["queue_running"][0][1] != f.as_str() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let g = server.queue(slow(1, 0, 17), json!({}));
    assert_eq!(
        server.post("/queue", &json!({"clear": true})).status(),
        StatusCode::OK
    );
    assert!(server.get_json("/queue")["queue_pending"]
        .as_array()
        .unwrap()
        .is_empty());
    server.post("/interrupt", &json!({"prompt_id": f}));
    server.wait_history(&f);
    assert_eq!(server.get_json(&format!("/history/{g}")), json!({}));
}

#[test]
fn object_info_has_comfyuis_entry_shape() {
    let server = TestServer::start();
    let info = server.get_json("/object_info");
    let entries = info.as_object().unwrap();
    assert!(!entries.is_empty(), "object_info lists the node types");
    for (class, entry) in entries {
        for key in [
            "input",
            "output",
            "output_is_list",
            "output_name",
            "name",
            "display_name",
            "description",
            "category",
            "output_node",
        ] {
            assert!(entry.get(key).is_some(), "{class} lacks {key}");
        }
    }
    let one = server.get_json("/api/object_info/SaveImage");
    assert_eq!(one.as_object().unwrap().len(), 1);
    assert!(one["SaveImage"]["output_node"].as_bool().unwrap());
    assert_eq!(server.get_json("/object_info/NoSuchNode"), json!({}));
}

#[test]
fn the_jobs_api_lists_filters_pages_and_cancels() {
    let server = TestServer::start();
    let done = server.queue(slow(1, 0, 20), json!({}));
    server.wait_history(&done);
    let failed = server.queue(
        json!({
            "1": {"class_type": "TestFailingImage", "inputs": {}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f"}},
        }),
        json!({}),
    );
    server.wait_history(&failed);
    let running = server.queue(slow(100_000, 5, 21), json!({}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = server.get_json(&format!("/api/jobs/{running}"));
        if job["status"] == "in_progress" && job["progress"]["value"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(job["progress"]["node"], "1");
            assert_eq!(
                job["workflow"]["prompt"]["1"]["class_type"],
                "TestSlowImage"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pending = server.queue(slow(1, 0, 22), json!({}));

    let list = server.get_json("/api/jobs");
    assert_eq!(list["pagination"]["total"], 4);
    let statuses: Vec<(&str, &str)> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_str().unwrap(), j["status"].as_str().unwrap()))
        .collect();
    for (id, status) in [
        (&done, "completed"),
        (&failed, "failed"),
        (&running, "in_progress"),
        (&pending, "pending"),
    ] {
        assert!(statuses.contains(&(id.as_str(), status)), "{statuses:?}");
    }
    let completed = server.get_json("/api/jobs?status=completed");
    assert_eq!(completed["jobs"].as_array().unwrap().len(), 1);
    let job = &completed["jobs"][0];
    assert_eq!(job["outputs_count"], 1);
    assert_eq!(job["preview_output"]["nodeId"], "2");
    assert_eq!(job["preview_output"]["mediaType"], "images");
    assert!(
        job["execution_start_time"].as_i64().unwrap()
            <= job["execution_end_time"].as_i64().unwrap()
    );
    let failed_job = &server.get_json("/api/jobs?status=failed")["jobs"][0];
    assert!(failed_job["execution_error"]["exception_message"]
        .as_str()
        .unwrap()
        .contains("boom"));
    let page = server.get_json("/api/jobs?limit=2&offset=1&sort_order=asc");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(
        page["pagination"],
        json!({"offset": 1, "limit": 2, "total": 4, "has_more": true})
    );
    assert_eq!(
        server.get("/api/jobs?status=bogus").status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.get("/api/jobs?limit=0").status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.get("/api/jobs?sort_by=name").status(),
        StatusCode::BAD_REQUEST
    );

    let one = server.get_json(&format!("/api/jobs/{done}"));
    assert_eq!(one["status"], "completed");
    assert_eq!(one["outputs"]["2"]["images"].as_array().unwrap().len(), 1);
    assert_eq!(one["execution_status"]["status_str"], "success");
    let r = server.get("/api/jobs/0e7a1b9c-1111-4222-8333-444455556666");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let cancel = |id: &str| -> bool {
        server
            .post(&format!("/api/jobs/{id}/cancel"), &json!({}))
            .json::<Json>()
            .unwrap()["cancelled"]
            .as_bool()
            .unwrap()
    };
    assert!(cancel(&pending));
    assert!(!cancel(&done));
    let r = server.post("/api/jobs/cancel", &json!({"job_ids": ["nope"]}));
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r: Json = server
        .post("/api/jobs/cancel", &json!({"job_ids": [running, done]}))
        .json()
        .unwrap();
    assert_eq!(r["cancelled"], true);
    let entry = server.wait_history(&running);
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(
        server.get_json(&format!("/api/jobs/{running}"))["status"],
        "cancelled"
    );
    assert_eq!(
        server.get_json("/api/jobs?status=pending")["jobs"],
        json!([])
    );
}

#[test]
fn the_openai_route_runs_the_default_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = dir.path().join("default.ron");
    let text = std::fs::read_to_string(repo().join("workflows/flux2-klein-tiny.ron"))
        .unwrap()
        .replace("assets/tiny-models/diffusion_models/", "")
        .replace("assets/tiny-models/text_encoders/", "")
        .replace("assets/tiny-models/vae/", "");
    std::fs::write(&workflow, text).unwrap();
    let server = TestServer::start_with(|o| o.default_workflow = Some(workflow.clone()));

    let r = server.post(
        "/v1/images/generations",
        &json!({"prompt": "a hare in the snow", "n": 2, "size": "64x48", "seed": 5}),
    );
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Json = r.json().unwrap();
    assert!(answer["created"].is_i64());
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    use base64::Engine as _;
    let images: Vec<Vec<u8>> = data
        .iter()
        .map(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d["b64_json"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(png_size(&images[0]), (64, 48));
    assert_ne!(images[0], images[1], "seeds 5 and 6");
    // The prompt text reached the workflow's TextEncode.
    let history = server.get_json("/history");
    let prompts: Vec<&Json> = history
        .as_object()
        .unwrap()
        .values()
        .map(|e| &e["prompt"][2])
        .collect();
    assert!(prompts
        .iter()
        .all(|p| p["prompt"]["inputs"]["text"] == "a hare in the snow"));
    assert!(prompts.iter().any(|p| p["sampler"]["inputs"]["seed"] == 6));

    let r: Json = server
        .post(
            "/v1/images/generations",
            &json!({"prompt": "x", "size": "64x64", "response_format": "url", "seed": 1}),
        )
        .json()
        .unwrap();
    let url = r["data"][0]["url"].as_str().unwrap();
    let bytes = server.http.get(url).send().unwrap().bytes().unwrap();
    assert_eq!(png_size(&bytes), (64, 64));

    for (body, param) in [
        (json!({"n": 1}), "prompt"),
        (json!({"prompt": "x", "size": "1000x1000"}), "size"),
        (json!({"prompt": "x", "size": "big"}), "size"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (
            json!({"prompt": "x", "response_format": "gif"}),
            "response_format",
        ),
    ] {
        let r = server.post("/v1/images/generations", &body);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let e: Json = r.json().unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().len() > 5);
    }
}

#[test]
fn an_openai_request_whose_prompt_is_deleted_gets_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = dir.path().join("default.ron");
    let text = std::fs::read_to_string(repo().join("workflows/flux2-klein-tiny.ron"))
        .unwrap()
        .replace("assets/tiny-models/diffusion_models/", "")
        .replace("assets/tiny-models/text_encoders/", "")
        .replace("assets/tiny-models/vae/", "");
    std::fs::write(&workflow, text).unwrap();
    let server = TestServer::start_with(|o| o.default_workflow = Some(workflow.clone()));
    let blocker = server.queue(slow(100_000, 5, 1), json!({}));
    while server.get_json("/queue")["queue_running"][0][1] != blocker.as_str() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let url = server.url("/v1/images/generations");
    let waiting = std::thread::spawn(move || {
        let r = Client::new()
            .post(url)
            .json(&json!({"prompt": "a hare", "size": "64x64"}))
            .send()
            .unwrap();
        (r.status(), r.json::<Json>().unwrap())
    });
    while server.get_json("/queue")["queue_pending"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        server.post("/queue", &json!({"clear": true})).status(),
        StatusCode::OK
    );
    let (status, answer) = waiting.join().unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer["error"]["type"], "server_error");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("left the queue"),
        "{answer}"
    );
    server.post("/interrupt", &json!({}));
}

#[test]
fn previews_are_sent_only_when_asked_in_the_frame_the_client_reads() {
    let server = TestServer::start();
    let plain = Ws::connect(&server, "clientId=p1", None);
    let meta = Ws::connect(
        &server,
        "clientId=p2",
        Some(json!({"supports_preview_metadata": true})),
    );
    assert_eq!(plain.next().kind(), "status");
    assert_eq!(meta.next().kind(), "status");
    let flags = meta.next();
    assert_eq!(flags.kind(), "feature_flags");
    assert_eq!(flags.data()["supports_preview_metadata"], true);

    let id = server.queue(
        tiny_flux(1, 2),
        json!({"client_id": "p1", "extra_data": {"preview_method": "auto"}}),
    );
    let msgs = plain.until_done(&id);
    let frames: Vec<&Vec<u8>> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Binary(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 2, "one preview per step");
    assert_eq!(&frames[0][..8], &[0, 0, 0, 1, 0, 0, 0, 2], "type 1, PNG");
    png_size(&frames[0][8..]);

    let id = server.queue(
        tiny_flux(2, 2),
        json!({"client_id": "p2", "extra_data": {"preview_method": "auto"}}),
    );
    let msgs = meta.until_done(&id);
    let frame = msgs
        .iter()
        .find_map(|m| match m {
            Msg::Binary(b) => Some(b.clone()),
            _ => None,
        })
        .expect("a preview");
    assert_eq!(&frame[..4], &[0, 0, 0, 4]);
    let len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&frame[8..8 + len]).unwrap();
    assert_eq!(header["prompt_id"], id.as_str());
    assert_eq!(header["node_id"], "6");
    assert_eq!(header["image_type"], "image/png");
    png_size(&frame[8 + len..]);

    // "none" and the server's default (none) send no frames.
    let id = server.queue(
        tiny_flux(3, 2),
        json!({"client_id": "p1", "extra_data": {"preview_method": "none"}}),
    );
    assert!(plain
        .until_done(&id)
        .iter()
        .all(|m| !matches!(m, Msg::Binary(_))));
    let id = server.queue(tiny_flux(4, 2), json!({"client_id": "p1"}));
    assert!(plain
        .until_done(&id)
        .iter()
        .all(|m| !matches!(m, Msg::Binary(_))));
    // Another client's prompt sends it nothing but status.
    let id = server.queue(tiny_flux(5, 2), json!({"client_id": "p2"}));
    meta.until_done(&id);
    std::thread::sleep(Duration::from_millis(100));
    while let Ok(m) = plain.rx.try_recv() {
        assert_eq!(m.kind(), "status", "{m:?}");
    }
}

#[test]
fn free_empties_the_cache_between_prompts() {
    let server = TestServer::start();
    let ws = Ws::connect(&server, "clientId=fr", None);
    let first = server.queue(tiny_flux(7, 2), json!({"client_id": "fr"}));
    ws.until_done(&first);
    let second = server.queue(tiny_flux(8, 2), json!({"client_id": "fr"}));
    let msgs = ws.until_done(&second);
    let cached = msgs
        .iter()
        .find(|m| m.kind() == "execution_cached")
        .unwrap()
        .data()["nodes"]
        .clone();
    assert!(
        cached.as_array().unwrap().contains(&json!("1")),
        "the model stays loaded: {cached}"
    );
    assert_eq!(
        server
            .post(
                "/free",
                &json!({"unload_models": true, "free_memory": true})
            )
            .status(),
        StatusCode::OK
    );
    let third = server.queue(tiny_flux(9, 2), json!({"client_id": "fr"}));
    let msgs = ws.until_done(&third);
    let cached = msgs
        .iter()
        .find(|m| m.kind() == "execution_cached")
        .unwrap()
        .data()["nodes"]
        .clone();
    assert_eq!(cached, json!([]), "after /free everything loads again");
}

#[test]
fn stats_features_and_model_listings() {
    let server = TestServer::start();
    let stats = server.get_json("/system_stats");
    for key in [
        "os",
        "ram_total",
        "ram_free",
        "comfyui_version",
        "python_version",
        "pytorch_version",
        "embedded_python",
        "argv",
    ] {
        assert!(stats["system"].get(key).is_some(), "system.{key}");
    }
    #[cfg(target_os = "linux")]
    assert!(
        stats["system"]["ram_total"].as_u64().unwrap()
            > stats["system"]["ram_free"].as_u64().unwrap() / 2
    );
    let device = &stats["devices"][0];
    for key in [
        "name",
        "type",
        "index",
        "vram_total",
        "vram_free",
        "torch_vram_total",
        "torch_vram_free",
    ] {
        assert!(device.get(key).is_some(), "devices[0].{key}");
    }
    assert_eq!(server.get_json("/embeddings"), json!([]));
    assert_eq!(server.get_json("/api/extensions"), json!([]));
    let features = server.get_json("/features");
    assert_eq!(features["supports_preview_metadata"], true);
    assert!(features["max_upload_size"].as_u64().unwrap() > 0);
    let folders = server.get_json("/models");
    assert!(folders
        .as_array()
        .unwrap()
        .contains(&json!("diffusion_models")));
    assert_eq!(
        server.get_json("/models/diffusion_models"),
        json!(["flux2-klein-tiny.safetensors"])
    );
    assert!(server
        .get_json("/api/models/vae")
        .as_array()
        .unwrap()
        .contains(&json!("flux2-vae-tiny")));
    assert_eq!(server.get("/models/nope").status(), StatusCode::NOT_FOUND);
    assert_eq!(server.get("/no/such/route").status(), StatusCode::NOT_FOUND);
    assert_eq!(
        server.get_json("/api/prompt")["exec_info"]["queue_remaining"],
        0
    );
}

#[test]
fn memory_a_prompt_cannot_have_fails_with_a_named_error_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let ws = Ws::connect(&server, "clientId=h", None);
    let save = |node: Json| {
        json!({
            "1": node,
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "m"}},
        })
    };
    // Host memory: refused before anything runs.
    let huge = server.queue(
        save(
            json!({"class_type": "TestHugeImage", "inputs": {"width": 1 << 22, "height": 1 << 22}}),
        ),
        json!({"client_id": "h"}),
    );
    let msgs = ws.until_done(&huge);
    let e = msgs
        .iter()
        .find(|m| m.kind() == "execution_error")
        .expect("execution_error")
        .data();
    assert_eq!(e["exception_type"], "OutOfMemoryError");
    assert_eq!(e["node_id"], "1");
    let message = e["exception_message"].as_str().unwrap();
    assert!(
        message.contains("4194304×4194304") && message.contains("host memory"),
        "{message}"
    );
    assert!(
        !kinds(&msgs).contains(&"executing")
            || msgs
                .iter()
                .all(|m| m.kind() != "executing" || m.data()["node"].is_null())
    );
    // The device: the engine's out-of-memory error, named.
    let oom = server.queue(
        save(json!({"class_type": "TestOomImage", "inputs": {}})),
        json!({"client_id": "h"}),
    );
    let msgs = ws.until_done(&oom);
    let e = msgs
        .iter()
        .find(|m| m.kind() == "execution_error")
        .expect("execution_error")
        .data();
    assert_eq!(e["exception_type"], "OutOfMemoryError");
    assert!(
        e["exception_message"]
            .as_str()
            .unwrap()
            .contains("ran out of device memory"),
        "{e}"
    );
    // And the server goes on.
    let ok = server.queue(slow(1, 0, 1), json!({"client_id": "h"}));
    assert!(kinds(&ws.until_done(&ok)).contains(&"execution_success"));
}

#[test]
fn a_websocket_client_that_stops_reading_is_dropped_and_never_stalls_the_run() {
    use futures_util::StreamExt;
    let server = TestServer::start_with(|o| {
        o.limits.ws_client = veetance_server::ClientLimits {
            messages: 64,
            bytes: 64 << 10,
        }
    });
    let follower = Ws::connect(&server, "clientId=follower", None);
    // The slow client connects and then reads nothing while its prompt floods it.
    let url = format!(
        "{}/ws?clientId=sloth",
        server.base.replace("http://", "ws://")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut socket, _) = rt.block_on(tokio_tungstenite::connect_async(url)).unwrap();
    let started = Instant::now();
    let flood = server.queue(slow(200_000, 0, 1), json!({"client_id": "sloth"}));
    server.wait_history(&flood);
    let took = started.elapsed();
    // 400,000 messages of which the client read none: the run did not wait for it.
    assert!(took < Duration::from_secs(60), "{took:?}");
    // It got a bounded part of them, then the server closed it as too slow.
    let (received, close) = rt.block_on(async {
        let mut n = 0usize;
        let mut close = None;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            match m {
                Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                    close = frame;
                    break;
                }
                Ok(_) => n += 1,
                Err(_) => break,
            }
        }
        (n, close)
    });
    assert!(
        received < 300_000,
        "{received} messages buffered for a client that did not read"
    );
    if let Some(frame) = close {
        assert_eq!(u16::from(frame.code), 1008);
    }
    // The other client saw the queue move on, and the server serves it still.
    let ok = server.queue(slow(1, 0, 2), json!({"client_id": "follower"}));
    assert!(kinds(&follower.until_done(&ok)).contains(&"execution_success"));
}

// ------------------------------------------------------------------------- ComfyUI's classes

/// A models folder with the tiny models under the file names of ComfyUI's klein templates.
#[cfg(unix)]
fn template_models(dir: &Path) {
    use std::os::unix::fs::symlink;
    let tiny = repo().join("assets/tiny-models");
    for sub in ["diffusion_models", "text_encoders", "vae"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    symlink(
        tiny.join("diffusion_models/flux2-klein-tiny.safetensors"),
        dir.join("diffusion_models/flux-2-klein-4b.safetensors"),
    )
    .unwrap();
    for (from, to) in [
        ("qwen3-tiny.safetensors", "qwen_3_4b.safetensors"),
        ("qwen3-tiny.tokenizer.json", "qwen_3_4b.tokenizer.json"),
        ("qwen3-tiny.config.json", "qwen_3_4b.config.json"),
    ] {
        symlink(
            tiny.join("text_encoders").join(from),
            dir.join("text_encoders").join(to),
        )
        .unwrap();
    }
    symlink(
        tiny.join("vae/flux2-vae-tiny"),
        dir.join("vae/flux2-vae.safetensors"),
    )
    .unwrap();
}

/// ComfyUI's distilled klein 4B text-to-image template in API form (ids as the frontend
/// flattens its subgraph), at 64×64.
fn klein_api_prompt(seed: i64) -> Json {
    json!({
        "76": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a red fox sitting in the snow at dawn"}},
        "75:66": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors", "weight_dtype": "default"}},
        "75:62": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "flux2", "device": "default"}},
        "75:72": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "75:74": {"class_type": "CLIPTextEncode", "inputs": {"text": ["76", 0], "clip": ["75:62", 0]}},
        "75:67": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["75:74", 0]}},
        "75:63": {"class_type": "CFGGuider", "inputs": {"cfg": 1, "model": ["75:66", 0], "positive": ["75:74", 0], "negative": ["75:67", 0]}},
        "75:73": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "75:61": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "75:68": {"class_type": "PrimitiveInt", "inputs": {"value": 64}},
        "75:69": {"class_type": "PrimitiveInt", "inputs": {"value": 64}},
        "75:71": {"class_type": "Flux2Scheduler", "inputs": {"steps": 4, "width": ["75:68", 0], "height": ["75:69", 0]}},
        "75:70": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": ["75:68", 0], "height": ["75:69", 0], "batch_size": 1}},
        "75:64": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["75:73", 0], "guider": ["75:63", 0], "sampler": ["75:61", 0], "sigmas": ["75:71", 0], "latent_image": ["75:70", 0]}},
        "75:65": {"class_type": "VAEDecode", "inputs": {"samples": ["75:64", 0], "vae": ["75:72", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux2-Klein", "images": ["75:65", 0]}},
    })
}

/// The text chunks of a PNG.
fn png_texts(bytes: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = &bytes[at + 8..at + 8 + len];
        if kind == b"tEXt" {
            if let Some(nul) = data.iter().position(|b| *b == 0) {
                out.push((
                    String::from_utf8_lossy(&data[..nul]).into_owned(),
                    String::from_utf8_lossy(&data[nul + 1..]).into_owned(),
                ));
            }
        }
        at += 12 + len;
    }
    out
}

/// What `script_examples/websockets_api_example.py` does, against ComfyUI's own classes:
/// connect with a client id, queue, wait for `executing` with `node: null`, read the history,
/// download every image.
#[cfg(unix)]
#[test]
fn comfyuis_klein_template_runs_as_the_websocket_example_drives_it() {
    let models = tempfile::tempdir().unwrap();
    template_models(models.path());
    let default = models.path().join("klein.json");
    std::fs::write(&default, klein_api_prompt(1).to_string()).unwrap();
    let server = TestServer::start_with(|o| {
        o.models_dir = models.path().to_path_buf();
        o.default_workflow = Some(default.clone());
    });
    let client_id = uuid::Uuid::new_v4().to_string();
    let ws = Ws::connect(&server, &format!("clientId={client_id}"), None);
    let workflow = json!({"id": "wf-1", "nodes": [], "links": []});
    let prompt_id = server.queue(
        klein_api_prompt(42),
        json!({"client_id": client_id, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}),
    );
    let msgs = ws.until_done(&prompt_id);
    assert!(
        kinds(&msgs).contains(&"execution_success"),
        "{:?}",
        kinds(&msgs)
    );
    let steps = msgs
        .iter()
        .filter(|m| {
            m.kind() == "progress"
                && m.data()["node"] == "75:64"
                && m.data()["value"].as_u64() > Some(0)
        })
        .count();
    assert_eq!(steps, 4, "a progress per SamplerCustomAdvanced step");
    let history = server.get_json(&format!("/history/{prompt_id}"));
    let images = history[&prompt_id]["outputs"]["9"]["images"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(images.len(), 1);
    for image in &images {
        let q = format!(
            "/view?filename={}&subfolder={}&type={}",
            urlencode(image["filename"].as_str().unwrap()),
            urlencode(image["subfolder"].as_str().unwrap()),
            image["type"].as_str().unwrap()
        );
        let bytes = server.get(&q).bytes().unwrap();
        assert_eq!(png_size(&bytes), (64, 64));
        // ComfyUI's text chunks: the API prompt and each extra_pnginfo entry.
        let texts = png_texts(&bytes);
        let chunk = |key: &str| -> Json {
            serde_json::from_str(
                &texts
                    .iter()
                    .find(|(k, _)| k == key)
                    .unwrap_or_else(|| panic!("no {key} chunk in {texts:?}"))
                    .1,
            )
            .unwrap()
        };
        assert_eq!(chunk("prompt"), klein_api_prompt(42));
        assert_eq!(chunk("workflow"), workflow);
    }
    assert_eq!(
        server.get_json("/api/jobs?workflow_id=wf-1")["jobs"][0]["id"],
        prompt_id.as_str()
    );

    // The same template through the OpenAI route: the prompt goes into the primitive that feeds
    // CLIPTextEncode, the size into both PrimitiveInts, the seed into RandomNoise.
    let r = server.post(
        "/v1/images/generations",
        &json!({"prompt": "a hare", "size": "32x48", "seed": 3}),
    );
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Json = r.json().unwrap();
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(answer["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!(png_size(&png), (32, 48));
    let texts = png_texts(&png);
    let prompt: Json =
        serde_json::from_str(&texts.iter().find(|(k, _)| k == "prompt").unwrap().1).unwrap();
    assert_eq!(prompt["76"]["inputs"]["value"], "a hare");
    assert_eq!(prompt["75:68"]["inputs"]["value"], 32);
    assert_eq!(prompt["75:69"]["inputs"]["value"], 48);
    assert_eq!(prompt["75:73"]["inputs"]["noise_seed"], 3);
}

/// A UI workflow (the JSON ComfyUI saves) posted to /prompt runs as the API prompt ComfyUI's
/// frontend would queue for it, and its PNG carries the workflow as the frontend's prompt would.
#[test]
fn a_ui_workflow_posted_to_prompt_runs_as_its_api_prompt() {
    let server = TestServer::start();
    let workflow = json!({
        "version": 0.4,
        "nodes": [
            {"id": 1, "type": "TestSlowImage", "mode": 0, "inputs": [],
             "outputs": [{"name": "image", "type": "IMAGE", "links": [1]}],
             "widgets_values": [2, 0, 5]},
            {"id": 2, "type": "SaveImage", "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
             "widgets_values": ["from-ui"]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    });
    let prompt_id = server.queue(workflow.clone(), json!({}));
    let entry = server.wait_history(&prompt_id);
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    let prompt = &entry["prompt"][2];
    assert_eq!(prompt["1"]["class_type"], "TestSlowImage", "{prompt}");
    assert_eq!(prompt["1"]["inputs"]["seed"], 5, "{prompt}");
    assert_eq!(prompt["2"]["inputs"]["images"], json!(["1", 0]), "{prompt}");
    assert_eq!(
        prompt["2"]["inputs"]["filename_prefix"], "from-ui",
        "{prompt}"
    );
    let image = &entry["outputs"]["2"]["images"][0];
    let bytes = server
        .get(&format!(
            "/view?filename={}&subfolder={}&type=output",
            urlencode(image["filename"].as_str().unwrap()),
            urlencode(image["subfolder"].as_str().unwrap()),
        ))
        .bytes()
        .unwrap();
    let texts = png_texts(&bytes);
    let chunk = |key: &str| -> Json {
        let (_, text) = texts.iter().find(|(k, _)| k == key).unwrap();
        serde_json::from_str(text).unwrap()
    };
    assert_eq!(chunk("workflow"), workflow);
    assert_eq!(&chunk("prompt"), prompt);
}

/// `comfy-api-simplified` queues first and connects after: a prompt that finished meanwhile must
/// still reach it with its final `executing`.
#[test]
fn a_client_that_connects_after_its_prompt_finished_still_hears_it_finish() {
    let server = TestServer::start();
    let client_id = uuid::Uuid::new_v4().to_string();
    let prompt_id = server.queue(slow(3, 0, 1), json!({"client_id": client_id}));
    server.wait_history(&prompt_id);
    let ws = Ws::connect(&server, &format!("clientId={client_id}"), None);
    assert_eq!(ws.next().kind(), "status");
    let msgs = ws.until_done(&prompt_id);
    let k = kinds(&msgs);
    assert_eq!(k.first(), Some(&"execution_start"), "{k:?}");
    assert!(
        k.contains(&"executed") && k.contains(&"execution_success"),
        "{k:?}"
    );
    assert!(
        !k.contains(&"progress"),
        "progress is not kept for absent clients: {k:?}"
    );
}

// ------------------------------------------------------------------------- the web frontend's routes

fn post_bytes(server: &TestServer, path: &str, body: &'static [u8]) -> reqwest::blocking::Response {
    server
        .http
        .post(server.url(path))
        .body(body)
        .send()
        .unwrap()
}

#[test]
fn settings_live_in_the_user_folder_and_survive_a_restart() {
    let users = tempfile::tempdir().unwrap();
    let user_dir = users.path().to_path_buf();
    {
        let server = TestServer::start_with(|o| o.user_dir = user_dir.clone());
        let who = server.get_json("/api/users");
        assert_eq!(who["storage"], "server");
        assert_eq!(server.get_json("/api/settings"), json!({}));
        let r = post_bytes(&server, "/api/settings/Comfy.EnableTooltips", b"false");
        assert_eq!(r.status(), StatusCode::OK);
        let r = server.post("/api/settings", &json!({"a.b": 1, "c": {"d": "e"}}));
        assert_eq!(r.status(), StatusCode::OK);
        let r = post_bytes(&server, "/api/settings/x", b"{not json");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = post_bytes(&server, "/api/settings", b"[1, 2]");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(server.get_json("/api/settings/a.b"), json!(1));
        assert_eq!(server.get_json("/settings/missing"), Json::Null);
    }
    let server = TestServer::start_with(|o| o.user_dir = user_dir.clone());
    assert_eq!(
        server.get_json("/api/settings"),
        json!({"Comfy.EnableTooltips": false, "a.b": 1, "c": {"d": "e"}})
    );
    assert_eq!(server.get_json("/api/users")["migrated"], true);
    let file = user_dir.join("default/comfy.settings.json");
    assert!(file.is_file(), "settings are kept in ComfyUI's file");
    // A damaged file reads as no settings (and is replaced at the next save), never a 500.
    std::fs::write(&file, b"{\"half\": ").unwrap();
    assert_eq!(server.get_json("/api/settings"), json!({}));
    let r = post_bytes(&server, "/api/settings/k", b"2");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(server.get_json("/api/settings"), json!({"k": 2}));
    assert_eq!(
        std::fs::read(user_dir.join("default/comfy.settings.json.damaged")).unwrap(),
        b"{\"half\": ",
        "the damaged file is set aside, not lost"
    );
}

#[test]
fn userdata_saves_lists_moves_and_deletes_inside_the_user_folder() {
    let server = TestServer::start();
    // Nothing saved yet: an empty list, not an error.
    assert_eq!(
        server.get_json("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true"),
        json!([])
    );
    assert_eq!(
        server.get("/api/userdata").status(),
        StatusCode::BAD_REQUEST,
        "dir is required"
    );
    let saved = post_bytes(
        &server,
        "/api/userdata/workflows%2Fmy%20flow.json?overwrite=false&full_info=true",
        b"{\"nodes\": []}",
    );
    assert_eq!(saved.status(), StatusCode::OK);
    let info: Json = saved.json().unwrap();
    assert_eq!(info["path"], "workflows/my flow.json");
    assert_eq!(info["size"], 13);
    assert!(info["modified"].as_f64().unwrap() > 1.0e9);
    // overwrite=false does not replace.
    let again = post_bytes(
        &server,
        "/api/userdata/workflows%2Fmy%20flow.json?overwrite=false",
        b"other",
    );
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let r = post_bytes(&server, "/api/userdata/workflows%2Fsub%2Fb.json", b"{}");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Json>().unwrap(), json!("workflows/sub/b.json"));

    let body = server.get("/api/userdata/workflows%2Fmy%20flow.json");
    assert_eq!(body.status(), StatusCode::OK);
    assert_eq!(body.text().unwrap(), "{\"nodes\": []}");
    let listed = server.get_json("/api/userdata?dir=workflows&recurse=true&full_info=true");
    let paths: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["my flow.json", "sub/b.json"]);
    // The frontend's bookmarks file is hidden (never listed as a workflow); a name with a colon
    // saves, as in ComfyUI on Linux; a move onto a taken name with overwrite=false is refused.
    let r = post_bytes(
        &server,
        "/api/userdata/workflows%2F.index.json",
        b"{\"favorites\":[]}",
    );
    assert_eq!(r.status(), StatusCode::OK);
    #[cfg(not(windows))]
    {
        let r = post_bytes(
            &server,
            "/api/userdata/workflows%2FFlow%3A%20v2.json",
            b"{}",
        );
        assert_eq!(r.status(), StatusCode::OK);
        let r = server
            .http
            .post(server.url(
                "/api/userdata/workflows%2FFlow%3A%20v2.json/move/workflows%2Fsub%2Fb.json?overwrite=false",
            ))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let gone = server
            .http
            .delete(server.url("/api/userdata/workflows%2FFlow%3A%20v2.json"))
            .send()
            .unwrap();
        assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    }
    let listed = server.get_json("/api/userdata?dir=workflows&recurse=true");
    assert_eq!(listed, json!(["my flow.json", "sub/b.json"]));
    assert_eq!(
        server.get_json("/api/userdata?dir=workflows&recurse=true&split=true"),
        json!([
            ["my flow.json", "my flow.json"],
            ["sub/b.json", "sub", "b.json"]
        ])
    );
    assert_eq!(
        server.get_json("/api/userdata?dir=workflows"),
        json!(["my flow.json"]),
        "without recurse only the folder itself"
    );

    let moved = server
        .http
        .post(server.url(
            "/api/userdata/workflows%2Fmy%20flow.json/move/workflows%2Frenamed.json?full_info=true",
        ))
        .send()
        .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    assert_eq!(
        moved.json::<Json>().unwrap()["path"],
        "workflows/renamed.json"
    );
    assert_eq!(
        server
            .get("/api/userdata/workflows%2Fmy%20flow.json")
            .status(),
        StatusCode::NOT_FOUND
    );
    let gone = server
        .http
        .delete(server.url("/api/userdata/workflows%2Frenamed.json"))
        .send()
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        server
            .get("/api/userdata/workflows%2Frenamed.json")
            .status(),
        StatusCode::NOT_FOUND
    );

    // Nothing leaves the user folder.
    for path in [
        "/api/userdata/..%2Fescape.json",
        "/api/userdata/workflows%2F..%2F..%2Fescape.json",
        "/api/userdata/%2Ftmp%2Fescape.json",
    ] {
        let r = post_bytes(&server, path, b"x");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "POST {path}");
        assert_eq!(
            server.get(path).status(),
            StatusCode::FORBIDDEN,
            "GET {path}"
        );
    }
    assert_eq!(
        server.get("/api/userdata?dir=..").status(),
        StatusCode::FORBIDDEN
    );
    assert!(!server.dir.path().join("escape.json").exists());

    // The files the frontend asks for at every start answer as empty when absent.
    let css = server.get("/api/userdata/user.css");
    assert_eq!(css.status(), StatusCode::OK);
    assert_eq!(css.text().unwrap(), "");
    assert_eq!(server.get("/user.css").status(), StatusCode::OK);
    assert_eq!(
        server.get_json("/api/userdata/comfy.templates.json"),
        json!([])
    );
    assert_eq!(
        server.get_json("/api/userdata/workflows%2F.index.json"),
        json!({"favorites": []})
    );
}

#[test]
fn the_frontend_its_extensions_and_the_templates_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("static");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::create_dir_all(site.join("extensions/core")).unwrap();
    std::fs::write(
        site.join("index.html"),
        "<!doctype html><title>ComfyUI</title>",
    )
    .unwrap();
    std::fs::write(site.join("assets/app.js"), "console.log(1)").unwrap();
    std::fs::write(site.join("extensions/core/widgets.js"), "export {}").unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("index.json"), "[]").unwrap();
    std::fs::write(dir.path().join("secret.json"), "{}").unwrap();

    let server = TestServer::start_with(|o| {
        // The package folder: the server finds its static/.
        o.frontend = Some(dir.path().to_path_buf());
        o.template_dirs = vec![templates.clone(), dir.path().join("missing")];
    });
    let page = server.get("/");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-cache"));
    assert!(page.text().unwrap().contains("<title>ComfyUI</title>"));
    assert_eq!(
        server.get("/assets/app.js").text().unwrap(),
        "console.log(1)"
    );
    assert_eq!(
        server.get_json("/api/extensions"),
        json!(["/extensions/core/widgets.js"])
    );
    assert_eq!(server.get_json("/templates/index.json"), json!([]));
    assert_eq!(
        server.get("/templates/nope.json").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get("/templates/..%2Fsecret.json").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get("/no/such/file.js").status(),
        StatusCode::NOT_FOUND
    );
    // The API is still there, bare and under /api.
    assert_eq!(server.get_json("/api/i18n"), json!({}));
    assert_eq!(server.get_json("/api/global_subgraphs"), json!({}));
    assert_eq!(server.get_json("/api/workflow_templates"), json!({}));
    assert!(server.get_json("/object_info").get("SaveImage").is_some());

    // A folder without index.html is refused at start with a message that says what to do.
    let err = Server::start(ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        models_dir: repo().join("assets/tiny-models"),
        out_dir: dir.path().join("o"),
        input_dir: dir.path().join("i"),
        temp_dir: dir.path().join("t"),
        state_dir: dir.path().join("s"),
        user_dir: dir.path().join("u"),
        frontend: Some(templates.clone()),
        registry: Some(registry()),
        ..ServeOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no index.html") && err.contains("comfyui-frontend-package"),
        "{err}"
    );
}

#[test]
fn without_a_frontend_the_root_says_how_to_get_one() {
    let server = TestServer::start();
    let text = server.get("/").text().unwrap();
    assert!(text.contains("--frontend"), "{text}");
    assert_eq!(server.get("/assets/app.js").status(), StatusCode::NOT_FOUND);
}

#[test]
fn the_model_library_lists_folders_and_files() {
    let server = TestServer::start();
    let folders = server.get_json("/api/experiment/models");
    assert!(folders
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "diffusion_models" && f["folders"].as_array().unwrap().len() == 1));
    let files = server.get_json("/api/experiment/models/diffusion_models");
    let file = &files.as_array().unwrap()[0];
    assert_eq!(file["name"], "flux2-klein-tiny.safetensors");
    assert_eq!(file["pathIndex"], 0);
    assert!(file["size"].as_u64().unwrap() > 0);
    assert_eq!(
        server.get("/api/experiment/models/nope").status(),
        StatusCode::NOT_FOUND
    );
}
