//! The shared queue on NATS JetStream: front doors (`veetance serve --queue`) publish prompts,
//! workers (`veetance worker --queue`) run them. See `docs/distributed.md` for the design.
//!
//! What lives in JetStream:
//! - stream [`STREAM`] (work-queue retention, file storage): one message per accepted prompt on
//!   `veetance.jobs.<model>`, where `<model>` names the model files the prompt loads
//!   ([`model_key`]). Each model has one durable pull consumer (`m-<model>`), shared by every
//!   worker; a worker asks first the consumers of the models it holds (model affinity).
//! - KV bucket [`JOBS_BUCKET`]: one record per prompt ([`JobRecord`]): its state, the worker
//!   running it, and once done its history entry. Front doors answer `/queue`, `/history` and
//!   `/api/jobs` from a live copy of it.
//! - Object store [`OUTPUTS_BUCKET`]: output files by content hash (BLAKE3); KV bucket
//!   [`FILES_BUCKET`] maps ComfyUI's `(type, subfolder, filename)` to them, for `/view`.
//! - Core NATS subjects: `veetance.events.<prompt>` (a job's WebSocket messages, relayed by
//!   every front door to its clients), `veetance.wake.<model>` (a new job: idle workers look),
//!   `veetance.control.{interrupt,free}` (`/interrupt`, `/free` for every worker).

mod front;
mod work;

pub use front::FrontDoor;
pub use work::{run_worker, WorkerOptions};

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::store::{HistoryEntry, JobRow, Number, QueueItem, State, StoreError, MAX_ATTEMPTS};

/// The work-queue stream of jobs.
pub const STREAM: &str = "VEETANCE_JOBS";
/// Job subjects: `veetance.jobs.<model>`.
pub const JOBS_PREFIX: &str = "veetance.jobs";
/// Job records by prompt.
pub const JOBS_BUCKET: &str = "veetance_jobs";
/// `(type, subfolder, filename)` of an output -> its object.
pub const FILES_BUCKET: &str = "veetance_files";
/// Output files by content hash.
pub const OUTPUTS_BUCKET: &str = "veetance_outputs";
pub const EVENTS_PREFIX: &str = "veetance.events";
pub const WAKE_PREFIX: &str = "veetance.wake";
pub const INTERRUPT_SUBJECT: &str = "veetance.control.interrupt";
pub const FREE_SUBJECT: &str = "veetance.control.free";

/// How long a delivered job may go without an ack or a progress ack before JetStream gives it
/// to another worker: a worker that dies loses its job for at most this long.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a running job's worker tells JetStream it is still working.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Deliveries of one job: [`MAX_ATTEMPTS`] runs, then one more delivery on which a worker
/// writes the job off as failed (a job that kills every worker that takes it).
pub const MAX_DELIVER: i64 = MAX_ATTEMPTS + 1;
/// Messages with the same `Nats-Msg-Id` (the prompt id) within this window are one job.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

pub(crate) fn queue_error(what: &str, url: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Queue(format!("queue {url}: {what}: {e}"))
}

/// A connection to the queue server, with the stream and buckets made ready.
#[derive(Clone)]
pub(crate) struct Queue {
    pub url: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: stream::Stream,
    pub jobs: kv::Store,
    pub files: kv::Store,
    pub objects: object_store::ObjectStore,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("url", &self.url).finish()
    }
}

impl Queue {
    /// Connects (failing within seconds, with the reason, when the server is not there) and
    /// creates the stream and buckets that do not exist yet. After the first connection the
    /// client reconnects by itself, and says so in the log.
    pub async fn connect(url: &str, name: &str) -> Result<Queue, StoreError> {
        let label = url.to_string();
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let label = label.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => tracing::warn!(
                            "queue {label}: disconnected; reconnecting (jobs wait meanwhile)"
                        ),
                        async_nats::Event::Connected => {
                            tracing::info!("queue {label}: connected")
                        }
                        other => tracing::warn!("queue {label}: {other}"),
                    }
                }
            });
        let client = async_nats::connect_with_options(url, options)
            .await
            .map_err(|e| {
                StoreError::Queue(format!(
                    "cannot reach the queue server at {url}: {e} (is `nats-server -js` running \
                     there, and is the address right?)"
                ))
            })?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                description: Some("Veetance prompts waiting for a worker".into()),
                subjects: vec![format!("{JOBS_PREFIX}.>")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                queue_error(
                    "cannot open the job stream (is JetStream on: `nats-server -js`?)",
                    url,
                    e,
                )
            })?;
        let jobs = key_value(&js, url, JOBS_BUCKET, "Veetance job records").await?;
        let files = key_value(&js, url, FILES_BUCKET, "Veetance output names").await?;
        let objects = match js.get_object_store(OUTPUTS_BUCKET).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: OUTPUTS_BUCKET.into(),
                    description: Some("Veetance output files by content hash".into()),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| queue_error("cannot open the output store", url, e))?,
        };
        Ok(Queue {
            url: url.to_string(),
            client,
            js,
            stream,
            jobs,
            files,
            objects,
        })
    }

    /// The durable consumer of one model's jobs, created if needed.
    pub async fn consumer(
        &self,
        model: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, StoreError> {
        let name = format!("m-{model}");
        self.stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("jobs for model {model}")),
                    filter_subject: format!("{JOBS_PREFIX}.{model}"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: MAX_DELIVER,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| queue_error(&format!("cannot open consumer {name}"), &self.url, e))
    }
}

