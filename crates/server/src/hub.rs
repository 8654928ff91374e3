//! The WebSocket clients and what is sent to them.
//!
//! Each client has a bounded outgoing queue that a task of its own drains into its socket, so
//! the engine thread (which produces most messages) never waits on a network write: it hands a
//! message over with `try_send` and goes on. A client whose queue overflows, by message count
//! or by bytes, is too slow to follow: it is disconnected (close code 1008, "too slow") rather
//! than allowed to make the server's memory grow. ComfyUI clients reconnect and read what they
//! missed from `/history`.
//!
//! Messages for a client id with no socket (a client that queues its prompt before it connects,
//! as `comfy-api-simplified` does, or one reconnecting) are kept for a while, progress excepted,
//! and delivered when it connects, after its `status`: otherwise a prompt that finishes before
//! the client connects leaves it waiting forever for `executing` with `node: null`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, Notify};

/// A message for one socket.
#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Text(t) => t.len(),
            Outgoing::Binary(b) => b.len(),
        }
    }
}

/// How much may wait for one client before it counts as too slow.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub messages: usize,
    pub bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            messages: 4096,
            bytes: 64 << 20,
        }
    }
}

/// The receiving half, owned by the socket's writer task.
#[derive(Debug)]
pub struct ClientQueue {
    pub rx: mpsc::Receiver<Outgoing>,
    pub queued_bytes: Arc<AtomicUsize>,
    /// Notified when the hub drops the client (too slow, or replaced by a new connection).
    pub kill: Arc<Notify>,
    pub conn: u64,
}

struct Client {
    tx: mpsc::Sender<Outgoing>,
    queued_bytes: Arc<AtomicUsize>,
    kill: Arc<Notify>,
    conn: u64,
    /// The client advertised `supports_preview_metadata` in its feature flags.
    preview_metadata: Arc<AtomicBool>,
}

/// How long messages wait for a client id that has no socket.
const BACKLOG_FOR: Duration = Duration::from_secs(60);
/// Most messages kept for one absent client (the newest).
const BACKLOG_MESSAGES: usize = 256;
/// Most absent clients with a backlog.
const BACKLOG_CLIENTS: usize = 1024;
/// Messages not kept for an absent client: they only matter while they are current.
const TRANSIENT: [&str; 2] = ["progress", "progress_state"];

/// Messages kept for an absent client.
struct Backlog {
    messages: VecDeque<String>,
    updated: Instant,
}

pub struct Hub {
    clients: Mutex<HashMap<String, Client>>,
    /// Locked after `clients` when both are needed.
    backlogs: Mutex<HashMap<String, Backlog>>,
    /// [`BACKLOG_FOR`]; shorter in tests.
    backlog_for: Duration,
    next_conn: AtomicU64,
    limits: ClientLimits,
    /// Clients disconnected for being too slow, since start.
    pub dropped_slow: AtomicU64,
    /// A worker of a shared queue (`veetance worker`) has no sockets: every message goes here
    /// instead, to be published for the front doors.
    forward: std::sync::OnceLock<Box<dyn Fn(Forwarded) + Send + Sync>>,
}

/// A message a worker hands to its front doors instead of a socket.
#[derive(Debug)]
pub enum Forwarded {
    Json {
        client: Option<String>,
        kind: String,
        data: Json,
    },
    Preview {
        client: String,
        node: String,
        prompt_id: String,
        png: Vec<u8>,
    },
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.client_count())
            .finish()
    }
}

/// A JSON message in ComfyUI's envelope.
pub fn envelope(kind: &str, data: Json) -> String {
    json!({ "type": kind, "data": data }).to_string()
}

impl Hub {
    pub fn new(limits: ClientLimits) -> Hub {
        Hub {
            clients: Mutex::new(HashMap::new()),
            backlogs: Mutex::new(HashMap::new()),
            backlog_for: BACKLOG_FOR,
            next_conn: AtomicU64::new(0),
            limits,
            dropped_slow: AtomicU64::new(0),
            forward: std::sync::OnceLock::new(),
        }
    }

