//! `GET /ws?clientId=…`: ComfyUI's WebSocket.
//!
//! On connect the client gets `status` with its `sid` (its `clientId`, or a new id), and, when
//! a prompt it queued is running, `executing` with the current node. If its first message is
//! `{"type": "feature_flags", "data": {...}}` the server keeps the flags (only
//! `supports_preview_metadata` matters here) and answers with its own. Everything else it sends
//! is read and ignored. Outgoing messages go through the client's bounded queue in [`crate::hub`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};

use crate::hub::{envelope, Outgoing};
use crate::routes::server_features;
use crate::AppState;

/// Largest message (and frame) a client may send: its feature flags, in practice. A larger one
/// closes the connection (1009) before it is buffered whole.
const MAX_CLIENT_MESSAGE: usize = 1 << 20;

pub async fn handler(
    State(core): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let sid = query
        .get("clientId")
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| session(core, sid, socket))
}

async fn session(core: AppState, sid: String, socket: WebSocket) {
    let remaining = {
        let c = core.clone();
        tokio::task::spawn_blocking(move || c.queue.remaining())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    };
    let mut first = vec![Outgoing::Text(envelope(
        "status",
        json!({ "status": { "exec_info": { "queue_remaining": remaining } }, "sid": sid }),
    ))];
    if let Some(r) = core.running().as_ref() {
        if r.client_id.as_deref() == Some(sid.as_str()) {
            if let Some(node) = &r.node {
                first.push(Outgoing::Text(envelope(
                    "executing",
                    json!({ "node": node }),
                )));
            }
        }
    }
    let (mut queue, preview_metadata) = core.hub.connect(&sid, first);
    let conn = queue.conn;
    let (mut sink, mut stream) = socket.split();

    let mut writer = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                biased;
                _ = queue.kill.notified() => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: 1008,
                            reason: "too slow, or replaced by a newer connection".into(),
                        })))
                        .await;
                    break;
                }
                m = queue.rx.recv() => m,
            };
            let Some(message) = message else { break };
            let frame = match message {
                Outgoing::Text(t) => {
                    queue.queued_bytes.fetch_sub(t.len(), Ordering::Relaxed);
                    Message::Text(t.into())
                }
                Outgoing::Binary(b) => {
                    queue.queued_bytes.fetch_sub(b.len(), Ordering::Relaxed);
                    Message::Binary(b.into())
                }
            };
            let sent = tokio::select! {
                r = sink.send(frame) => r.is_ok(),
                _ = queue.kill.notified() => false,
            };
            if !sent {
                break;
            }
        }
    });

    let reader = async {
        let mut first_message = true;
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    if first_message {
                        if let Some(flags) = client_feature_flags(text.as_str()) {
                            preview_metadata
                                .store(flags.supports_preview_metadata, Ordering::Relaxed);
                            core.hub
                                .send_json(Some(&sid), "feature_flags", server_features(&core));
                        }
                    }
                    first_message = false;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    // Whichever ends first ends the session: the client closing, or the writer giving up on
    // it (too slow, replaced); dropping both halves closes the socket.
    tokio::select! {
        _ = reader => {}
        _ = &mut writer => {}
    }
    writer.abort();
    core.hub.disconnect(&sid, conn);
}

/// What a client's `feature_flags` message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFeatureFlags {
    /// Previews with their metadata (`PREVIEW_IMAGE_WITH_METADATA` frames).
    pub supports_preview_metadata: bool,
}

/// Reads a client's text message: `Some` for `{"type": "feature_flags", "data": {...}}`,
/// `None` for anything else (which the server ignores, as ComfyUI does).
pub fn client_feature_flags(text: &str) -> Option<ClientFeatureFlags> {
    let m = serde_json::from_str::<Json>(text).ok()?;
    if m.get("type").and_then(Json::as_str) != Some("feature_flags") {
        return None;
    }
    Some(ClientFeatureFlags {
        supports_preview_metadata: m
            .pointer("/data/supports_preview_metadata")
            .and_then(Json::as_bool)
            == Some(true),
    })
}