async fn key_value(
    js: &jetstream::Context,
    url: &str,
    bucket: &str,
    description: &str,
) -> Result<kv::Store, StoreError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    // The bucket's stream as the KV convention lays it out (what `create_key_value` makes),
    // created directly: the client's `create_key_value` first reads account information in a
    // shape older servers (Debian's 2.9) do not answer with.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| queue_error(&format!("cannot create bucket {bucket}"), url, e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| queue_error(&format!("cannot open bucket {bucket}"), url, e))
}

/// What a front door publishes for a prompt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobMessage {
    pub prompt_id: String,
    /// The client's `number`; `None`: the stream sequence (negated with `front`).
    pub number: Option<f64>,
    #[serde(default)]
    pub front: bool,
    pub prompt: Json,
    pub extra_data: Json,
    pub outputs_to_execute: Vec<String>,
    pub created_ms: i64,
    pub model: String,
    /// The front door sends previews to prompts that do not choose (`--preview-method auto`).
    #[serde(default)]
    pub previews: bool,
}

impl JobMessage {
    /// The queue number: the client's, or the stream sequence of the job's message, which
    /// every front door and worker sees the same.
    pub fn number(&self, sequence: u64) -> Number {
        match self.number {
            Some(value) => Number {
                value,
                is_float: true,
            },
            None => Number {
                value: if self.front {
                    -(sequence as f64)
                } else {
                    sequence as f64
                },
                is_float: false,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JobState {
    Pending,
    Running,
    Done,
    /// Deleted from the queue before it ran; the worker that receives it drops it.
    Cancelled,
}

/// Headers of a preview event (the payload is the PNG).
pub const PREVIEW_CLIENT: &str = "Veetance-Preview-Client";
pub const PREVIEW_NODE: &str = "Veetance-Preview-Node";
pub const PREVIEW_PROMPT: &str = "Veetance-Preview-Prompt";

/// A job's WebSocket message, as a worker publishes it on `veetance.events.<prompt>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Event {
    /// The client (`client_id`) it is for.
    pub client: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Json,
}

/// A prompt's record in [`JOBS_BUCKET`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub prompt_id: String,
    pub number: f64,
    pub number_is_float: bool,
    pub prompt: Json,
    pub extra_data: Json,
    pub outputs_to_execute: Vec<String>,
    pub created_ms: i64,
    pub model: String,
    pub state: JobState,
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub started_ms: Option<i64>,
    #[serde(default)]
    pub attempts: i64,
    #[serde(default)]
    pub outputs: Option<Json>,
    #[serde(default)]
    pub status: Option<Json>,
    #[serde(default)]
    pub meta: Option<Json>,
    #[serde(default)]
    pub finished_ms: Option<i64>,
}

impl JobRecord {
    pub fn new(job: &JobMessage, sequence: u64) -> JobRecord {
        let number = job.number(sequence);
        JobRecord {
            prompt_id: job.prompt_id.clone(),
            number: number.value,
            number_is_float: number.is_float,
            prompt: job.prompt.clone(),
            extra_data: job.extra_data.clone(),
            outputs_to_execute: job.outputs_to_execute.clone(),
            created_ms: job.created_ms,
            model: job.model.clone(),
            state: JobState::Pending,
            worker: None,
            started_ms: None,
            attempts: 0,
            outputs: None,
            status: None,
            meta: None,
            finished_ms: None,
        }
    }

    pub fn number(&self) -> Number {
        Number {
            value: self.number,
            is_float: self.number_is_float,
        }
    }

    pub fn item(&self) -> QueueItem {
        QueueItem {
            number: self.number(),
            prompt_id: self.prompt_id.clone(),
            prompt: self.prompt.clone(),
            extra_data: self.extra_data.clone(),
            outputs_to_execute: self.outputs_to_execute.clone(),
            attempts: self.attempts,
        }
    }

    pub fn history(&self) -> Option<HistoryEntry> {
        (self.state == JobState::Done).then(|| HistoryEntry {
            item: self.item(),
            outputs: self
                .outputs
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
            status: self.status.clone().unwrap_or(Json::Null),
            meta: self.meta.clone().unwrap_or_else(|| serde_json::json!({})),
            created_ms: self.created_ms,
        })
    }

    pub fn row(&self) -> Option<JobRow> {
        let state = match self.state {
            JobState::Pending => State::Pending,
            JobState::Running => State::Running,
            JobState::Done => State::Done,
            JobState::Cancelled => return None,
        };
        Some(JobRow {
            prompt_id: self.prompt_id.clone(),
            state,
            number: self.number(),
            created_ms: self.created_ms,
            workflow_id: self
                .extra_data
                .pointer("/extra_pnginfo/workflow/id")
                .and_then(Json::as_str)
                .map(str::to_string),
            outputs: self
                .outputs
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
            status: self.status.clone().unwrap_or(Json::Null),
            worker: self.worker.clone(),
        })
    }
}

/// A KV key (and subject token) for a prompt id: the id itself when it is made of letters,
/// digits, `-` and `_` (UUIDs are), else `x` and its bytes in hex, so any id ComfyUI accepts
/// has a key.
pub(crate) fn job_key(prompt_id: &str) -> String {
    let plain = !prompt_id.is_empty()
        && prompt_id.len() <= 128
        && prompt_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        format!("j-{prompt_id}")
    } else {
        let hex: String = prompt_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{}", &hex[..hex.len().min(400)])
    }
}

/// The key of an output's name in [`FILES_BUCKET`].
pub(crate) fn file_key(kind: &str, subfolder: &str, filename: &str) -> String {
    let hash = blake3::hash(format!("{kind}\0{subfolder}\0{filename}").as_bytes());
    format!("f-{}", &hash.to_hex()[..40])
}

/// The models a prompt needs, as one subject token: a hash of the file names its loaders
/// load (every `*_name` string input of a `*Loader*` node), or `none`. Prompts with the same
/// key need the same weights, so a worker that ran one holds what the next needs.
pub(crate) fn model_key(prompt: &Json) -> String {
    let mut names: Vec<String> = Vec::new();
    if let Some(nodes) = prompt.as_object() {
        for node in nodes.values() {
            let class = node.get("class_type").and_then(Json::as_str).unwrap_or("");
            if !class.contains("Loader") {
                continue;
            }
            if let Some(inputs) = node.get("inputs").and_then(Json::as_object) {
                for (name, value) in inputs {
                    if let (true, Some(v)) = (name.ends_with("_name"), value.as_str()) {
                        names.push(format!("{class}.{name}={v}"));
                    }
                }
            }
        }
    }
    if names.is_empty() {
        return "none".into();
    }
    names.sort();
    names.dedup();
    blake3::hash(names.join("\n").as_bytes()).to_hex()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn model_key_follows_loader_files_not_other_inputs() {
        let a = json!({
            "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "klein-4b.safetensors", "weight_dtype": "default"}},
            "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen.safetensors"}},
            "3": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        });
        let mut b = a.clone();
        b["3"]["inputs"]["noise_seed"] = json!(2);
        b["1"]["inputs"]["weight_dtype"] = json!("fp8");
        assert_eq!(model_key(&a), model_key(&b));
        let mut c = a.clone();
        c["1"]["inputs"]["unet_name"] = json!("klein-9b.safetensors");
        assert_ne!(model_key(&a), model_key(&c));
        assert_eq!(model_key(&json!({})), "none");
        assert_eq!(model_key(&a).len(), 16);
    }

    #[test]
    fn job_keys_are_valid_kv_keys_and_distinct() {
        let uuid = "3f2b1c4e-8a9d-4e2f-b1c3-9d8e7f6a5b4c";
        assert_eq!(job_key(uuid), format!("j-{uuid}"));
        let odd = job_key("a b/ç.");
        assert!(odd.starts_with("x-"));
        assert!(odd[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(job_key("ab"), job_key("x-6162"));
    }
}
