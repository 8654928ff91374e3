//! The engine thread: takes prompts from the queue one at a time, runs them on the one
//! [`Engine`] (one cache for every prompt), turns the engine's events into ComfyUI's WebSocket
//! messages, records every file a run writes, and writes the history before it tells the
//! client that the prompt finished (`executing` with `node: null`).
//!
//! Only this thread touches the engine. The routes reach it through [`WorkerMsg`] (wake-ups and
//! `/free`) and the cancel token of the running prompt; they never wait for it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value as Json};
use veetance_core::{
    Budgets, CancelToken, Engine, Event, EventSink, Graph, HostMemory, RunEnv, RunError,
    RunOptions, RunReport,
};

use crate::store::{Finished, QueueItem, Store, StoreError, MAX_ATTEMPTS};
use crate::{now_ms, preview, AppState, Core, Dirs, PreviewMethod, Running, WorkerMsg};

/// How many UI outputs (the files an output node showed) are remembered for nodes that the
/// engine later serves from its cache. The engine keeps at most
/// [`veetance_core::MAX_ENTRIES`] outputs, and a prompt caches several nodes for each output
/// node, so a quarter of that covers every output node the engine can still serve.
const UI_CACHE_ENTRIES: usize = veetance_core::MAX_ENTRIES / 4;

/// Starts the engine thread.
pub(crate) fn spawn(
    core: AppState,
    rx: mpsc::Receiver<WorkerMsg>,
    budgets: Budgets,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("veetance-engine".into())
        .spawn(move || {
            let mut engine = Engine::new(core.registry.clone(), budgets);
            if let Some(probe) = &core.probe {
                engine = engine.with_device_probe(probe.clone());
            }
            let mut worker = Worker {
                core,
                engine,
                rx,
                ui_cache: UiCache::default(),
                free: None,
            };
            worker.run_loop();
        })
}

/// Prompts a crash left running: delete the files they recorded and the files they wrote
/// without recording them yet, then queue them again (or give up after [`MAX_ATTEMPTS`]).
pub(crate) fn recover(store: &Store, dirs: &Dirs) -> Result<(), StoreError> {
    for lost in store.interrupted()? {
        for file in &lost.files {
            match std::fs::remove_file(file) {
                Ok(()) => tracing::info!(
                    "prompt {}: removed '{}', written before the server stopped; it runs again",
                    lost.prompt_id,
                    file.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove '{}': {e}", file.display()),
            }
        }
        if let Some(started) = lost.started_ms {
            for dir in [&dirs.output, &dirs.temp] {
                remove_unrecorded(store, dir, started, &lost.prompt_id)?;
            }
        }
        if lost.attempts >= MAX_ATTEMPTS {
            tracing::error!(
                "prompt {} was running when the server stopped, {} times; it is not run again",
                lost.prompt_id,
                lost.attempts
            );
            let message = format!(
                "the server stopped while running this prompt {} times (killed for memory, or a \
                 crash); it is not run again",
                lost.attempts
            );
            store.forget_files(&lost.prompt_id)?;
            let now = now_ms();
            let error = stopped_error(&lost.prompt_id, &message, "ServerStopped", now);
            store.finish(
                &lost.prompt_id,
                &Finished {
                    outputs: json!({}),
                    status: json!({
                        "status_str": "error",
                        "completed": false,
                        "messages": [["execution_error", error]],
                    }),
                    meta: json!({}),
                    finished_ms: now,
                },
            )?;
        } else {
            tracing::warn!(
                "prompt {} was running when the server stopped; it runs again",
                lost.prompt_id
            );
            store.requeue(&lost.prompt_id, false)?;
        }
    }
    Ok(())
}

/// ComfyUI's `execution_error` for a prompt whose process stopped under it every time it ran
/// (no node to blame): the embedded server's crash recovery and a shared queue's write-off.
pub(crate) fn stopped_error(prompt_id: &str, message: &str, kind: &str, now: i64) -> Json {
    json!({
        "prompt_id": prompt_id,
        "node_id": null,
        "node_type": null,
        "executed": [],
        "exception_message": message,
        "exception_type": kind,
        "traceback": [],
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": now,
    })
}

/// Removes files under `dir` modified since `started_ms` (less a second, for file-system
/// timestamp granularity) that no prompt or upload recorded: outputs an interrupted run
/// published in the instant between writing them and recording them, and its temp files.
fn remove_unrecorded(
    store: &Store,
    dir: &Path,
    started_ms: i64,
    prompt_id: &str,
) -> Result<(), StoreError> {
    let since = SystemTime::UNIX_EPOCH + Duration::from_millis((started_ms - 1000).max(0) as u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            // `DirEntry::metadata` does not follow links: a link is neither walked nor removed.
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let fresh = meta.modified().is_ok_and(|m| m >= since);
            if fresh && !store.is_recorded(&path)? {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::warn!(
                        "prompt {prompt_id}: removed '{}', written but not recorded before the \
                         server stopped",
                        path.display()
                    ),
                    Err(e) => tracing::warn!("cannot remove '{}': {e}", path.display()),
                }
            }
        }
    }
    Ok(())
}

