//! What the routes need from a queue, whichever one runs the prompts: the embedded one
//! ([`Store`], SQLite, run by this process's engine thread) or a NATS JetStream queue shared
//! by front doors and workers ([`crate::nats::FrontDoor`], `veetance serve --queue`).

use crate::store::{
    Enqueued, HistoryEntry, JobRow, NewPrompt, QueueItem, State, Store, StoreError,
};

/// The queue and history behind the HTTP API. Every method is synchronous and short; the
/// routes call them from blocking tasks.
pub(crate) trait JobQueue: Send + Sync {
    /// Queues a prompt (idempotent per `prompt_id`).
    fn enqueue(&self, new: NewPrompt) -> Result<Enqueued, StoreError>;
    /// The running and the pending prompts, each in run order.
    fn queue(&self) -> Result<(Vec<QueueItem>, Vec<QueueItem>), StoreError>;
    /// Prompts queued or running.
    fn remaining(&self) -> Result<usize, StoreError>;
    /// Removes pending prompts by id; the ids that were removed.
    fn delete_pending(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// Removes every pending prompt; their ids.
    fn clear_pending(&self) -> Result<Vec<String>, StoreError>;
    /// The history, oldest first, sliced as ComfyUI's `get_history(max_items, offset)`.
    fn history(
        &self,
        max_items: Option<usize>,
        offset: Option<i64>,
    ) -> Result<Vec<HistoryEntry>, StoreError>;
    fn history_one(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, StoreError>;
    fn delete_history(&self, ids: &[String]) -> Result<(), StoreError>;
    fn clear_history(&self) -> Result<(), StoreError>;
    /// A queued or running prompt.
    fn queued_item(&self, prompt_id: &str) -> Result<Option<(State, QueueItem)>, StoreError>;
    /// Every prompt known, for the jobs listing.
    fn job_rows(&self) -> Result<Vec<JobRow>, StoreError>;
    /// The worker running or that ran a prompt, where the queue knows (a shared queue).
    fn worker_of(&self, _prompt_id: &str) -> Option<String> {
        None
    }
}

impl JobQueue for Store {
    fn enqueue(&self, new: NewPrompt) -> Result<Enqueued, StoreError> {
        Store::enqueue(self, new)
    }
    fn queue(&self) -> Result<(Vec<QueueItem>, Vec<QueueItem>), StoreError> {
        Store::queue(self)
    }
    fn remaining(&self) -> Result<usize, StoreError> {
        Store::remaining(self)
    }
    fn delete_pending(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        Store::delete_pending(self, ids)
    }
    fn clear_pending(&self) -> Result<Vec<String>, StoreError> {
        Store::clear_pending(self)
    }
    fn history(
        &self,
        max_items: Option<usize>,
        offset: Option<i64>,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        Store::history(self, max_items, offset)
    }
    fn history_one(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, StoreError> {
        Store::history_one(self, prompt_id)
    }
    fn delete_history(&self, ids: &[String]) -> Result<(), StoreError> {
        Store::delete_history(self, ids)
    }
    fn clear_history(&self) -> Result<(), StoreError> {
        Store::clear_history(self)
    }
    fn queued_item(&self, prompt_id: &str) -> Result<Option<(State, QueueItem)>, StoreError> {
        Store::queued_item(self, prompt_id)
    }
    fn job_rows(&self) -> Result<Vec<JobRow>, StoreError> {
        Store::job_rows(self)
    }
}