    /// Sends every message to `forward` instead of sockets (a worker of a shared queue).
    pub fn forward_to(&self, forward: Box<dyn Fn(Forwarded) + Send + Sync>) {
        if self.forward.set(forward).is_err() {
            tracing::error!("the WebSocket hub was already forwarding");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn client_count(&self) -> usize {
        self.lock().len()
    }

    /// Registers a socket under `sid`, replacing (and disconnecting) an earlier socket with the
    /// same id, as ComfyUI does when a client reconnects. `first` is queued before anything
    /// else can be, so the client sees it first.
    pub fn connect(&self, sid: &str, mut first: Vec<Outgoing>) -> (ClientQueue, Arc<AtomicBool>) {
        let limits = self.limits;
        // Under the clients lock: nothing for this id is sent between taking its backlog and
        // registering the socket.
        let mut clients = self.lock();
        let backlog = self
            .backlogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sid)
            .filter(|b| b.updated.elapsed() < self.backlog_for);
        first.extend(
            backlog
                .into_iter()
                .flat_map(|b| b.messages)
                .map(Outgoing::Text),
        );
        let (tx, rx) = mpsc::channel(limits.messages.max(first.len() + 1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        for m in first {
            queued_bytes.fetch_add(m.len(), Ordering::Relaxed);
            // Capacity was made for these; a failure means the receiver is gone already.
            let _ = tx.try_send(m);
        }
        let kill = Arc::new(Notify::new());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let preview_metadata = Arc::new(AtomicBool::new(false));
        let client = Client {
            tx,
            queued_bytes: queued_bytes.clone(),
            kill: kill.clone(),
            conn,
            preview_metadata: preview_metadata.clone(),
        };
        if let Some(old) = clients.insert(sid.to_string(), client) {
            old.kill.notify_one();
        }
        drop(clients);
        (
            ClientQueue {
                rx,
                queued_bytes,
                kill,
                conn,
            },
            preview_metadata,
        )
    }

    /// Forgets a socket that closed, unless a newer connection took its id meanwhile.
    pub fn disconnect(&self, sid: &str, conn: u64) {
        let mut clients = self.lock();
        if clients.get(sid).is_some_and(|c| c.conn == conn) {
            clients.remove(sid);
        }
    }

    pub fn is_connected(&self, sid: &str) -> bool {
        // A worker cannot know: the client is at a front door.
        self.forward.get().is_some() || self.lock().contains_key(sid)
    }

    /// Whether the client asked for previews with metadata (binary type 4).
    pub fn wants_preview_metadata(&self, sid: &str) -> bool {
        self.lock()
            .get(sid)
            .is_some_and(|c| c.preview_metadata.load(Ordering::Relaxed))
    }

    /// Queues a message for one client; a client that cannot take it is dropped.
    fn offer(&self, clients: &mut HashMap<String, Client>, sid: &str, message: Outgoing) {
        let limits = self.limits;
        let Some(client) = clients.get(sid) else {
            return;
        };
        let len = message.len();
        let queued = client.queued_bytes.load(Ordering::Relaxed);
        let fits = queued + len <= limits.bytes || queued == 0;
        let sent = fits && {
            client.queued_bytes.fetch_add(len, Ordering::Relaxed);
            match client.tx.try_send(message) {
                Ok(()) => true,
                Err(_) => {
                    client.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    false
                }
            }
        };
        if !sent {
            if let Some(slow) = clients.remove(sid) {
                tracing::warn!(
                    "WebSocket client {sid} is too slow ({} bytes waiting); disconnecting it",
                    slow.queued_bytes.load(Ordering::Relaxed)
                );
                self.dropped_slow.fetch_add(1, Ordering::Relaxed);
                slow.kill.notify_one();
            }
        }
    }

    /// Sends a JSON message to one client (`Some(sid)`) or to every client (`None`).
    pub fn send_json(&self, sid: Option<&str>, kind: &str, data: Json) {
        if let Some(forward) = self.forward.get() {
            forward(Forwarded::Json {
                client: sid.map(str::to_string),
                kind: kind.to_string(),
                data,
            });
            return;
        }
        let text = envelope(kind, data);
        let mut clients = self.lock();
        match sid {
            Some(sid) if !clients.contains_key(sid) => {
                if !TRANSIENT.contains(&kind) {
                    self.keep_for_later(sid, text);
                }
            }
            Some(sid) => self.offer(&mut clients, sid, Outgoing::Text(text)),
            None => {
                let sids: Vec<String> = clients.keys().cloned().collect();
                for sid in sids {
                    self.offer(&mut clients, &sid, Outgoing::Text(text.clone()));
                }
            }
        }
    }

    /// Keeps a message for a client id that has no socket now.
    fn keep_for_later(&self, sid: &str, text: String) {
        let mut backlogs = self.backlogs.lock().unwrap_or_else(|e| e.into_inner());
        if !backlogs.contains_key(sid) {
            // Expired backlogs go whenever a new one starts (at most BACKLOG_CLIENTS to look
            // at), not only once the table is full: clients that never come back would
            // otherwise hold their messages until 1024 of them had gathered.
            backlogs.retain(|_, b| b.updated.elapsed() < self.backlog_for);
            if backlogs.len() >= BACKLOG_CLIENTS {
                let oldest = backlogs
                    .iter()
                    .min_by_key(|(_, b)| b.updated)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    backlogs.remove(&k);
                }
            }
        }
        let backlog = backlogs.entry(sid.to_string()).or_insert_with(|| Backlog {
            messages: VecDeque::new(),
            updated: Instant::now(),
        });
        if backlog.updated.elapsed() >= self.backlog_for {
            backlog.messages.clear();
        }
        backlog.updated = Instant::now();
        backlog.messages.push_back(text);
        while backlog.messages.len() > BACKLOG_MESSAGES {
            backlog.messages.pop_front();
        }
    }

    /// Sends a binary frame to one client.
    pub fn send_binary(&self, sid: &str, frame: Vec<u8>) {
        let mut clients = self.lock();
        self.offer(&mut clients, sid, Outgoing::Binary(frame));
    }

    /// Sends a latent preview (PNG bytes) to one client, in the frame it asked for: with the
    /// node and prompt (`supports_preview_metadata`) or without.
    pub fn send_preview(&self, sid: &str, node: &str, prompt_id: &str, png: Vec<u8>) {
        if let Some(forward) = self.forward.get() {
            forward(Forwarded::Preview {
                client: sid.to_string(),
                node: node.to_string(),
                prompt_id: prompt_id.to_string(),
                png,
            });
            return;
        }
        if !self.is_connected(sid) {
            return;
        }
        let frame = if self.wants_preview_metadata(sid) {
            crate::preview::frame_with_metadata(node, prompt_id, &png)
        } else {
            crate::preview::frame(&png)
        };
        self.send_binary(sid, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_does_not_read_is_dropped_not_buffered() {
        let hub = Hub::new(ClientLimits {
            messages: 8,
            bytes: 1000,
        });
        let (mut queue, _) = hub.connect("slow", vec![Outgoing::Text("hello".into())]);
        let (mut fast, _) = hub.connect("fast", vec![]);
        for i in 0..100 {
            hub.send_json(None, "progress", json!({ "value": i }));
            while let Ok(m) = fast.rx.try_recv() {
                fast.queued_bytes.fetch_sub(m.len(), Ordering::Relaxed);
            }
        }
        assert!(!hub.is_connected("slow"));
        assert!(hub.is_connected("fast"));
        assert_eq!(hub.dropped_slow.load(Ordering::Relaxed), 1);
        // What it had queued stays bounded.
        let mut n = 0;
        while queue.rx.try_recv().is_ok() {
            n += 1;
        }
        assert!(n <= 8, "{n}");
    }

    #[test]
    fn messages_wait_for_a_client_that_connects_late() {
        let hub = Hub::new(ClientLimits::default());
        hub.send_json(Some("late"), "execution_start", json!({ "prompt_id": "p" }));
        hub.send_json(Some("late"), "progress", json!({ "value": 1 }));
        hub.send_json(
            Some("late"),
            "executing",
            json!({ "node": null, "prompt_id": "p" }),
        );
        let (mut q, _) = hub.connect("late", vec![Outgoing::Text("status".into())]);
        let mut got = Vec::new();
        while let Ok(Outgoing::Text(t)) = q.rx.try_recv() {
            got.push(t);
        }
        assert_eq!(got.len(), 3, "status, then the two kept messages: {got:?}");
        assert_eq!(got[0], "status");
        assert!(got[1].contains("execution_start") && got[2].contains("executing"));
        // Delivered once.
        let (mut again, _) = hub.connect("late", vec![]);
        assert!(again.rx.try_recv().is_err());
    }

    #[test]
    fn backlogs_of_clients_that_never_come_back_expire() {
        let mut hub = Hub::new(ClientLimits::default());
        hub.backlog_for = Duration::from_millis(20);
        for i in 0..10 {
            hub.send_json(
                Some(&format!("gone-{i}")),
                "executing",
                json!({ "node": "1" }),
            );
        }
        let held = || hub.backlogs.lock().unwrap().len();
        assert_eq!(held(), 10, "all within their time");
        std::thread::sleep(Duration::from_millis(40));
        // The next absent client's first message clears the expired ones, long before the
        // table is full.
        hub.send_json(Some("new"), "executing", json!({ "node": "1" }));
        assert_eq!(held(), 1);
    }

    #[test]
    fn a_reconnect_replaces_the_old_socket() {
        let hub = Hub::new(ClientLimits::default());
        let (old, _) = hub.connect("c", vec![]);
        let (new, _) = hub.connect("c", vec![]);
        hub.disconnect("c", old.conn);
        assert!(hub.is_connected("c"));
        hub.disconnect("c", new.conn);
        assert!(!hub.is_connected("c"));
    }
}