/// Files output nodes showed, by a signature of the node's inputs (see [`signatures`]), so
/// that a node the engine serves from its cache reports the files it wrote when it ran.
#[derive(Default)]
struct UiCache {
    entries: HashMap<[u8; 32], Json>,
    order: VecDeque<[u8; 32]>,
}

impl UiCache {
    fn insert(&mut self, key: [u8; 32], ui: Json) {
        if self.entries.insert(key, ui).is_none() {
            self.order.push_back(key);
            while self.order.len() > UI_CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

struct Worker {
    core: AppState,
    engine: Engine,
    rx: mpsc::Receiver<WorkerMsg>,
    ui_cache: UiCache,
    /// A `/free` to apply before the next prompt: (unload_models, free_memory).
    free: Option<(bool, bool)>,
}

impl Worker {
    fn run_loop(&mut self) {
        loop {
            // Messages first: /free applies between prompts, as in ComfyUI.
            loop {
                match self.rx.try_recv() {
                    Ok(WorkerMsg::Wake) => {}
                    Ok(WorkerMsg::Free {
                        unload_models,
                        free_memory,
                    }) => {
                        let (u, f) = self.free.unwrap_or((false, false));
                        self.free = Some((u || unload_models, f || free_memory));
                    }
                    Ok(WorkerMsg::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            if self.core.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            self.apply_free();
            match self.core.store.take_next(now_ms()) {
                Ok(Some(item)) => {
                    self.core.broadcast_status();
                    self.run_prompt(item);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("{e}; retrying in a second");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(WorkerMsg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(WorkerMsg::Free {
                    unload_models,
                    free_memory,
                }) => {
                    let (u, f) = self.free.unwrap_or((false, false));
                    self.free = Some((u || unload_models, f || free_memory));
                }
                Ok(WorkerMsg::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// `POST /free`: drops every cached value (models included) and hands the allocator's
    /// unused device memory back to the driver.
    fn apply_free(&mut self) {
        let Some((unload_models, free_memory)) = self.free.take() else {
            return;
        };
        if !(unload_models || free_memory) {
            return;
        }
        let before = self.engine.cache().usage();
        let device_before = self.engine.device_memory();
        self.engine.cache_mut().clear();
        self.ui_cache.clear();
        let released = self.core.probe.as_ref().is_some_and(|p| p.release());
        let device_after = self.engine.device_memory();
        tracing::info!(
            "/free: dropped the cache ({} on the device, {} in host memory){}",
            veetance_core::memory::format_bytes(before.device),
            veetance_core::memory::format_bytes(before.host),
            match (released, device_before, device_after) {
                (true, Some(b), Some(a)) => format!(
                    "; the device has {} free (was {})",
                    veetance_core::memory::format_bytes(a.free),
                    veetance_core::memory::format_bytes(b.free)
                ),
                _ => String::new(),
            }
        );
        self.publish_cache_usage();
    }

    fn publish_cache_usage(&self) {
        let usage = self.engine.cache().usage();
        self.core
            .cache_device_bytes
            .store(usage.device, Ordering::Relaxed);
        self.core
            .cache_host_bytes
            .store(usage.host, Ordering::Relaxed);
    }

    fn run_prompt(&mut self, item: QueueItem) {
        let core = self.core.clone();
        let prompt_id = item.prompt_id.clone();
        let client = item.client_id().map(str::to_string);
        let cancel = CancelToken::new();
        if item.attempts > 1 {
            tracing::info!(
                "prompt {prompt_id}: running again after the server stopped (attempt {})",
                item.attempts
            );
        }
        *core.running() = Some(Running {
            prompt_id: prompt_id.clone(),
            client_id: client.clone(),
            cancel: cancel.clone(),
            node: None,
            value: 0,
            max: 0,
        });
        if core.shutting_down.load(Ordering::SeqCst) {
            cancel.cancel();
        }
        let previews = match item.extra_data.get("preview_method").and_then(Json::as_str) {
            Some("none") => false,
            Some("auto" | "latent2rgb" | "taesd") => true,
            _ => core.preview == PreviewMethod::Auto,
        };
        let node_types: HashMap<String, String> = item
            .prompt
            .as_object()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|(id, n)| {
                        let class = n.get("class_type").and_then(Json::as_str).unwrap_or("");
                        (id.clone(), class.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let signatures = signatures(&item.prompt);
        let sink = RunSink {
            core: &core,
            prompt_id: &prompt_id,
            client: client.as_deref(),
            previews,
            signatures: &signatures,
            ui_cache: &self.ui_cache,
            state: Mutex::new(SinkState::default()),
        };
        sink.add_message("execution_start", json!({ "prompt_id": prompt_id }));

        let outcome = run_graph(&mut self.engine, &core, &item, &cancel, &sink);

        let mut state = sink.take_state();
        // A run that ended before any node started never flushed its cached list.
        if !state.cached_sent {
            let cached = std::mem::take(&mut state.cached);
            sink.add_message_to(
                &mut state,
                "execution_cached",
                json!({ "nodes": cached, "prompt_id": prompt_id }),
            );
        }
        let node_type = |id: &Option<String>| -> Json {
            id.as_ref()
                .and_then(|id| node_types.get(id))
                .map_or(Json::Null, |t| json!(t))
        };
        let (ok, cancelled) = match &outcome {
            Ok(_) => {
                sink.add_message_to(
                    &mut state,
                    "execution_success",
                    json!({ "prompt_id": prompt_id }),
                );
                (true, false)
            }
            Err(Failure::Cancelled { node }) => {
                let node = node.clone().or_else(|| state.last_node.clone());
                let data = json!({
                    "prompt_id": prompt_id,
                    "node_id": node,
                    "node_type": node_type(&node),
                    "executed": state.executed,
                });
                sink.add_message_to(&mut state, "execution_interrupted", data);
                (false, true)
            }
            Err(Failure::Error {
                node,
                exception_type,
                message,
            }) => {
                let node = node.clone().or_else(|| state.last_node.clone());
                tracing::warn!("prompt {prompt_id} failed: {message}");
                let data = json!({
                    "prompt_id": prompt_id,
                    "node_id": node,
                    "node_type": node_type(&node),
                    "executed": state.executed,
                    "exception_message": message,
                    "exception_type": exception_type,
                    "traceback": [],
                    "current_inputs": {},
                    "current_outputs": state.cached_at_start,
                });
                sink.add_message_to(&mut state, "execution_error", data);
                (false, false)
            }
        };
        drop(sink);
        for (key, ui) in state.new_ui.drain(..) {
            self.ui_cache.insert(key, ui);
        }
        self.publish_cache_usage();

        if cancelled && core.shutting_down.load(Ordering::SeqCst) {
            // Stopping, not a user's interrupt: the prompt runs again at the next start, from
            // scratch (its files so far are removed, as after a crash).
            for file in &state.files {
                let _ = std::fs::remove_file(file);
            }
            if let Err(e) = core.store.requeue(&prompt_id, true) {
                tracing::error!("prompt {prompt_id}: {e}; it runs again at the next start");
            }
            *core.running() = None;
            return;
        }

        let mut outputs = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        for (node, ui) in &state.ui_outputs {
            outputs.insert(node.clone(), ui.clone());
            meta.insert(
                node.clone(),
                json!({
                    "node_id": node,
                    "display_node": node,
                    "parent_node": null,
                    "real_node_id": node,
                }),
            );
        }
        let finished = Finished {
            outputs: Json::Object(outputs),
            status: json!({
                "status_str": if ok { "success" } else { "error" },
                "completed": ok,
                "messages": state
                    .messages
                    .iter()
                    .map(|(kind, data)| json!([kind, data]))
                    .collect::<Vec<_>>(),
            }),
            meta: Json::Object(meta),
            finished_ms: now_ms(),
        };
        // History first, then the "finished" signal: clients read the history on it.
        if let Err(e) = core.store.finish(&prompt_id, &finished) {
            tracing::error!("prompt {prompt_id}: the history could not be written: {e}");
        }
        *core.running() = None;
        if let Some(c) = client.as_deref() {
            core.hub.send_json(
                Some(c),
                "executing",
                json!({ "node": null, "prompt_id": prompt_id }),
            );
        }
        core.notify_done(&prompt_id);
        core.broadcast_status();
    }
}

/// Builds and runs a prompt's graph.
fn run_graph(
    engine: &mut Engine,
    core: &Core,
    item: &QueueItem,
    cancel: &CancelToken,
    sink: &RunSink<'_>,
) -> Result<RunReport, Failure> {
    let graph = veetance_comfy::prompt_to_graph(&item.prompt, &core.registry).map_err(|e| {
        Failure::Error {
            node: None,
            exception_type: "ValidationError".into(),
            message: e.lines().join("; "),
        }
    })?;
    // What ComfyUI executes: the outputs validation let through and what they need, so that a
    // broken output left out does not stop the others.
    let graph = if item.outputs_to_execute.is_empty() {
        graph
    } else {
        veetance_comfy::prune(&graph, &item.outputs_to_execute)
    };
    check_host_memory(&graph, &HostMemory::read())?;
    let mut png_text = vec![("prompt".to_string(), item.prompt.to_string())];
    if let Some(info) = item
        .extra_data
        .get("extra_pnginfo")
        .and_then(Json::as_object)
    {
        for (key, value) in info {
            png_text.push((key.clone(), value.to_string()));
        }
    }
    let options = RunOptions {
        targets: (!item.outputs_to_execute.is_empty()).then(|| item.outputs_to_execute.clone()),
        env: RunEnv {
            out_dir: core.dirs.output.clone(),
            models_dir: core.dirs.models.clone(),
            run_index: 0,
            workflow: None,
            png_text,
            temp_dir: Some(core.dirs.temp.clone()),
            input_dir: Some(core.dirs.input.clone()),
        },
        cancel: cancel.clone(),
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| engine.run(&graph, &options, sink)));
    match result {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) => Err(Failure::from_run_error(e)),
        Err(panic) => Err(Failure::Error {
            node: None,
            exception_type: "InternalError".into(),
            message: format!(
                "internal error (please report): {}",
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into())
            ),
        }),
    }
}

/// How a run failed, in ComfyUI's terms.
#[derive(Debug)]
enum Failure {
    Cancelled {
        node: Option<String>,
    },
    Error {
        node: Option<String>,
        exception_type: String,
        message: String,
    },
}

impl Failure {
    fn from_run_error(e: RunError) -> Failure {
        let message = e.to_string();
        match e {
            RunError::Cancelled { node } => Failure::Cancelled { node },
            RunError::NodeFailed { node, .. } => Failure::Error {
                node: Some(node),
                exception_type: "RuntimeError".into(),
                message,
            },
            RunError::OutOfMemory { node, .. } => Failure::Error {
                node: Some(node),
                exception_type: "OutOfMemoryError".into(),
                message,
            },
            RunError::Invalid(errors) => Failure::Error {
                node: errors.first().map(|e| e.node.clone()),
                exception_type: "ValidationError".into(),
                message,
            },
            RunError::UnknownTarget(_) | RunError::NoOutputs => Failure::Error {
                node: None,
                exception_type: "ValueError".into(),
                message,
            },
        }
    }
}

/// Refuses, before anything runs, a graph whose images would not fit in host memory: the
/// pixel buffers of a `width × height × batch` node alone (four f32 channels, the decoded image
/// and one copy), against what the system has available. A request for a 65536² image then
/// fails with a named error instead of the process being killed. Device memory is the
/// engine's business (it makes room, streams, tiles, and fails a node with `OutOfMemory`).
fn check_host_memory(graph: &Graph, host: &HostMemory) -> Result<(), Failure> {
    let Some(available) = host.available else {
        return Ok(());
    };
    let int_of = |node: &veetance_core::NodeInstance, name: &str| -> Option<i64> {
        if let Some(v) = node.params.get(name).and_then(|v| v.as_int()) {
            return Some(v);
        }
        // A linked value: the source's `value` param (Int, PrimitiveInt).
        graph
            .incoming(&node.id)
            .into_iter()
            .find(|(_, _, to)| *to == name)
            .and_then(|(from, _, _)| graph.node(from))
            .and_then(|src| src.params.get("value").and_then(|v| v.as_int()))
    };
    for node in graph.nodes() {
        let (Some(w), Some(h)) = (int_of(node, "width"), int_of(node, "height")) else {
            continue;
        };
        let batch = int_of(node, "batch")
            .or_else(|| int_of(node, "batch_size"))
            .unwrap_or(1)
            .max(1);
        let need = (w.max(0) as u128) * (h.max(0) as u128) * (batch as u128) * 4 * 4 * 2;
        if need > available as u128 {
            return Err(Failure::Error {
                node: Some(node.id.clone()),
                exception_type: "OutOfMemoryError".into(),
                message: format!(
                    "node '{}' ({}) asks for {batch} image(s) of {w}×{h}, which need about {} of \
                     host memory; {} is available. Lower the size or the batch",
                    node.id,
                    node.type_name,
                    veetance_core::memory::format_bytes(need.min(u64::MAX as u128) as u64),
                    veetance_core::memory::format_bytes(available)
                ),
            });
        }
    }
    Ok(())
}

/// A signature of each node's inputs: its class, its constant inputs and, for linked inputs,
/// the source's signature and output index, recursively (ComfyUI's cache signature, without
/// node ids). Equal signatures mean the engine computes the same thing, so UI outputs recorded
/// under one serve a later node the engine takes from its cache.
pub(crate) fn signatures(prompt: &Json) -> HashMap<String, [u8; 32]> {
    fn visit(
        id: &str,
        nodes: &serde_json::Map<String, Json>,
        memo: &mut HashMap<String, [u8; 32]>,
        visiting: &mut HashSet<String>,
    ) -> [u8; 32] {
        if let Some(s) = memo.get(id) {
            return *s;
        }
        let mut h = blake3::Hasher::new();
        h.update(b"veetance-ui-signature-v1\0");
        if !visiting.insert(id.to_string()) {
            // A cycle (validation refuses those): a signature of its own, matching nothing.
            h.update(id.as_bytes());
            h.update(b"\0cycle");
            return *h.finalize().as_bytes();
        }
        let node = nodes.get(id);
        let class = node
            .and_then(|n| n.get("class_type"))
            .and_then(Json::as_str)
            .unwrap_or("");
        h.update(class.as_bytes());
        h.update(&[0]);
        if let Some(inputs) = node.and_then(|n| n.get("inputs")).and_then(Json::as_object) {
            for (name, value) in inputs {
                h.update(name.as_bytes());
                h.update(&[0]);
                match link_of(value) {
                    Some((src, index)) if nodes.contains_key(src) => {
                        let s = visit(src, nodes, memo, visiting);
                        h.update(b"L");
                        h.update(&s);
                        h.update(&index.to_le_bytes());
                    }
                    _ => {
                        h.update(b"V");
                        h.update(value.to_string().as_bytes());
                    }
                }
                h.update(&[0]);
            }
        }
        visiting.remove(id);
        let s = *h.finalize().as_bytes();
        memo.insert(id.to_string(), s);
        s
    }
    let mut memo = HashMap::new();
    if let Some(nodes) = prompt.as_object() {
        for id in nodes.keys() {
            visit(id, nodes, &mut memo, &mut HashSet::new());
        }
    }
    memo
}

/// A link `["node_id", output_index]`.
pub(crate) fn link_of(value: &Json) -> Option<(&str, u64)> {
    match value.as_array()?.as_slice() {
        [Json::String(src), index] => index.as_u64().map(|i| (src.as_str(), i)),
        _ => None,
    }
}

/// What the sink collected during one run.
#[derive(Default)]
struct SinkState {
    /// (event, data) stored in the history's `status.messages`.
    messages: Vec<(String, Json)>,
    /// Nodes served from the cache before the first node executed (`execution_cached`).
    cached: Vec<String>,
    cached_sent: bool,
    /// The same list, for `current_outputs` of an error.
    cached_at_start: Vec<String>,
    executed: Vec<String>,
    last_node: Option<String>,
    /// Files this run wrote, by node, in order; all paths for a rerun's cleanup.
    written: BTreeMap<String, Vec<Json>>,
    files: Vec<PathBuf>,
    /// Nodes with UI output, in the order they finished.
    ui_outputs: Vec<(String, Json)>,
    /// UI outputs to remember once the run is over.
    new_ui: Vec<([u8; 32], Json)>,
    /// `progress_state` of the nodes started so far.
    progress: BTreeMap<String, (u64, u64, &'static str)>,
}

/// Turns the engine's events into ComfyUI's messages for the prompt's client.
struct RunSink<'a> {
    core: &'a Core,
    prompt_id: &'a str,
    client: Option<&'a str>,
    previews: bool,
    signatures: &'a HashMap<String, [u8; 32]>,
    ui_cache: &'a UiCache,
    state: Mutex<SinkState>,
}

impl RunSink<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_state(&self) -> SinkState {
        std::mem::take(&mut *self.lock())
    }

    fn send(&self, kind: &str, data: Json) {
        if let Some(c) = self.client {
            self.core.hub.send_json(Some(c), kind, data);
        }
    }

    /// A message that also goes into the history (ComfyUI's `add_message`): stamped with the
    /// time in milliseconds.
    fn add_message(&self, kind: &str, data: Json) {
        let mut state = self.lock();
        self.add_message_to(&mut state, kind, data);
    }

    fn add_message_to(&self, state: &mut SinkState, kind: &str, mut data: Json) {
        if let Some(map) = data.as_object_mut() {
            map.insert("timestamp".into(), json!(now_ms()));
        }
        state.messages.push((kind.to_string(), data.clone()));
        self.send(kind, data);
    }

    fn flush_cached(&self, state: &mut SinkState) {
        if state.cached_sent {
            return;
        }
        state.cached_sent = true;
        let cached = state.cached.clone();
        state.cached_at_start = cached.clone();
        self.add_message_to(
            state,
            "execution_cached",
            json!({ "nodes": cached, "prompt_id": self.prompt_id }),
        );
    }

    fn send_progress_state(&self, state: &SinkState) {
        if self.client.is_none() {
            return;
        }
        let nodes: serde_json::Map<String, Json> = state
            .progress
            .iter()
            .map(|(id, (value, max, st))| {
                (
                    id.clone(),
                    json!({
                        "value": value,
                        "max": max,
                        "state": st,
                        "node_id": id,
                        "prompt_id": self.prompt_id,
                        "display_node_id": id,
                        "parent_node_id": null,
                        "real_node_id": id,
                    }),
                )
            })
            .collect();
        self.send(
            "progress_state",
            json!({ "prompt_id": self.prompt_id, "nodes": nodes }),
        );
    }

    fn executed(&self, state: &mut SinkState, node: &str, ui: Json) {
        self.send(
            "executed",
            json!({
                "node": node,
                "display_node": node,
                "output": ui,
                "prompt_id": self.prompt_id,
            }),
        );
        state.ui_outputs.retain(|(n, _)| n != node);
        state.ui_outputs.push((node.to_string(), ui));
    }

    /// Where a written file is, for `/view`: `{filename, subfolder, type}`.
    fn describe(&self, path: &Path) -> Option<Json> {
        let dirs = &self.core.dirs;
        // temp first: it may sit inside the output folder.
        for (root, kind) in [(&dirs.temp, "temp"), (&dirs.output, "output")] {
            if let Ok(rel) = path.strip_prefix(root) {
                let filename = rel.file_name()?.to_string_lossy().into_owned();
                let subfolder = rel
                    .parent()
                    .map(|p| {
                        p.components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_default();
                return Some(json!({ "filename": filename, "subfolder": subfolder, "type": kind }));
            }
        }
        None
    }

    fn preview(&self, node: &str, image: &veetance_core::Image) {
        let Some(client) = self.client else { return };
        if !self.previews || !self.core.hub.is_connected(client) {
            return;
        }
        let Some(png) = preview::encode_png(image, preview::MAX_PREVIEW_SIDE) else {
            return;
        };
        self.core
            .hub
            .send_preview(client, node, self.prompt_id, png);
    }
}

/// The UI output of a node's files: `{"images": [...]}` for images, other kinds by extension.
fn ui_of(files: &[Json]) -> Json {
    let mut ui = serde_json::Map::new();
    for f in files {
        let name = f
            .get("filename")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let kind = if [".png", ".jpg", ".jpeg", ".webp", ".gif"]
            .iter()
            .any(|e| name.ends_with(e))
        {
            "images"
        } else if name.ends_with(".latent") {
            "latents"
        } else {
            "files"
        };
        if let Some(list) = ui
            .entry(kind)
            .or_insert_with(|| Json::Array(Vec::new()))
            .as_array_mut()
        {
            list.push(f.clone());
        }
    }
    Json::Object(ui)
}

impl EventSink for RunSink<'_> {
    fn emit(&self, event: &Event) {
        match event {
            Event::NodeStarted { node, .. } => {
                let mut state = self.lock();
                self.flush_cached(&mut state);
                state.last_node = Some(node.clone());
                if let Some(r) = self.core.running().as_mut() {
                    r.node = Some(node.clone());
                    r.value = 0;
                    r.max = 0;
                }
                self.send(
                    "executing",
                    json!({ "node": node, "display_node": node, "prompt_id": self.prompt_id }),
                );
                state.progress.insert(node.clone(), (0, 1, "running"));
                self.send_progress_state(&state);
            }
            Event::Progress { node, step, total } => {
                if let Some(r) = self.core.running().as_mut() {
                    r.value = *step;
                    r.max = *total;
                }
                self.send(
                    "progress",
                    json!({
                        "value": step,
                        "max": total,
                        "prompt_id": self.prompt_id,
                        "node": node,
                    }),
                );
                let mut state = self.lock();
                state
                    .progress
                    .insert(node.clone(), (*step, *total, "running"));
                self.send_progress_state(&state);
            }
            Event::Preview { node, image, .. } => self.preview(node, image),
            Event::OutputWritten { node, path } => {
                let path = PathBuf::from(path);
                let path = if path.is_absolute() {
                    path
                } else {
                    std::env::current_dir()
                        .map(|d| d.join(&path))
                        .unwrap_or(path)
                };
                if let Err(e) = self.core.store.record_file(self.prompt_id, node, &path) {
                    tracing::error!(
                        "prompt {}: '{}' could not be recorded ({e}); a rerun after a crash may \
                         leave it behind",
                        self.prompt_id,
                        path.display()
                    );
                }
                let mut state = self.lock();
                if let Some(desc) = self.describe(&path) {
                    state.written.entry(node.clone()).or_default().push(desc);
                }
                state.files.push(path);
            }
            Event::NodeFinished { node, cached, .. } => {
                let mut state = self.lock();
                if *cached {
                    if !state.cached_sent {
                        state.cached.push(node.clone());
                    }
                    let ui = self
                        .signatures
                        .get(node)
                        .and_then(|s| self.ui_cache.entries.get(s))
                        .cloned();
                    if let Some(ui) = ui {
                        self.executed(&mut state, node, ui);
                    }
                    if let Some(p) = state.progress.get_mut(node) {
                        p.2 = "finished";
                    }
                } else {
                    state.executed.push(node.clone());
                    if let Some(files) = state.written.get(node).cloned() {
                        let ui = ui_of(&files);
                        if let Some(s) = self.signatures.get(node) {
                            state.new_ui.push((*s, ui.clone()));
                        }
                        self.executed(&mut state, node, ui);
                    }
                    let max = state.progress.get(node).map_or(1, |p| p.1.max(1));
                    state.progress.insert(node.clone(), (max, max, "finished"));
                    self.send_progress_state(&state);
                }
            }
            Event::Warning { node, message } => {
                tracing::warn!(
                    "prompt {}{}: {message}",
                    self.prompt_id,
                    node.as_ref()
                        .map(|n| format!(", node '{n}'"))
                        .unwrap_or_default()
                );
            }
            Event::RunFinished { .. } => {
                let mut state = self.lock();
                self.flush_cached(&mut state);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_ignore_ids_and_follow_links() {
        let a = json!({
            "1": {"class_type": "Load", "inputs": {"file": "m"}},
            "2": {"class_type": "Save", "inputs": {"images": ["1", 0], "prefix": "x"}},
        });
        let b = json!({
            "10": {"class_type": "Load", "inputs": {"file": "m"}},
            "20": {"class_type": "Save", "inputs": {"images": ["10", 0], "prefix": "x"}, "_meta": {"title": "t"}},
        });
        let c = json!({
            "1": {"class_type": "Load", "inputs": {"file": "other"}},
            "2": {"class_type": "Save", "inputs": {"images": ["1", 0], "prefix": "x"}},
        });
        let (sa, sb, sc) = (signatures(&a), signatures(&b), signatures(&c));
        assert_eq!(sa["2"], sb["20"]);
        assert_ne!(sa["2"], sc["2"]);
    }

    #[test]
    fn signatures_survive_cycles() {
        let p = json!({
            "1": {"class_type": "A", "inputs": {"x": ["2", 0]}},
            "2": {"class_type": "B", "inputs": {"x": ["1", 0]}},
        });
        assert_eq!(signatures(&p).len(), 2);
    }

    #[test]
    fn huge_images_fail_before_running() {
        let mut graph = Graph::new();
        let mut params = BTreeMap::new();
        params.insert("width".to_string(), veetance_core::Value::Int(1 << 20));
        params.insert("height".to_string(), veetance_core::Value::Int(1 << 20));
        graph.add_node("5", "EmptyLatent", params).unwrap();
        let host = HostMemory {
            process_rss: None,
            available: Some(8 << 30),
            total: Some(16 << 30),
        };
        match check_host_memory(&graph, &host) {
            Err(Failure::Error {
                node,
                exception_type,
                message,
            }) => {
                assert_eq!(node.as_deref(), Some("5"));
                assert_eq!(exception_type, "OutOfMemoryError");
                assert!(message.contains("1048576×1048576"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
