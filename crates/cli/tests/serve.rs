//! `veetance serve` as a process: a server killed with SIGKILL while it runs a prompt, with
//! five more queued, is started again on the same state folder; every prompt finishes, each
//! with exactly one file per output node. And a stop by SIGTERM queues the running prompt again.
//!
//! Run with `cargo test -p veetance-cli --no-default-features --test serve` (no editor needed).

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `veetance serve` child process and its address.
struct Served {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

fn serve(dir: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_veetance"))
        .args(["serve", "--listen", "127.0.0.1:0", "--models-dir"])
        .arg(repo().join("assets/tiny-models"))
        .arg("--out")
        .arg(dir.join("output"))
        .arg("--input-dir")
        .arg(dir.join("input"))
        .arg("--temp-dir")
        .arg(dir.join("temp"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("VEETANCE_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("veetance starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://") {
                let addr: String = line[at..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
            }
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "the server never said where it listens:\n{}",
                log.lock().unwrap()
            )
        });
    Served { child, base, log }
}

impl Served {
    fn get(&self, path: &str) -> Json {
        reqwest::blocking::get(format!("{}{path}", self.base))
            .unwrap()
            .json()
            .unwrap()
    }

    fn queue(&self, prompt: Json) -> String {
        let r: Json = reqwest::blocking::Client::new()
            .post(format!("{}/prompt", self.base))
            .json(&json!({ "prompt": prompt }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["prompt_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string()
    }

    /// Waits until the prompt runs and its sampler has taken a step.
    fn wait_sampling(&self, prompt_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.get(&format!("/api/jobs/{prompt_id}"));
            if job["status"] == "in_progress"
                && job["progress"]["node"] == "b6"
                && job["progress"]["value"].as_u64().unwrap_or(0) > 0
            {
                return;
            }
            assert!(Instant::now() < deadline, "{job}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_all(&self, ids: &[String]) -> Json {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let history = self.get("/history");
            if ids.iter().all(|id| history.get(id).is_some()) {
                return history;
            }
            assert!(
                Instant::now() < deadline,
                "not all finished: {history}\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A preview of a gradient (written first) and the tiny FLUX.2 graph (long enough to be
/// caught running) saved to the output folder.
fn prompt(i: u32) -> Json {
    json!({
        "a1": {"class_type": "GradientImage", "inputs": {"width": 16, "height": 16, "color_a": format!("#0000{i:02x}")}},
        "a2": {"class_type": "PreviewImage", "inputs": {"images": ["a1", 0]}},
        "b1": {"class_type": "LoadDiffusionModel", "inputs": {"file": "flux2-klein-tiny.safetensors"}},
        "b2": {"class_type": "LoadTextEncoder", "inputs": {"file": "qwen3-tiny.safetensors"}},
        "b3": {"class_type": "TextEncode", "inputs": {"text": "a red fox", "text_encoder": ["b2", 0]}},
        "b4": {"class_type": "LoadVae", "inputs": {"file": "flux2-vae-tiny"}},
        "b5": {"class_type": "EmptyLatent", "inputs": {"width": 128, "height": 128, "batch": 1}},
        "b6": {"class_type": "Sampler", "inputs": {
            "model": ["b1", 0], "positive": ["b3", 0], "latent": ["b5", 0], "seed": i, "steps": 60}},
        "b7": {"class_type": "VaeDecode", "inputs": {"vae": ["b4", 0], "latent": ["b6", 0]}},
        "b8": {"class_type": "SaveImage", "inputs": {"images": ["b7", 0], "filename_prefix": "restart"}},
    })
}

fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn one_file_per_output(history: &Json, ids: &[String], dir: &Path) {
    let mut outputs = Vec::new();
    let mut previews = Vec::new();
    for id in ids {
        let entry = &history[id];
        assert_eq!(entry["status"]["status_str"], "success", "{entry}");
        let saved = entry["outputs"]["b8"]["images"].as_array().unwrap();
        let shown = entry["outputs"]["a2"]["images"].as_array().unwrap();
        assert_eq!((saved.len(), shown.len()), (1, 1), "{entry}");
        assert_eq!(saved[0]["type"], "output");
        assert_eq!(shown[0]["type"], "temp");
        outputs.push(saved[0]["filename"].as_str().unwrap().to_string());
        previews.push(shown[0]["filename"].as_str().unwrap().to_string());
    }
    outputs.sort();
    previews.sort();
    // Exactly the files the history names: no second file for a prompt that ran twice, no
    // temp file left behind.
    assert_eq!(files(&dir.join("output")), outputs);
    assert_eq!(files(&dir.join("temp")), previews);
}

#[test]
fn a_server_killed_mid_run_finishes_every_prompt_with_one_file_per_output() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String>;
    {
        let server = serve(dir.path());
        ids = (1..=6).map(|i| server.queue(prompt(i))).collect();
        server.wait_sampling(&ids[0]);
        let queue = server.get("/queue");
        assert_eq!(queue["queue_running"][0][1], ids[0].as_str());
        assert_eq!(queue["queue_pending"].as_array().unwrap().len(), 5);
        // The preview of the running prompt is written (and recorded) already.
        assert_eq!(files(&dir.path().join("temp")).len(), 1);
        let mut server = server;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
    }
    let server = serve(dir.path());
    let history = server.wait_all(&ids);
    one_file_per_output(&history, &ids, dir.path());
    // It ran in its turn, first, once more.
    let order: Vec<&String> = history.as_object().unwrap().keys().collect();
    assert_eq!(order.len(), 6);
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains(&format!(
            "prompt {} was running when the server stopped",
            ids[0]
        )),
        "{log}"
    );
}

#[test]
fn a_server_stopped_with_sigterm_runs_the_interrupted_prompt_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String>;
    {
        let mut server = serve(dir.path());
        ids = (1..=2).map(|i| server.queue(prompt(i))).collect();
        server.wait_sampling(&ids[0]);
        let status = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = server.child.wait().unwrap();
        assert!(exit.success(), "{exit:?}\n{}", server.log.lock().unwrap());
        assert!(files(&dir.path().join("output")).is_empty());
    }
    let server = serve(dir.path());
    let history = server.wait_all(&ids);
    one_file_per_output(&history, &ids, dir.path());
}
