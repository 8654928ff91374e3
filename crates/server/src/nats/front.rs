//! The front door's side of the shared queue: publishes accepted prompts, keeps a live copy of
//! the job records (a KV watch) to answer `/queue`, `/history` and `/api/jobs` without a round
//! trip, relays the workers' events to this server's WebSocket clients, and reads outputs from
//! the object store for `/view`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use tokio::io::AsyncReadExt;

use super::{
    job_key, model_key, queue_error, JobMessage, JobRecord, JobState, Queue, FREE_SUBJECT,
    INTERRUPT_SUBJECT, JOBS_PREFIX, WAKE_PREFIX,
};
use crate::queue::JobQueue;
use crate::store::{
    scrub_extra_data, Enqueued, HistoryEntry, JobRow, NewPrompt, QueueItem, State, StoreError,
};
use crate::Core;

/// A record and the KV revision it came from.
struct Held {
    revision: u64,
    record: JobRecord,
}

#[derive(Default)]
struct View {
    /// By prompt id.
    jobs: HashMap<String, Held>,
    /// KV key -> prompt id, for deletions (which carry only the key).
    keys: HashMap<String, String>,
}

/// A front door of the shared queue (`veetance serve --queue`).
pub struct FrontDoor {
    queue: Queue,
    runtime: Option<tokio::runtime::Runtime>,
    view: Mutex<View>,
    /// Models whose consumer this process made sure of.
    consumers: tokio::sync::Mutex<HashSet<String>>,
    core: OnceLock<Weak<Core>>,
    history_max: usize,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor")
            .field("queue", &self.queue.url)
            .finish()
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What changed when a record was applied to the view.
#[derive(Default)]
struct Changes {
    finished: Vec<String>,
    queue_changed: bool,
}

impl FrontDoor {
    /// Connects to the queue at `url` and loads the job records.
    pub fn connect(url: &str, history_max: usize) -> Result<Arc<FrontDoor>, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("veetance-queue")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Queue(format!("cannot start the queue client: {e}")))?;
        let queue = runtime.block_on(Queue::connect(url, "veetance serve"))?;
        let front = Arc::new(FrontDoor {
            queue,
            runtime: Some(runtime),
            view: Mutex::new(View::default()),
            consumers: tokio::sync::Mutex::new(HashSet::new()),
            core: OnceLock::new(),
            history_max: history_max.max(1),
        });
        // The watch holds a weak reference: the front door goes when the server does.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        front.rt().spawn(watch(
            Arc::downgrade(&front),
            front.queue.jobs.clone(),
            ready_tx,
        ));
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            tracing::warn!(
                "queue {url}: the job records did not load within a minute; /queue and \
                 /history fill in as they arrive"
            );
        }
        tracing::info!("queue {url}: front door ready");
        Ok(front)
    }

    /// Hooks the server up: finished jobs wake their waiters and queue changes reach the
    /// WebSocket clients; workers' events are relayed.
    pub(crate) fn attach(self: &Arc<Self>, core: &Arc<Core>) {
        let _ = self.core.set(Arc::downgrade(core));
        self.rt()
            .spawn(relay(Arc::downgrade(self), self.queue.client.clone()));
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the front door's runtime lives as long as it")
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt().block_on(f)
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a KV entry (a record, or `None` for a deletion) if it is newer than what the
    /// view has, then tells the server what changed.
    fn apply(&self, key: &str, revision: u64, record: Option<JobRecord>) {
        let changes = {
            let mut view = self.view();
            apply_to(&mut view, key, revision, record)
        };
        self.announce(changes);
    }

    fn announce(&self, changes: Changes) {
        let Some(core) = self.core.get().and_then(Weak::upgrade) else {
            return;
        };
        for id in &changes.finished {
            core.notify_done(id);
        }
        if changes.queue_changed {
            core.broadcast_status();
        }
    }

    /// Drops the oldest history entries beyond the cap (any front door may; deleting twice is
    /// harmless).
    async fn trim_history(&self) {
        let extra: Vec<String> = {
            let view = self.view();
            let mut done: Vec<(&String, i64, f64)> = view
                .jobs
                .iter()
                .filter(|(_, h)| h.record.state == JobState::Done)
                .map(|(id, h)| (id, h.record.finished_ms.unwrap_or(0), h.record.number))
                .collect();
            if done.len() <= self.history_max {
                return;
            }
            done.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
            let n = done.len() - self.history_max;
            done[..n].iter().map(|(id, _, _)| (*id).clone()).collect()
        };
        for id in extra {
            if let Err(e) = self.queue.jobs.delete(job_key(&id)).await {
                tracing::warn!("queue: cannot drop old history entry {id}: {e}");
            }
        }
    }

    async fn ensure_consumer(&self, model: &str) -> Result<(), StoreError> {
        let mut known = self.consumers.lock().await;
        if !known.contains(model) {
            self.queue.consumer(model).await?;
            known.insert(model.to_string());
        }
        Ok(())
    }

    async fn enqueue_async(&self, new: NewPrompt) -> Result<Enqueued, StoreError> {
        let url = &self.queue.url;
        let key = job_key(&new.prompt_id);
        if let Some(h) = self.view().jobs.get(&new.prompt_id) {
            if h.record.state != JobState::Cancelled {
                return Ok(Enqueued::Existing(h.record.number()));
            }
        }
        let previous = self
            .queue
            .jobs
            .entry(key.clone())
            .await
            .map_err(|e| queue_error("cannot read the job records", url, e))?
            .filter(|e| e.operation == kv::Operation::Put);
        let mut cancelled_revision = None;
        if let Some(entry) = &previous {
            if let Ok(record) = serde_json::from_slice::<JobRecord>(&entry.value) {
                if record.state != JobState::Cancelled {
                    let number = record.number();
                    self.apply(&key, entry.revision, Some(record));
                    return Ok(Enqueued::Existing(number));
                }
                cancelled_revision = Some(entry.revision);
            }
        }
        let model = model_key(&new.prompt);
        self.ensure_consumer(&model).await?;
        let mut extra_data = new.extra_data;
        scrub_extra_data(&mut extra_data);
        let message = JobMessage {
            prompt_id: new.prompt_id.clone(),
            number: new.number,
            front: new.front,
            prompt: new.prompt,
            extra_data,
            outputs_to_execute: new.outputs_to_execute,
            created_ms: new.created_ms,
            model: model.clone(),
            previews: self
                .core
                .get()
                .and_then(Weak::upgrade)
                .is_some_and(|c| c.preview == crate::PreviewMethod::Auto),
        };
        let payload = serde_json::to_vec(&message)
            .map_err(|e| StoreError::Queue(format!("cannot encode the job: {e}")))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, new.prompt_id.as_str());
        let ack = self
            .queue
            .js
            .publish_with_headers(format!("{JOBS_PREFIX}.{model}"), headers, payload.into())
            .await
            .map_err(|e| queue_error("cannot publish the job", url, e))?
            .await
            .map_err(|e| queue_error("the queue did not store the job", url, e))?;
        let record = JobRecord::new(&message, ack.sequence);
        let number = record.number();
        let bytes: bytes::Bytes = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Queue(format!("cannot encode the job record: {e}")))?
            .into();
        let written = match cancelled_revision {
            Some(rev) => self
                .queue
                .jobs
                .update(&key, bytes, rev)
                .await
                .map_err(|e| e.to_string()),
            None => self
                .queue
                .jobs
                .create(&key, bytes)
                .await
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(revision) => self.apply(&key, revision, Some(record)),
            // A worker took the job first and wrote its own record: the watch brings it.
            Err(e) => tracing::debug!("job {}: record already written ({e})", new.prompt_id),
        }
        let _ = self
            .queue
            .client
            .publish(format!("{WAKE_PREFIX}.{model}"), bytes::Bytes::new())
            .await;
        Ok(Enqueued::New(number))
    }

    /// Marks pending jobs cancelled (the worker that receives one drops it).
    async fn cancel_pending(&self, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        let mut removed = Vec::new();
        for id in ids {
            let found = self.view().jobs.get(&id).and_then(|h| {
                (h.record.state == JobState::Pending).then(|| (h.revision, h.record.clone()))
            });
            let Some((revision, mut record)) = found else {
                continue;
            };
            record.state = JobState::Cancelled;
            let key = job_key(&id);
            let bytes: bytes::Bytes = match serde_json::to_vec(&record) {
                Ok(b) => b.into(),
                Err(_) => continue,
            };
            // Only if nobody changed it since (a worker starting it wins).
            if let Ok(rev) = self.queue.jobs.update(&key, bytes, revision).await {
                self.apply(&key, rev, Some(record));
                removed.push(id);
            }
        }
        Ok(removed)
    }

    async fn delete_done(&self, ids: Vec<String>) -> Result<(), StoreError> {
        for id in ids {
            let done = self
                .view()
                .jobs
                .get(&id)
                .is_some_and(|h| h.record.state == JobState::Done);
            if done {
                let key = job_key(&id);
                self.queue.jobs.delete(&key).await.map_err(|e| {
                    queue_error("cannot delete a history entry", &self.queue.url, e)
                })?;
                let mut view = self.view();
                view.jobs.remove(&id);
                view.keys.remove(&key);
            }
        }
        Ok(())
    }

    /// `/interrupt`: every worker running `prompt_id` (or any prompt) stops it. Whether this
    /// front door knows of such a running prompt.
    pub fn interrupt(&self, prompt_id: Option<&str>) -> bool {
        let running = self.view().jobs.values().any(|h| {
            h.record.state == JobState::Running
                && prompt_id.is_none_or(|id| id == h.record.prompt_id)
        });
        let payload = bytes::Bytes::from(prompt_id.unwrap_or("").to_string());
        let client = self.queue.client.clone();
        self.rt().spawn(async move {
            if let Err(e) = client.publish(INTERRUPT_SUBJECT, payload).await {
                tracing::error!("/interrupt could not reach the workers: {e}");
            }
        });
        running
    }

    /// `/free`: every worker frees memory between jobs.
    pub fn free(&self, unload_models: bool, free_memory: bool) {
        let payload = bytes::Bytes::from(
            json!({ "unload_models": unload_models, "free_memory": free_memory }).to_string(),
        );
        let client = self.queue.client.clone();
        self.rt().spawn(async move {
            if let Err(e) = client.publish(FREE_SUBJECT, payload).await {
                tracing::error!("/free could not reach the workers: {e}");
            }
        });
    }

    /// An output file from the object store, by ComfyUI's `(type, subfolder, filename)`.
    pub fn output_file(
        &self,
        kind: &str,
        subfolder: &str,
        filename: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = super::file_key(kind, subfolder, filename);
        self.block_on(async {
            let url = &self.queue.url;
            let Some(entry) = self
                .queue
                .files
                .get(&key)
                .await
                .map_err(|e| queue_error("cannot read the output names", url, e))?
            else {
                return Ok(None);
            };
            let Some(object) = serde_json::from_slice::<Json>(&entry)
                .ok()
                .and_then(|j| j.get("object").and_then(Json::as_str).map(str::to_string))
            else {
                return Ok(None);
            };
            let mut reader = match self.queue.objects.get(&object).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("output {filename}: object {object} is missing: {e}");
                    return Ok(None);
                }
            };
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| queue_error("cannot read an output", url, e))?;
            Ok(Some(bytes))
        })
    }

    /// Makes sure the view holds the final record of `prompt_id` (read from the KV when the
    /// watch has not brought it yet), so that a client told "finished" finds it in /history.
    async fn settle(&self, prompt_id: &str) {
        let done = self
            .view()
            .jobs
            .get(prompt_id)
            .is_some_and(|h| h.record.state == JobState::Done);
        if done {
            return;
        }
        let key = job_key(prompt_id);
        if let Ok(Some(entry)) = self.queue.jobs.entry(key.clone()).await {
            if entry.operation == kv::Operation::Put {
                if let Ok(record) = serde_json::from_slice::<JobRecord>(&entry.value) {
                    self.apply(&key, entry.revision, Some(record));
                }
            }
        }
    }

    fn records(&self, state: JobState) -> Vec<JobRecord> {
        let mut out: Vec<JobRecord> = self
            .view()
            .jobs
            .values()
            .filter(|h| h.record.state == state)
            .map(|h| h.record.clone())
            .collect();
        if state == JobState::Done {
            out.sort_by(|a, b| {
                a.finished_ms
                    .cmp(&b.finished_ms)
                    .then(a.number.total_cmp(&b.number))
            });
        } else {
            out.sort_by(|a, b| {
                a.number
                    .total_cmp(&b.number)
                    .then(a.prompt_id.cmp(&b.prompt_id))
            });
        }
        out
    }
}

