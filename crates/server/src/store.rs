//! The durable queue and history: one SQLite database (WAL journal, `synchronous=FULL`) in the
//! state folder.
//!
//! A prompt is one row of `prompts` from the moment it is accepted until it leaves the history:
//! `pending` (queued), `running` (taken by the engine thread), `done` (in the history, with its
//! status, outputs and messages). Every file a run writes is a row of `files`, inserted as the
//! engine reports it (`Event::OutputWritten`), before the run goes on. On start-up, a prompt left
//! `running` by a crash has its recorded files deleted, the files it wrote but had not recorded
//! yet removed (see [`Store::recover`] and `docs/server.md`, "Durability"), and runs again, so
//! each prompt ends with one set of outputs.
//!
//! Every method is synchronous and short; the async side calls them through `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value as Json};

/// The most times a prompt is started before the server gives up on it: a prompt that takes
/// the process down every time (killed for memory, say) must not keep the queue from moving.
pub const MAX_ATTEMPTS: i64 = 3;

/// Keys of `extra_data` that ComfyUI treats as secrets and never stores.
const SENSITIVE_EXTRA_DATA_KEYS: [&str; 2] = ["auth_token_comfy_org", "api_key_comfy_org"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("queue database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("queue database: a stored {what} is not valid JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("queue database '{path}': {message}")]
    Open { path: PathBuf, message: String },
    /// The shared queue (NATS JetStream) failed or cannot be reached.
    #[error("{0}")]
    Queue(String),
}

/// Drops the keys of `extra_data` that ComfyUI never stores (API keys for its cloud nodes).
pub(crate) fn scrub_extra_data(extra_data: &mut Json) {
    if let Some(map) = extra_data.as_object_mut() {
        for key in SENSITIVE_EXTRA_DATA_KEYS {
            map.remove(key);
        }
    }
}

/// A queue priority as ComfyUI answers it: the server's counter (an integer) or the client's
/// `number` (a float: `float(json_data['number'])`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Number {
    pub value: f64,
    pub is_float: bool,
}

impl Number {
    pub fn to_json(self) -> Json {
        if self.is_float {
            json!(self.value)
        } else {
            json!(self.value as i64)
        }
    }
}

/// A queued prompt: ComfyUI's queue item `[number, prompt_id, prompt, extra_data,
/// outputs_to_execute]`.
#[derive(Clone, Debug)]
pub struct QueueItem {
    pub number: Number,
    pub prompt_id: String,
    pub prompt: Json,
    pub extra_data: Json,
    pub outputs_to_execute: Vec<String>,
    /// How many times it was started, this time included (more than 1 after a crash).
    pub attempts: i64,
}

impl QueueItem {
    /// The 5-tuple of `GET /queue` and of a history entry's `prompt`.
    pub fn to_json(&self) -> Json {
        json!([
            self.number.to_json(),
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs_to_execute
        ])
    }

    pub fn client_id(&self) -> Option<&str> {
        self.extra_data.get("client_id").and_then(Json::as_str)
    }
}

/// A prompt to queue.
#[derive(Debug)]
pub struct NewPrompt {
    pub prompt_id: String,
    /// The client's `number`; `None`: the server's counter.
    pub number: Option<f64>,
    /// Without `number`: run before everything queued so far (ComfyUI's `-counter`).
    pub front: bool,
    pub prompt: Json,
    pub extra_data: Json,
    pub outputs_to_execute: Vec<String>,
    pub created_ms: i64,
}

/// What `enqueue` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Enqueued {
    /// Queued now with this number.
    New(Number),
    /// A prompt with this id was accepted before; nothing was queued again.
    Existing(Number),
}

/// Where a finished prompt is, as the jobs API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Running,
    Done,
}

/// A finished prompt: its history entry.
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub item: QueueItem,
    pub outputs: Json,
    pub status: Json,
    pub meta: Json,
    pub created_ms: i64,
}

impl HistoryEntry {
    /// The history entry in ComfyUI's shape: `{prompt, outputs, status, meta}`.
    pub fn to_json(&self) -> Json {
        json!({
            "prompt": self.item.to_json(),
            "outputs": self.outputs,
            "status": self.status,
            "meta": self.meta,
        })
    }
}

