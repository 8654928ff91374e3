//! `veetance worker --queue nats://…`: takes jobs from the shared queue and runs them on this
//! process's engine, one at a time.
//!
//! The worker is the embedded server without HTTP: the same engine thread, cache and local
//! journal (SQLite in its state folder, which records the files a run writes so that a crash
//! leaves none half-made), with the WebSocket hub forwarding every message to the job's
//! events subject. Around it, a loop that:
//! 1. asks the model consumers for one job, those of the models it ran last first;
//! 2. skips a job whose record says it is done (a redelivery after a crash between the record
//!    and the ack) or cancelled;
//! 3. writes off a job on its [`MAX_DELIVER`]th delivery (it stopped a worker every time);
//! 4. marks it running, runs it locally, sending progress acks while it runs;
//! 5. stores the outputs in the object store, writes the record (done, with the history
//!    entry), tells the client, and only then acks.
//!
//! Stopped (Ctrl-C, SIGTERM), it interrupts its job and hands it back (a NAK: another worker
//! takes it at once).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, AckKind};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use tokio::sync::{oneshot, Notify};
use veetance_core::{Budgets, DeviceProbe, NodeRegistry};

use super::{
    file_key, job_key, JobMessage, JobRecord, JobState, Queue, EVENTS_PREFIX, FREE_SUBJECT,
    INTERRUPT_SUBJECT, MAX_DELIVER, PREVIEW_CLIENT, PREVIEW_NODE, PREVIEW_PROMPT, PROGRESS_EVERY,
    WAKE_PREFIX,
};
use crate::hub::Forwarded;
use crate::store::{NewPrompt, Store, StoreError, MAX_ATTEMPTS};
use crate::{now_ms, Core, PreviewMethod, ServerError, WorkerMsg};

/// Everything `veetance worker` is configured with.
pub struct WorkerOptions {
    /// The queue server, `nats://HOST:4222`.
    pub queue: String,
    /// This worker's name in job records and logs (the process id is added); default: the
    /// host name.
    pub name: Option<String>,
    pub models_dir: PathBuf,
    pub out_dir: PathBuf,
    pub input_dir: PathBuf,
    pub temp_dir: PathBuf,
    /// The local journal (`queue.sqlite3`).
    pub state_dir: PathBuf,
    pub budgets: Budgets,
    pub device_probe: Option<Arc<dyn DeviceProbe>>,
    pub preview: PreviewMethod,
    pub registry: Option<NodeRegistry>,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("queue", &self.queue)
            .field("name", &self.name)
            .field("models_dir", &self.models_dir)
            .field("out_dir", &self.out_dir)
            .finish()
    }
}

/// How many models a worker counts as held (the engine's cache may keep them).
const HELD_MODELS: usize = 4;
/// After this many jobs in a row for held models, a worker looks at the other models first
/// once, so that a steady stream of one model's jobs cannot starve another's.
const AFFINITY_STREAK: u32 = 8;
/// How long an idle worker waits for a wake-up before it asks the consumers again.
const IDLE_POLL: Duration = Duration::from_secs(2);

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