fn apply_to(view: &mut View, key: &str, revision: u64, record: Option<JobRecord>) -> Changes {
    let mut changes = Changes::default();
    let id = match &record {
        Some(r) => r.prompt_id.clone(),
        None => match view.keys.get(key) {
            Some(id) => id.clone(),
            None => return changes,
        },
    };
    let old = view.jobs.get(&id);
    if old.is_some_and(|h| h.revision >= revision) {
        return changes;
    }
    let old_state = old.map(|h| h.record.state);
    let new_state = record.as_ref().map(|r| r.state);
    let active = |s: Option<JobState>| matches!(s, Some(JobState::Pending | JobState::Running));
    changes.queue_changed = active(old_state) != active(new_state) || old_state != new_state;
    if active(old_state) && !active(new_state) {
        changes.finished.push(id.clone());
    }
    match record {
        Some(record) => {
            view.keys.insert(key.to_string(), id.clone());
            view.jobs.insert(id, Held { revision, record });
        }
        None => {
            view.keys.remove(key);
            view.jobs.remove(&id);
        }
    }
    changes
}

/// Follows the job records for as long as the front door lives; says when the first load is
/// complete.
async fn watch(front: Weak<FrontDoor>, jobs: kv::Store, ready: std::sync::mpsc::Sender<()>) {
    let mut ready = Some(ready);
    loop {
        match jobs.status().await {
            Ok(status) if status.values() == 0 => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            _ => {}
        }
        // Every record there is, then every change (`watch_all` alone gives only changes). The
        // bucket keeps one revision per key, so this is one entry per job.
        let mut watch = match jobs.watch_all_from_revision(1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("queue: cannot follow the job records ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if front.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            let Some(front) = front.upgrade() else { return };
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("queue: the job record watch failed ({e}); restarting it");
                    break;
                }
            };
            let record = match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<JobRecord>(&entry.value) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!("queue: job record {} is not valid: {e}", entry.key);
                        continue;
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            let finished = record.as_ref().is_some_and(|r| r.state == JobState::Done);
            front.apply(&entry.key, entry.revision, record);
            if entry.delta == 0 {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            if finished {
                front.trim_history().await;
            }
        }
        if front.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Relays the workers' events (`veetance.events.>`) to this server's WebSocket clients.
async fn relay(front: Weak<FrontDoor>, client: async_nats::Client) {
    let mut events = loop {
        match client
            .subscribe(format!("{}.>", super::EVENTS_PREFIX))
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("queue: cannot subscribe to job events ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(message) = events.next().await {
        let Some(front) = front.upgrade() else { return };
        let Some(core) = front.core.get().and_then(Weak::upgrade) else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        if let Some(client_id) = header(super::PREVIEW_CLIENT) {
            let node = header(super::PREVIEW_NODE).unwrap_or_default();
            let prompt = header(super::PREVIEW_PROMPT).unwrap_or_default();
            core.hub
                .send_preview(&client_id, &node, &prompt, message.payload.to_vec());
            continue;
        }
        let Ok(event) = serde_json::from_slice::<super::Event>(&message.payload) else {
            tracing::warn!("queue: an event on {} is not valid", message.subject);
            continue;
        };
        if event.kind == "executing" && event.data.get("node").is_some_and(Json::is_null) {
            // The job's end: its record must be readable here before the client is told.
            if let Some(id) = event.data.get("prompt_id").and_then(Json::as_str) {
                front.settle(id).await;
            }
        }
        if let Some(client_id) = event.client.as_deref() {
            core.hub.send_json(Some(client_id), &event.kind, event.data);
        }
    }
}

impl JobQueue for FrontDoor {
    fn enqueue(&self, new: NewPrompt) -> Result<Enqueued, StoreError> {
        self.block_on(self.enqueue_async(new))
    }

    fn queue(&self) -> Result<(Vec<QueueItem>, Vec<QueueItem>), StoreError> {
        let running = self
            .records(JobState::Running)
            .iter()
            .map(JobRecord::item)
            .collect();
        let pending = self
            .records(JobState::Pending)
            .iter()
            .map(JobRecord::item)
            .collect();
        Ok((running, pending))
    }

    fn remaining(&self) -> Result<usize, StoreError> {
        Ok(self
            .view()
            .jobs
            .values()
            .filter(|h| matches!(h.record.state, JobState::Pending | JobState::Running))
            .count())
    }

    fn delete_pending(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.block_on(self.cancel_pending(ids.to_vec()))
    }

    fn clear_pending(&self) -> Result<Vec<String>, StoreError> {
        let ids = self
            .records(JobState::Pending)
            .into_iter()
            .map(|r| r.prompt_id)
            .collect();
        self.block_on(self.cancel_pending(ids))
    }

    fn history(
        &self,
        max_items: Option<usize>,
        offset: Option<i64>,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let done = self.records(JobState::Done);
        let total = done.len() as i64;
        let mut offset = offset.unwrap_or(-1);
        if offset < 0 {
            offset = match max_items {
                Some(m) => total - m as i64,
                None => 0,
            };
        }
        let offset = offset.max(0) as usize;
        Ok(done
            .iter()
            .skip(offset)
            .take(max_items.unwrap_or(usize::MAX))
            .filter_map(JobRecord::history)
            .collect())
    }

    fn history_one(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, StoreError> {
        Ok(self
            .view()
            .jobs
            .get(prompt_id)
            .and_then(|h| h.record.history()))
    }

    fn delete_history(&self, ids: &[String]) -> Result<(), StoreError> {
        self.block_on(self.delete_done(ids.to_vec()))
    }

    fn clear_history(&self) -> Result<(), StoreError> {
        let ids = self
            .records(JobState::Done)
            .into_iter()
            .map(|r| r.prompt_id)
            .collect();
        self.block_on(self.delete_done(ids))
    }

    fn queued_item(&self, prompt_id: &str) -> Result<Option<(State, QueueItem)>, StoreError> {
        Ok(self.view().jobs.get(prompt_id).and_then(|h| {
            let state = match h.record.state {
                JobState::Pending => State::Pending,
                JobState::Running => State::Running,
                _ => return None,
            };
            Some((state, h.record.item()))
        }))
    }

    fn job_rows(&self) -> Result<Vec<JobRow>, StoreError> {
        Ok(self
            .view()
            .jobs
            .values()
            .filter_map(|h| h.record.row())
            .collect())
    }

    fn worker_of(&self, prompt_id: &str) -> Option<String> {
        self.view()
            .jobs
            .get(prompt_id)
            .and_then(|h| h.record.worker.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, state: JobState) -> JobRecord {
        let message = JobMessage {
            prompt_id: id.into(),
            number: None,
            front: false,
            prompt: json!({}),
            extra_data: json!({}),
            outputs_to_execute: vec![],
            created_ms: 0,
            model: "none".into(),
            previews: false,
        };
        let mut r = JobRecord::new(&message, 7);
        r.state = state;
        r
    }

    #[test]
    fn the_view_keeps_the_newest_revision_and_reports_finished_jobs() {
        let mut view = View::default();
        let c = apply_to(&mut view, "j-a", 2, Some(record("a", JobState::Running)));
        assert!(c.queue_changed && c.finished.is_empty());
        // An older revision (the watch replaying what a write already applied) changes nothing.
        let c = apply_to(&mut view, "j-a", 1, Some(record("a", JobState::Pending)));
        assert!(!c.queue_changed);
        assert_eq!(view.jobs["a"].record.state, JobState::Running);
        let c = apply_to(&mut view, "j-a", 3, Some(record("a", JobState::Done)));
        assert_eq!(c.finished, vec!["a".to_string()]);
        let c = apply_to(&mut view, "j-a", 4, None);
        assert!(c.finished.is_empty());
        assert!(view.jobs.is_empty() && view.keys.is_empty());
    }
}