/// How a run ended, for the history.
#[derive(Debug)]
pub struct Finished {
    pub outputs: Json,
    pub status: Json,
    pub meta: Json,
    pub finished_ms: i64,
}

/// A prompt the previous process left running.
#[derive(Debug)]
pub struct Interrupted {
    pub prompt_id: String,
    pub started_ms: Option<i64>,
    pub attempts: i64,
    pub files: Vec<PathBuf>,
}

/// A row of the jobs listing: what `/api/jobs` needs, without the prompt itself.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub prompt_id: String,
    pub state: State,
    pub number: Number,
    pub created_ms: i64,
    pub workflow_id: Option<String>,
    pub outputs: Json,
    pub status: Json,
    /// The worker running or that ran it (a shared queue only).
    pub worker: Option<String>,
}

pub struct Store {
    /// Every write goes through this connection.
    conn: Mutex<Connection>,
    /// Reads of the queue and the history: WAL lets them run beside a write, so a large
    /// history read never keeps the engine thread from recording a file.
    reader: Mutex<Connection>,
    history_max: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("history_max", &self.history_max)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS prompts (
    id TEXT PRIMARY KEY NOT NULL,
    number REAL NOT NULL,
    number_is_float INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    created_ms INTEGER NOT NULL,
    workflow_id TEXT,
    started_ms INTEGER,
    finished_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    history_seq INTEGER,
    outputs TEXT,
    status TEXT,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS prompts_queue ON prompts (state, number, id);
CREATE INDEX IF NOT EXISTS prompts_history ON prompts (history_seq);
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_prompt ON files (prompt_id);
CREATE INDEX IF NOT EXISTS files_path ON files (path);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
";

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// The `prompt_id` under which uploads into the output and temp folders are recorded, so that
/// crash recovery never takes them for a run's unrecorded outputs.
pub const UPLOADS: &str = "";

const ITEM_COLUMNS: &str =
    "number, number_is_float, id, prompt, extra_data, outputs_to_execute, attempts, started_ms";

fn item_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawItem> {
    Ok(RawItem {
        number: row.get(0)?,
        is_float: row.get(1)?,
        prompt_id: row.get(2)?,
        prompt: row.get(3)?,
        extra_data: row.get(4)?,
        outputs: row.get(5)?,
        attempts: row.get(6)?,
        started_ms: row.get(7)?,
    })
}

/// A queue item as stored, before its JSON is parsed.
struct RawItem {
    number: f64,
    is_float: bool,
    prompt_id: String,
    prompt: String,
    extra_data: String,
    outputs: String,
    attempts: i64,
    started_ms: Option<i64>,
}

fn parse(text: &str, what: &'static str) -> Result<Json, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { what, source })
}

impl RawItem {
    fn parse(self) -> Result<QueueItem, StoreError> {
        let outputs: Vec<String> =
            serde_json::from_str(&self.outputs).map_err(|source| StoreError::Json {
                what: "outputs_to_execute",
                source,
            })?;
        Ok(QueueItem {
            number: Number {
                value: self.number,
                is_float: self.is_float,
            },
            prompt_id: self.prompt_id,
            prompt: parse(&self.prompt, "prompt")?,
            extra_data: parse(&self.extra_data, "extra_data")?,
            outputs_to_execute: outputs,
            attempts: self.attempts,
        })
    }
}

fn state_from(text: &str) -> State {
    match text {
        "pending" => State::Pending,
        "running" => State::Running,
        _ => State::Done,
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, history_max: usize) -> Result<Store, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| open_err(e.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                "{}: the file system does not support SQLite's WAL journal (got {mode}); the \
                 queue stays durable but writers wait for readers",
                path.display()
            );
        }
        // FULL: a commit is on disk before the call returns, so an accepted prompt survives a
        // power loss too, not only a crash of this process.
        // A small page cache (512 KiB, SQLite's default is 2 MiB a connection): the queue's
        // writes touch a few pages, a history read is served by the OS's file cache as well,
        // and a long-running server's memory should not grow with its database.
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; PRAGMA cache_size = -512;",
        )
        .map_err(|e| open_err(e.to_string()))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| open_err(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(open_err(format!(
                "written by a newer Veetance (schema {version}, this one knows {SCHEMA_VERSION}); \
                 use a newer veetance or another --state-dir"
            )));
        }
        conn.execute_batch(SCHEMA)
            .map_err(|e| open_err(e.to_string()))?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(|e| open_err(e.to_string()))?;
        let reader = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        reader
            .execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -512;")
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Store {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            history_max: history_max.max(1),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so the connection stays usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a prompt. The row is committed (on disk) when this returns. A prompt id that
    /// was accepted before is not queued again: the first answer stands (a client retrying a
    /// POST whose answer it lost gets the same `number`).
    pub fn enqueue(&self, new: NewPrompt) -> Result<Enqueued, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing: Option<(f64, bool)> = tx
            .query_row(
                "SELECT number, number_is_float FROM prompts WHERE id = ?1",
                params![new.prompt_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((value, is_float)) = existing {
            return Ok(Enqueued::Existing(Number { value, is_float }));
        }
        let number = match new.number {
            Some(value) => Number {
                value,
                is_float: true,
            },
            None => {
                let counter: i64 = tx
                    .query_row(
                        "SELECT value FROM settings WHERE key = 'counter'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES ('counter', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![counter + 1],
                )?;
                Number {
                    value: if new.front { -counter } else { counter } as f64,
                    is_float: false,
                }
            }
        };
        let mut extra_data = new.extra_data;
        scrub_extra_data(&mut extra_data);
        let workflow_id = extra_data
            .pointer("/extra_pnginfo/workflow/id")
            .and_then(Json::as_str)
            .map(str::to_string);
        tx.execute(
            "INSERT INTO prompts (id, number, number_is_float, prompt, extra_data,
                 outputs_to_execute, state, created_ms, workflow_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8)",
            params![
                new.prompt_id,
                number.value,
                number.is_float,
                new.prompt.to_string(),
                extra_data.to_string(),
                json!(new.outputs_to_execute).to_string(),
                new.created_ms,
                workflow_id,
            ],
        )?;
        tx.commit()?;
        Ok(Enqueued::New(number))
    }

    /// Takes the next prompt (lowest number, then lowest id, as ComfyUI's heap of tuples) and
    /// marks it running.
    pub fn take_next(&self, now_ms: i64) -> Result<Option<QueueItem>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let raw = tx
            .query_row(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM prompts WHERE state = 'pending'
                     ORDER BY number, id LIMIT 1"
                ),
                [],
                item_from_row,
            )
            .optional()?;
        let Some(mut raw) = raw else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE prompts SET state = 'running', started_ms = ?2, attempts = attempts + 1
             WHERE id = ?1",
            params![raw.prompt_id, now_ms],
        )?;
        tx.commit()?;
        raw.attempts += 1;
        raw.started_ms = Some(now_ms);
        raw.parse().map(Some)
    }

    /// Records a file a run (or an upload, under [`UPLOADS`]) wrote.
    pub fn record_file(
        &self,
        prompt_id: &str,
        node_id: &str,
        path: &Path,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO files (prompt_id, node_id, path) VALUES (?1, ?2, ?3)",
            params![prompt_id, node_id, path.to_string_lossy()],
        )?;
        Ok(())
    }

    /// Whether a path is recorded as written by some prompt or upload.
    pub fn is_recorded(&self, path: &Path) -> Result<bool, StoreError> {
        Ok(self
            .reader()
            .query_row(
                "SELECT 1 FROM files WHERE path = ?1 LIMIT 1",
                params![path.to_string_lossy()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Writes the history entry of a prompt and drops the oldest entries beyond the cap.
    pub fn finish(&self, prompt_id: &str, done: &Finished) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(history_seq), 0) + 1 FROM prompts",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE prompts SET state = 'done', finished_ms = ?2, history_seq = ?3,
                 outputs = ?4, status = ?5, meta = ?6
             WHERE id = ?1",
            params![
                prompt_id,
                done.finished_ms,
                seq,
                done.outputs.to_string(),
                done.status.to_string(),
                done.meta.to_string(),
            ],
        )?;
        let cutoff = seq - self.history_max as i64;
        if cutoff > 0 {
            tx.execute(
                "DELETE FROM files WHERE prompt_id IN
                     (SELECT id FROM prompts WHERE state = 'done' AND history_seq <= ?1)",
                params![cutoff],
            )?;
            tx.execute(
                "DELETE FROM prompts WHERE state = 'done' AND history_seq <= ?1",
                params![cutoff],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The running and the pending prompts, each in run order.
    pub fn queue(&self) -> Result<(Vec<QueueItem>, Vec<QueueItem>), StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ITEM_COLUMNS}, state FROM prompts WHERE state IN ('pending', 'running')
             ORDER BY number, id"
        ))?;
        let rows = stmt.query_map([], |row| {
            Ok((item_from_row(row)?, row.get::<_, String>(8)?))
        })?;
        let (mut running, mut pending) = (Vec::new(), Vec::new());
        for row in rows {
            let (raw, state) = row?;
            let item = raw.parse()?;
            if state == "running" {
                running.push(item);
            } else {
                pending.push(item);
            }
        }
        Ok((running, pending))
    }

    /// Prompts queued or running (`exec_info.queue_remaining`).
    pub fn remaining(&self) -> Result<usize, StoreError> {
        let n: i64 = self.reader().query_row(
            "SELECT COUNT(*) FROM prompts WHERE state IN ('pending', 'running')",
            [],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    /// Removes pending prompts by id; the ids that were removed.
    pub fn delete_pending(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut removed = Vec::new();
        for id in ids {
            if tx.execute(
                "DELETE FROM prompts WHERE id = ?1 AND state = 'pending'",
                params![id],
            )? > 0
            {
                removed.push(id.clone());
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Removes every pending prompt; their ids.
    pub fn clear_pending(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let removed = {
            let mut stmt = tx.prepare("SELECT id FROM prompts WHERE state = 'pending'")?;
            let ids = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids
        };
        tx.execute("DELETE FROM prompts WHERE state = 'pending'", [])?;
        tx.commit()?;
        Ok(removed)
    }

    /// Forgets the files recorded for a prompt (the caller deleted them).
    pub fn forget_files(&self, prompt_id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM files WHERE prompt_id = ?1", params![prompt_id])?;
        Ok(())
    }

    fn history_rows(
        &self,
        where_sql: &str,
        tail_sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ITEM_COLUMNS}, outputs, status, meta, created_ms FROM prompts
             WHERE state = 'done' {where_sql} ORDER BY history_seq {tail_sql}"
        ))?;
        let rows = stmt.query_map(args, |row| {
            Ok((
                item_from_row(row)?,
                row.get::<_, Option<String>>(8)?,
                row.get::<_, Option<String>>(9)?,
                row.get::<_, Option<String>>(10)?,
                row.get::<_, i64>(11)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (raw, outputs, status, meta, created_ms) = row?;
            let or_empty = |text: Option<String>, what| match text {
                Some(t) => parse(&t, what),
                None => Ok(json!({})),
            };
            out.push(HistoryEntry {
                item: raw.parse()?,
                outputs: or_empty(outputs, "outputs")?,
                status: or_empty(status, "status")?,
                meta: or_empty(meta, "meta")?,
                created_ms,
            });
        }
        Ok(out)
    }

    /// The history, oldest first, as ComfyUI's `get_history(max_items, offset)` slices it: with
    /// `max_items` and no `offset`, the newest `max_items`; with `offset`, `max_items` entries
    /// from that position.
    pub fn history(
        &self,
        max_items: Option<usize>,
        offset: Option<i64>,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let total: i64 = self.reader().query_row(
            "SELECT COUNT(*) FROM prompts WHERE state = 'done'",
            [],
            |r| r.get(0),
        )?;
        let mut offset = offset.unwrap_or(-1);
        if offset < 0 {
            offset = match max_items {
                Some(m) => total - m as i64,
                None => 0,
            };
        }
        let offset = offset.max(0);
        let limit = max_items.map_or(-1, |m| m as i64);
        self.history_rows("", "LIMIT ?1 OFFSET ?2", &[&limit, &offset])
    }

    /// One history entry.
    pub fn history_one(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, StoreError> {
        Ok(self
            .history_rows("AND id = ?1", "", &[&prompt_id])?
            .into_iter()
            .next())
    }

    /// Deletes history entries (not their files).
    pub fn delete_history(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for id in ids {
            tx.execute(
                "DELETE FROM files WHERE prompt_id = ?1 AND EXISTS
                     (SELECT 1 FROM prompts WHERE id = ?1 AND state = 'done')",
                params![id],
            )?;
            tx.execute(
                "DELETE FROM prompts WHERE id = ?1 AND state = 'done'",
                params![id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes the whole history (not the files).
    pub fn clear_history(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM files WHERE prompt_id IN (SELECT id FROM prompts WHERE state = 'done')",
            [],
        )?;
        tx.execute("DELETE FROM prompts WHERE state = 'done'", [])?;
        tx.commit()?;
        Ok(())
    }

    /// A queued or running prompt.
    pub fn queued_item(&self, prompt_id: &str) -> Result<Option<(State, QueueItem)>, StoreError> {
        let row = self
            .reader()
            .query_row(
                &format!(
                    "SELECT {ITEM_COLUMNS}, state FROM prompts
                     WHERE id = ?1 AND state IN ('pending', 'running')"
                ),
                params![prompt_id],
                |row| Ok((item_from_row(row)?, row.get::<_, String>(8)?)),
            )
            .optional()?;
        match row {
            Some((raw, state)) => Ok(Some((state_from(&state), raw.parse()?))),
            None => Ok(None),
        }
    }

    /// Every prompt the store knows, for the jobs listing.
    pub fn job_rows(&self) -> Result<Vec<JobRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT id, state, number, number_is_float, created_ms, workflow_id, outputs, status
             FROM prompts",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (prompt_id, state, value, is_float, created_ms, workflow_id, outputs, status) =
                row?;
            out.push(JobRow {
                prompt_id,
                state: state_from(&state),
                number: Number { value, is_float },
                created_ms,
                workflow_id,
                outputs: match outputs {
                    Some(t) => parse(&t, "outputs")?,
                    None => json!({}),
                },
                status: match status {
                    Some(t) => parse(&t, "status")?,
                    None => Json::Null,
                },
                worker: None,
            });
        }
        Ok(out)
    }

    /// The prompts the previous process left running, with the files they recorded. Nothing
    /// changes until [`Store::requeue`] (after the caller removed the files).
    pub fn interrupted(&self) -> Result<Vec<Interrupted>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, started_ms, attempts FROM prompts WHERE state = 'running' ORDER BY number, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (prompt_id, started_ms, attempts) = row?;
            let mut files_stmt =
                conn.prepare("SELECT path FROM files WHERE prompt_id = ?1 ORDER BY seq")?;
            let files = files_stmt
                .query_map(params![prompt_id], |r| r.get::<_, String>(0))?
                .map(|p| p.map(PathBuf::from))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Interrupted {
                prompt_id,
                started_ms,
                attempts,
                files,
            });
        }
        Ok(out)
    }

    /// Puts an interrupted prompt back in the queue (keeping its number, so it runs first
    /// again) and forgets its files, which the caller deleted. `refund`: the run was stopped
    /// on purpose (the server shutting down), so it does not count as an attempt.
    pub fn requeue(&self, prompt_id: &str, refund: bool) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM files WHERE prompt_id = ?1", params![prompt_id])?;
        tx.execute(
            "UPDATE prompts SET state = 'pending', started_ms = NULL,
                 attempts = MAX(attempts - ?2, 0)
             WHERE id = ?1 AND state = 'running'",
            params![prompt_id, refund as i64],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.sqlite3"), 3).unwrap();
        (dir, store)
    }

    fn new(id: &str, number: Option<f64>, front: bool) -> NewPrompt {
        NewPrompt {
            prompt_id: id.into(),
            number,
            front,
            prompt: json!({"1": {"class_type": "X", "inputs": {}}}),
            extra_data: json!({"client_id": "c", "api_key_comfy_org": "secret"}),
            outputs_to_execute: vec!["1".into()],
            created_ms: 1,
        }
    }

    fn done(store: &Store, id: &str) {
        store
            .finish(
                id,
                &Finished {
                    outputs: json!({}),
                    status: json!({"status_str": "success", "completed": true, "messages": []}),
                    meta: json!({}),
                    finished_ms: 2,
                },
            )
            .unwrap();
    }

    #[test]
    fn queue_order_follows_number_then_front_then_id() {
        let (_d, s) = store();
        assert_eq!(
            s.enqueue(new("b", None, false)).unwrap(),
            Enqueued::New(Number {
                value: 0.0,
                is_float: false
            })
        );
        s.enqueue(new("c", None, false)).unwrap(); // 1
        s.enqueue(new("a", None, true)).unwrap(); // -2
        s.enqueue(new("d", Some(0.5), false)).unwrap();
        let (_, pending) = s.queue().unwrap();
        let ids: Vec<_> = pending.iter().map(|i| i.prompt_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d", "c"]);
        assert_eq!(s.take_next(5).unwrap().unwrap().prompt_id, "a");
        assert_eq!(s.remaining().unwrap(), 4);
        let (running, _) = s.queue().unwrap();
        assert_eq!(running[0].prompt_id, "a");
        assert!(running[0].extra_data.get("api_key_comfy_org").is_none());
    }

    #[test]
    fn a_prompt_id_is_queued_once() {
        let (_d, s) = store();
        let first = s.enqueue(new("x", None, false)).unwrap();
        let again = s.enqueue(new("x", None, false)).unwrap();
        assert_eq!(
            again,
            Enqueued::Existing(Number {
                value: 0.0,
                is_float: false
            })
        );
        assert!(matches!(first, Enqueued::New(_)));
        assert_eq!(s.remaining().unwrap(), 1);
    }

    #[test]
    fn history_is_capped_and_sliced_like_comfyui() {
        let (_d, s) = store();
        for id in ["p1", "p2", "p3", "p4"] {
            s.enqueue(new(id, None, false)).unwrap();
            let item = s.take_next(1).unwrap().unwrap();
            s.record_file(&item.prompt_id, "9", Path::new(&format!("/o/{id}.png")))
                .unwrap();
            done(&s, id);
        }
        // Cap 3: p1 fell out, with its file records.
        let all: Vec<_> = s
            .history(None, None)
            .unwrap()
            .into_iter()
            .map(|e| e.item.prompt_id)
            .collect();
        assert_eq!(all, ["p2", "p3", "p4"]);
        assert!(!s.is_recorded(Path::new("/o/p1.png")).unwrap());
        assert!(s.is_recorded(Path::new("/o/p2.png")).unwrap());
        let last: Vec<_> = s
            .history(Some(2), None)
            .unwrap()
            .into_iter()
            .map(|e| e.item.prompt_id)
            .collect();
        assert_eq!(last, ["p3", "p4"]);
        let from: Vec<_> = s
            .history(Some(1), Some(1))
            .unwrap()
            .into_iter()
            .map(|e| e.item.prompt_id)
            .collect();
        assert_eq!(from, ["p3"]);
        s.delete_history(&["p3".into()]).unwrap();
        assert!(s.history_one("p3").unwrap().is_none());
        s.clear_history().unwrap();
        assert!(s.history(None, None).unwrap().is_empty());
    }

    #[test]
    fn interrupted_prompts_are_requeued_with_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite3");
        {
            let s = Store::open(&path, 10).unwrap();
            s.enqueue(new("a", None, false)).unwrap();
            s.enqueue(new("b", None, false)).unwrap();
            s.take_next(7).unwrap();
            s.record_file("a", "9", Path::new("/o/a.png")).unwrap();
        }
        let s = Store::open(&path, 10).unwrap();
        let lost = s.interrupted().unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].prompt_id, "a");
        assert_eq!(lost[0].files, vec![PathBuf::from("/o/a.png")]);
        assert_eq!(lost[0].attempts, 1);
        s.requeue("a", false).unwrap();
        assert!(!s.is_recorded(Path::new("/o/a.png")).unwrap());
        let next = s.take_next(8).unwrap().unwrap();
        assert_eq!((next.prompt_id.as_str(), next.attempts), ("a", 2));
    }
}

#[cfg(all(test, unix))]
#[path = "store_faults.rs"]
mod faults;