/// Runs a worker until Ctrl-C or SIGTERM.
pub fn run_worker(options: WorkerOptions) -> Result<(), ServerError> {
    let id = format!(
        "{}:{}",
        options.name.clone().unwrap_or_else(host_name),
        std::process::id()
    );
    let dirs = crate::Dirs {
        models: options
            .models_dir
            .canonicalize()
            .unwrap_or_else(|_| options.models_dir.clone()),
        output: crate::resolve_dir(&options.out_dir, "output")?,
        input: crate::resolve_dir(&options.input_dir, "input")?,
        temp: crate::resolve_dir(&options.temp_dir, "temp")?,
        state: crate::resolve_dir(&options.state_dir, "state")?,
        user: PathBuf::new(),
        frontend: None,
        templates: Vec::new(),
    };
    let store = Arc::new(Store::open(&dirs.state.join("queue.sqlite3"), 1000)?);
    // A crash left a run half-done: its files go (recover), and the job itself is the queue's
    // to deliver again, not this journal's.
    crate::worker::recover(&store, &dirs)?;
    store.clear_pending()?;
    store.clear_history()?;

    let registry = Arc::new(options.registry.unwrap_or_else(veetance_nodes::registry));
    let (worker_tx, worker_rx) = mpsc::channel();
    let core = crate::new_core(crate::CoreParts {
        dirs,
        token: None,
        local_only: false,
        preview: options.preview,
        limits: crate::Limits::default(),
        store: store.clone(),
        remote: None,
        registry,
        probe: options.device_probe.clone(),
        default_workflow: None,
        worker_tx,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("veetance-worker")
        .build()
        .map_err(|e| ServerError::Runtime(format!("cannot start tokio: {e}")))?;
    let queue = runtime
        .block_on(Queue::connect(
            &options.queue,
            &format!("veetance worker {id}"),
        ))
        .map_err(ServerError::Store)?;

    // Messages of the engine thread -> the job's events subject.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel::<Forwarded>(4096);
    core.hub.forward_to(Box::new(move |message| {
        if events_tx.try_send(message).is_err() {
            tracing::warn!("queue: too many events waiting to be published; one dropped");
        }
    }));
    runtime.spawn(publish_events(queue.client.clone(), events_rx));

    let engine_thread = crate::worker::spawn(core.clone(), worker_rx, options.budgets)
        .map_err(|e| ServerError::Runtime(format!("cannot start the engine thread: {e}")))?;
    tracing::info!("worker {id}: taking jobs from {}", options.queue);

    let result = runtime.block_on(async {
        let stop = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        {
            let (stop, stopping) = (stop.clone(), stopping.clone());
            tokio::spawn(async move {
                crate::wait_for_signal().await;
                stopping.store(true, Ordering::SeqCst);
                stop.notify_waiters();
            });
        }
        let held = Arc::new(std::sync::Mutex::new(VecDeque::<String>::new()));
        tokio::spawn(control(queue.client.clone(), core.clone(), held.clone()));
        let mut worker = Worker {
            id: id.clone(),
            queue,
            core: core.clone(),
            held,
            consumers: HashMap::new(),
            streak: 0,
            turn: 0,
            stop,
            stopping,
        };
        worker.run().await
    });
    core.stop_worker();
    if engine_thread.join().is_err() {
        tracing::error!("the engine thread panicked");
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    tracing::info!("worker {id}: stopped");
    result
}

struct Worker {
    id: String,
    queue: Queue,
    core: Arc<Core>,
    /// Models of the last jobs, newest first.
    held: Arc<std::sync::Mutex<VecDeque<String>>>,
    consumers: HashMap<String, consumer::Consumer<consumer::pull::Config>>,
    streak: u32,
    turn: usize,
    stop: Arc<Notify>,
    stopping: Arc<AtomicBool>,
}

/// How a job ended on this worker.
enum Outcome {
    Acked,
    HandedBack,
}

impl Worker {
    async fn run(&mut self) -> Result<(), ServerError> {
        let mut wake = self
            .queue
            .client
            .subscribe(format!("{WAKE_PREFIX}.>"))
            .await
            .map_err(|e| ServerError::Runtime(format!("queue: cannot subscribe: {e}")))?;
        while !self.stopping.load(Ordering::SeqCst) {
            match self.next_job().await {
                Ok(Some(message)) => {
                    if let Outcome::HandedBack = self.handle(message).await {
                        break;
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = wake.next() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = self.stop.notified() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; retrying in a second");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.stop.notified() => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// One job from the consumer of a held model, else from any other model's.
    async fn next_job(&mut self) -> Result<Option<jetstream::Message>, StoreError> {
        let url = self.queue.url.clone();
        let mut names: Vec<String> = Vec::new();
        let mut listing = self.queue.stream.consumer_names();
        while let Some(name) = listing.next().await {
            let name = name.map_err(|e| super::queue_error("cannot list consumers", &url, e))?;
            if name.starts_with("m-") {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Ok(None);
        }
        // Others in turn, so that every model's jobs get looked at.
        names.sort();
        self.turn = self.turn.wrapping_add(1);
        let n = names.len();
        names.rotate_left(self.turn % n);
        let held: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|m| format!("m-{m}"))
            .filter(|c| names.contains(c))
            .collect();
        let others: Vec<String> = names.into_iter().filter(|c| !held.contains(c)).collect();
        let order: Vec<(String, bool)> = if self.streak >= AFFINITY_STREAK {
            self.streak = 0;
            others
                .into_iter()
                .map(|c| (c, false))
                .chain(held.into_iter().map(|c| (c, true)))
                .collect()
        } else {
            held.into_iter()
                .map(|c| (c, true))
                .chain(others.into_iter().map(|c| (c, false)))
                .collect()
        };
        for (name, preferred) in order {
            let consumer =
                match self.consumers.get(&name) {
                    Some(c) => c.clone(),
                    None => {
                        let c: consumer::Consumer<consumer::pull::Config> =
                            self.queue.stream.get_consumer(&name).await.map_err(|e| {
                                super::queue_error("cannot open a consumer", &url, e)
                            })?;
                        self.consumers.insert(name.clone(), c.clone());
                        c
                    }
                };
            let mut batch = match consumer.fetch().max_messages(1).messages().await {
                Ok(b) => b,
                Err(e) => {
                    self.consumers.remove(&name);
                    return Err(super::queue_error("cannot ask for a job", &url, e));
                }
            };
            if let Some(message) = batch.next().await {
                let message =
                    message.map_err(|e| super::queue_error("cannot take a job", &url, e))?;
                self.streak = if preferred { self.streak + 1 } else { 0 };
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    async fn handle(&mut self, message: jetstream::Message) -> Outcome {
        let (delivered, sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(e) => {
                tracing::warn!("queue: a job without delivery information ({e}); skipped");
                let _ = message.ack_with(AckKind::Term).await;
                return Outcome::Acked;
            }
        };
        let job: JobMessage = match serde_json::from_slice(&message.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("queue: job message {sequence} is not valid ({e}); dropped");
                let _ = message.ack_with(AckKind::Term).await;
                return Outcome::Acked;
            }
        };
        let key = job_key(&job.prompt_id);
        let previous = match self.queue.jobs.entry(key.clone()).await {
            Ok(e) => e
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| {
                    serde_json::from_slice::<JobRecord>(&e.value)
                        .ok()
                        .map(|r| (e.revision, r))
                }),
            Err(e) => {
                tracing::warn!(
                    "queue: cannot read job {}: {e}; handing it back",
                    job.prompt_id
                );
                retry_soon(&message).await;
                return Outcome::Acked;
            }
        };
        match previous.as_ref().map(|(_, r)| r.state) {
            Some(JobState::Done) => {
                tracing::info!(
                    "job {}: already done (a redelivery); not run again",
                    job.prompt_id
                );
                let _ = message.double_ack().await;
                return Outcome::Acked;
            }
            Some(JobState::Cancelled) => {
                tracing::info!("job {}: deleted from the queue; dropped", job.prompt_id);
                let _ = message.double_ack().await;
                let _ = self.queue.jobs.purge(&key).await;
                return Outcome::Acked;
            }
            _ => {}
        }
        let mut record = previous
            .map(|(_, r)| r)
            .unwrap_or_else(|| JobRecord::new(&job, sequence));
        let client = job
            .extra_data
            .get("client_id")
            .and_then(Json::as_str)
            .map(str::to_string);

        if delivered > MAX_ATTEMPTS {
            self.write_off(&message, &mut record, client.as_deref(), delivered - 1)
                .await;
            return Outcome::Acked;
        }
        if delivered > 1 {
            tracing::warn!(
                "job {}: delivery {delivered} of {MAX_DELIVER} (a worker stopped while running it)",
                job.prompt_id
            );
        }

        record.state = JobState::Running;
        record.worker = Some(self.id.clone());
        record.started_ms = Some(now_ms());
        record.attempts = delivered;
        if let Err(e) = self.put(&key, &record).await {
            tracing::warn!("job {}: {e}; handing it back", job.prompt_id);
            retry_soon(&message).await;
            return Outcome::Acked;
        }

        // Run it on the engine thread, through the local journal.
        let (done_tx, done_rx) = oneshot::channel();
        self.core
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job.prompt_id.clone())
            .or_default()
            .push(done_tx);
        let store = self.core.store.clone();
        let mut extra_data = job.extra_data.clone();
        if let (true, Some(map)) = (job.previews, extra_data.as_object_mut()) {
            // The front door's --preview-method auto, for this run only (the record keeps
            // the client's extra_data).
            map.entry("preview_method").or_insert_with(|| json!("auto"));
        }
        let new = NewPrompt {
            prompt_id: job.prompt_id.clone(),
            number: Some(record.number),
            front: false,
            prompt: job.prompt.clone(),
            extra_data,
            outputs_to_execute: job.outputs_to_execute.clone(),
            created_ms: job.created_ms,
        };
        let id = job.prompt_id.clone();
        let queued = tokio::task::spawn_blocking(move || {
            // A leftover of an earlier delivery to this worker would make enqueue a no-op.
            store.delete_history(std::slice::from_ref(&id))?;
            store.delete_pending(std::slice::from_ref(&id))?;
            store.enqueue(new)
        })
        .await;
        if !matches!(queued, Ok(Ok(_))) {
            tracing::error!(
                "job {}: the local journal refused it; handing it back",
                job.prompt_id
            );
            retry_soon(&message).await;
            return Outcome::Acked;
        }
        self.core.tell_worker(WorkerMsg::Wake);

        let mut done_rx = done_rx;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut done_rx => break,
                _ = tick.tick() => {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!("job {}: progress ack failed: {e}", job.prompt_id);
                    }
                }
                _ = self.stop.notified() => {
                    return self.hand_back(&message, &key, &mut record).await;
                }
            }
        }
        if self.stopping.load(Ordering::SeqCst) && !self.finished_locally(&job.prompt_id).await {
            return self.hand_back(&message, &key, &mut record).await;
        }
        self.finish(&message, &key, &mut record, client.as_deref())
            .await;
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.retain(|m| m != &job.model);
            held.push_front(job.model.clone());
            held.truncate(HELD_MODELS);
        }
        Outcome::Acked
    }

    async fn finished_locally(&self, prompt_id: &str) -> bool {
        let store = self.core.store.clone();
        let id = prompt_id.to_string();
        matches!(
            tokio::task::spawn_blocking(move || store.history_one(&id)).await,
            Ok(Ok(Some(_)))
        )
    }

    async fn put(&self, key: &str, record: &JobRecord) -> Result<u64, StoreError> {
        let bytes = serde_json::to_vec(record)
            .map_err(|e| StoreError::Queue(format!("cannot encode the job record: {e}")))?;
        let mut last = None;
        for attempt in 0..5u64 {
            match self.queue.jobs.put(key, bytes.clone().into()).await {
                Ok(rev) => return Ok(rev),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
            }
        }
        Err(super::queue_error(
            "cannot write the job record",
            &self.queue.url,
            last.map_or_else(String::new, |e| e.to_string()),
        ))
    }

    /// Stopping: the job goes back to the queue for another worker, at once.
    async fn hand_back(
        &self,
        message: &jetstream::Message,
        key: &str,
        record: &mut JobRecord,
    ) -> Outcome {
        self.core.stop_worker();
        tracing::info!(
            "job {}: handed back to the queue (this worker is stopping)",
            record.prompt_id
        );
        record.state = JobState::Pending;
        record.worker = None;
        record.started_ms = None;
        let _ = self.put(key, record).await;
        let _ = message.ack_with(AckKind::Nak(None)).await;
        Outcome::HandedBack
    }

    /// The job stopped a worker on each of its runs: it is failed, not run again.
    async fn write_off(
        &self,
        message: &jetstream::Message,
        record: &mut JobRecord,
        client: Option<&str>,
        runs: i64,
    ) {
        let text = format!(
            "this prompt was taken by a worker {runs} times and each time the worker stopped \
             before finishing it (killed, out of memory, or a crash); it is not run again"
        );
        tracing::error!("job {}: {text}", record.prompt_id);
        let now = now_ms();
        let error = crate::worker::stopped_error(&record.prompt_id, &text, "WorkerStopped", now);
        record.state = JobState::Done;
        record.attempts = runs;
        record.outputs = Some(json!({}));
        record.meta = Some(json!({}));
        record.status = Some(json!({
            "status_str": "error",
            "completed": false,
            "messages": [["execution_error", error.clone()]],
        }));
        record.finished_ms = Some(now);
        let key = job_key(&record.prompt_id);
        if let Err(e) = self.put(&key, record).await {
            tracing::error!("job {}: {e}", record.prompt_id);
            return;
        }
        self.event(client, "execution_error", error).await;
        self.event(
            client,
            "executing",
            json!({ "node": null, "prompt_id": record.prompt_id }),
        )
        .await;
        let _ = message.ack_with(AckKind::Term).await;
    }

    /// The run is over: outputs to the object store, the record, the client, the ack.
    async fn finish(
        &self,
        message: &jetstream::Message,
        key: &str,
        record: &mut JobRecord,
        client: Option<&str>,
    ) {
        let store = self.core.store.clone();
        let id = record.prompt_id.clone();
        let entry = match tokio::task::spawn_blocking(move || store.history_one(&id)).await {
            Ok(Ok(Some(entry))) => entry,
            other => {
                tracing::error!(
                    "job {}: the run left no history entry ({other:?}); handing it back",
                    record.prompt_id
                );
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
        };
        let mut outputs = entry.outputs.clone();
        if let Err(e) = self.store_outputs(&mut outputs).await {
            tracing::error!("job {}: {e}; handing it back", record.prompt_id);
            retry_soon(message).await;
            return;
        }
        record.state = JobState::Done;
        record.outputs = Some(outputs);
        record.status = Some(entry.status.clone());
        record.meta = Some(entry.meta.clone());
        record.finished_ms = Some(now_ms());
        if let Err(e) = self.put(key, record).await {
            // Not acked: the job comes back after the ack wait and runs again elsewhere.
            tracing::error!("job {}: {e}", record.prompt_id);
            return;
        }
        self.event(
            client,
            "executing",
            json!({ "node": null, "prompt_id": record.prompt_id }),
        )
        .await;
        if let Err(e) = message.double_ack().await {
            // The record says done: a redelivery is skipped.
            tracing::warn!("job {}: ack not confirmed ({e})", record.prompt_id);
        }
        let store = self.core.store.clone();
        let id = record.prompt_id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            store.delete_history(std::slice::from_ref(&id))?;
            store.forget_files(&id)
        })
        .await;
    }

    /// Puts every file of a history entry's outputs into the object store (by content hash)
    /// and names it in the files bucket. A name another worker already gave to other bytes
    /// gets the hash in it, and the entry says so.
    async fn store_outputs(&self, outputs: &mut Json) -> Result<(), StoreError> {
        let url = &self.queue.url;
        let Some(nodes) = outputs.as_object_mut() else {
            return Ok(());
        };
        for ui in nodes.values_mut() {
            let Some(kinds) = ui.as_object_mut() else {
                continue;
            };
            for files in kinds.values_mut() {
                let Some(files) = files.as_array_mut() else {
                    continue;
                };
                for file in files {
                    let (Some(name), Some(kind)) = (
                        file.get("filename")
                            .and_then(Json::as_str)
                            .map(str::to_string),
                        file.get("type").and_then(Json::as_str).map(str::to_string),
                    ) else {
                        continue;
                    };
                    let subfolder = file
                        .get("subfolder")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .to_string();
                    let root = match kind.as_str() {
                        "temp" => &self.core.dirs.temp,
                        "output" => &self.core.dirs.output,
                        _ => continue,
                    };
                    let path = local_path(root, &subfolder, &name);
                    let bytes = tokio::fs::read(&path).await.map_err(|e| {
                        StoreError::Queue(format!("cannot read output '{}': {e}", path.display()))
                    })?;
                    let hash = blake3::hash(&bytes).to_hex().to_string();
                    if self.queue.objects.info(&hash).await.is_err() {
                        self.queue
                            .objects
                            .put(hash.as_str(), &mut bytes.as_slice())
                            .await
                            .map_err(|e| super::queue_error("cannot store an output", url, e))?;
                    }
                    let final_name = self
                        .name_output(&kind, &subfolder, &name, &hash, bytes.len())
                        .await?;
                    if final_name != name {
                        file["filename"] = json!(final_name);
                    }
                }
            }
        }
        Ok(())
    }

    async fn name_output(
        &self,
        kind: &str,
        subfolder: &str,
        name: &str,
        hash: &str,
        size: usize,
    ) -> Result<String, StoreError> {
        let url = &self.queue.url;
        let record = |filename: &str| {
            bytes::Bytes::from(
                json!({
                    "type": kind, "subfolder": subfolder, "filename": filename,
                    "object": hash, "size": size,
                })
                .to_string(),
            )
        };
        let key = file_key(kind, subfolder, name);
        match self.queue.files.create(&key, record(name)).await {
            Ok(_) => return Ok(name.to_string()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(super::queue_error("cannot name an output", url, e)),
        }
        let existing = self
            .queue
            .files
            .get(&key)
            .await
            .map_err(|e| super::queue_error("cannot read an output name", url, e))?;
        let same = existing
            .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
            .is_some_and(|j| j.get("object").and_then(Json::as_str) == Some(hash));
        if same {
            return Ok(name.to_string());
        }
        let renamed = match name.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}_{}.{ext}", &hash[..10]),
            None => format!("{name}_{}", &hash[..10]),
        };
        tracing::info!("output {name}: that name holds other bytes; stored as {renamed}");
        self.queue
            .files
            .put(file_key(kind, subfolder, &renamed), record(&renamed))
            .await
            .map_err(|e| super::queue_error("cannot name an output", url, e))?;
        Ok(renamed)
    }

    async fn event(&self, client: Option<&str>, kind: &str, data: Json) {
        let prompt = data
            .get("prompt_id")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let event = super::Event {
            client: client.map(str::to_string),
            kind: kind.into(),
            data,
        };
        if let Ok(payload) = serde_json::to_vec(&event) {
            let subject = format!("{EVENTS_PREFIX}.{}", job_key(&prompt));
            if let Err(e) = self.queue.client.publish(subject, payload.into()).await {
                tracing::warn!("job {prompt}: cannot publish {kind}: {e}");
            }
        }
    }
}

/// Gives a job back to the queue, to be delivered again (here or elsewhere) in a second.
async fn retry_soon(message: &jetstream::Message) {
    let _ = message
        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
        .await;
}

fn local_path(root: &Path, subfolder: &str, name: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    for part in subfolder.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
    }
    path.push(name);
    path
}

/// Publishes what the engine thread sends to clients. Broadcasts (the local journal's queue
/// size) and the end of a job (sent by [`Worker::finish`] once the record is written) stay
/// here.
async fn publish_events(
    client: async_nats::Client,
    mut rx: tokio::sync::mpsc::Receiver<Forwarded>,
) {
    while let Some(message) = rx.recv().await {
        match message {
            Forwarded::Json { client: None, .. } => {}
            Forwarded::Json {
                client: Some(sid),
                kind,
                data,
            } => {
                if kind == "executing" && data.get("node").is_some_and(Json::is_null) {
                    continue;
                }
                let prompt = data
                    .get("prompt_id")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_string();
                let event = super::Event {
                    client: Some(sid),
                    kind,
                    data,
                };
                if let Ok(payload) = serde_json::to_vec(&event) {
                    let subject = format!("{EVENTS_PREFIX}.{}", job_key(&prompt));
                    let _ = client.publish(subject, payload.into()).await;
                }
            }
            Forwarded::Preview {
                client: sid,
                node,
                prompt_id,
                png,
            } => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(PREVIEW_CLIENT, sid.as_str());
                headers.insert(PREVIEW_NODE, node.as_str());
                headers.insert(PREVIEW_PROMPT, prompt_id.as_str());
                let subject = format!("{EVENTS_PREFIX}.{}", job_key(&prompt_id));
                let _ = client
                    .publish_with_headers(subject, headers, png.into())
                    .await;
            }
        }
    }
}

/// `/interrupt` and `/free` from any front door.
async fn control(
    client: async_nats::Client,
    core: Arc<Core>,
    held: Arc<std::sync::Mutex<VecDeque<String>>>,
) {
    let mut interrupts = match client.subscribe(INTERRUPT_SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("queue: cannot subscribe to interrupts: {e}");
            return;
        }
    };
    let mut frees = match client.subscribe(FREE_SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("queue: cannot subscribe to /free: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(m) = interrupts.next() => {
                let target = String::from_utf8_lossy(&m.payload).to_string();
                let target = (!target.is_empty()).then_some(target);
                crate::routes::interrupt(&core, target.as_deref());
            }
            Some(m) = frees.next() => {
                let request: Json = serde_json::from_slice(&m.payload).unwrap_or(Json::Null);
                let flag = |k: &str| request.get(k).and_then(Json::as_bool).unwrap_or(false);
                let (unload_models, free_memory) = (flag("unload_models"), flag("free_memory"));
                if unload_models {
                    held.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
                core.tell_worker(WorkerMsg::Free { unload_models, free_memory });
            }
            else => return,
        }
    }
}
