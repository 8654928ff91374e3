//! `POST /v1/images/generations` in OpenAI's shape, over the default workflow
//! (`--default-workflow`; the rule that sets its prompt, size and seed is in
//! [`crate::workflow`]). Each requested image is one prompt in the durable queue; the request
//! waits for them and answers with the images inline (`b64_json`) or as `/view` URLs (`url`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value as Json};

use crate::routes::{blocking, read_body, submit, ApiError};
use crate::AppState;

/// The most images one request may ask for (OpenAI's own limit for `n`).
const MAX_N: u64 = 10;
/// The longest prompt accepted, in characters.
const MAX_PROMPT_CHARS: usize = 32_000;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    (
        status,
        axum::Json(json!({
            "error": { "message": message.into(), "type": kind, "param": param, "code": null }
        })),
    )
        .into_response()
}

fn bad(message: impl Into<String>, param: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message, Some(param))
}

fn from_api(e: ApiError) -> Response {
    let message = e
        .body
        .pointer("/error/message")
        .and_then(Json::as_str)
        .map(|m| {
            let details = e
                .body
                .pointer("/error/details")
                .and_then(Json::as_str)
                .unwrap_or("");
            if details.is_empty() {
                m.to_string()
            } else {
                format!("{m}: {details}")
            }
        })
        .unwrap_or_else(|| e.body.to_string());
    error(e.status, message, None)
}

/// Parses `"WxH"`.
fn parse_size(size: &str) -> Result<(u32, u32), String> {
    let (w, h) = size
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size {size:?} is not WIDTHxHEIGHT (e.g. 1024x1024)"))?;
    let side = |s: &str| -> Result<u32, String> {
        let v: u32 = s
            .trim()
            .parse()
            .map_err(|_| format!("size {size:?}: {s:?} is not a whole number"))?;
        if !(16..=4096).contains(&v) || v % 16 != 0 {
            return Err(format!(
                "size {size:?}: each side must be a multiple of 16 from 16 to 4096"
            ));
        }
        Ok(v)
    };
    Ok((side(w)?, side(h)?))
}

fn query_escape(s: &str) -> String {
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

pub async fn generations(State(core): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(body, &core.limits).await {
        Ok(b) => b,
        Err(e) => return from_api(e),
    };
    let request: Json = match serde_json::from_slice(&bytes) {
        Ok(j @ Json::Object(_)) => j,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object",
                None,
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {e}"),
                None,
            )
        }
    };
    let Some(workflow) = core.default_workflow.clone() else {
        return error(
            StatusCode::BAD_REQUEST,
            "this server has no default workflow; start it with --default-workflow FILE",
            Some("model"),
        );
    };
    let text = match request.get("prompt") {
        Some(Json::String(p)) if !p.trim().is_empty() => p.clone(),
        Some(Json::String(_)) | None | Some(Json::Null) => {
            return bad("`prompt` is required and may not be empty", "prompt")
        }
        Some(_) => return bad("`prompt` must be a string", "prompt"),
    };
    if text.chars().count() > MAX_PROMPT_CHARS {
        return bad(
            format!("`prompt` is longer than {MAX_PROMPT_CHARS} characters"),
            "prompt",
        );
    }
    let n = match request.get("n") {
        None | Some(Json::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_N).contains(&n) => n,
            _ => return bad(format!("`n` must be a whole number from 1 to {MAX_N}"), "n"),
        },
    };
    let size = match request.get("size") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s == "auto" => None,
        Some(Json::String(s)) => match parse_size(s) {
            Ok(size) => Some(size),
            Err(m) => return bad(m, "size"),
        },
        Some(_) => return bad("`size` must be a string such as \"1024x1024\"", "size"),
    };
    let as_url = match request.get("response_format") {
        None | Some(Json::Null) => false,
        Some(Json::String(f)) if f == "b64_json" => false,
        Some(Json::String(f)) if f == "url" => true,
        Some(_) => {
            return bad(
                "`response_format` must be \"b64_json\" or \"url\"",
                "response_format",
            )
        }
    };
    let seed = match request.get("seed") {
        None | Some(Json::Null) => {
            let bits = uuid::Uuid::new_v4().as_u64_pair().0;
            (bits & veetance_nodes_basic::SEED_MAX as u64) as i64
        }
        Some(v) => match v.as_i64() {
            Some(s) if (0..=veetance_nodes_basic::SEED_MAX).contains(&s) => s,
            _ => {
                return bad(
                    format!(
                        "`seed` must be a whole number from 0 to {}",
                        veetance_nodes_basic::SEED_MAX
                    ),
                    "seed",
                )
            }
        },
    };

    // Queue every image first (each waits in the durable queue), then wait for them in turn.
    let mut ids = Vec::new();
    for i in 0..n {
        let prompt_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        core.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(prompt_id.clone())
            .or_default()
            .push(tx);
        let prompt = workflow.instantiate(
            &text,
            size,
            (seed + i as i64).min(veetance_nodes_basic::SEED_MAX),
        );
        let mut extra = serde_json::Map::new();
        extra.insert("veetance_openai".into(), json!(true));
        if let Err(e) = submit(&core, prompt_id.clone(), prompt, extra, None, None, false).await {
            core.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&prompt_id);
            return from_api(e);
        }
        ids.push((prompt_id, rx));
    }
    let mut data = Vec::new();
    for (prompt_id, rx) in ids {
        // A prompt that finished before the waiter was seen: the history says so.
        let id = prompt_id.clone();
        let done = blocking(&core, move |c| Ok(c.queue.history_one(&id)?)).await;
        if !matches!(done, Ok(Some(_))) {
            let _ = rx.await;
        }
        let id = prompt_id.clone();
        let entry = match blocking(&core, move |c| Ok(c.queue.history_one(&id)?)).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("prompt {prompt_id} left the queue without a result (deleted?)"),
                    None,
                )
            }
            Err(e) => return from_api(e),
        };
        if entry.status.get("status_str").and_then(Json::as_str) != Some("success") {
            let message = entry
                .status
                .get("messages")
                .and_then(Json::as_array)
                .and_then(|m| {
                    m.iter().find_map(|x| {
                        let data = x.get(1)?;
                        data.get("exception_message")
                            .and_then(Json::as_str)
                            .map(str::to_string)
                            .or_else(|| {
                                (x.get(0)?.as_str()? == "execution_interrupted")
                                    .then(|| "the generation was cancelled".to_string())
                            })
                    })
                })
                .unwrap_or_else(|| "the generation failed".into());
            return error(StatusCode::INTERNAL_SERVER_ERROR, message, None);
        }
        let images: Vec<Json> = entry
            .outputs
            .as_object()
            .into_iter()
            .flat_map(|nodes| nodes.values())
            .filter_map(|o| o.get("images").and_then(Json::as_array))
            .flatten()
            .filter(|i| i.get("type").and_then(Json::as_str) == Some("output"))
            .cloned()
            .collect();
        for image in images {
            let filename = image.get("filename").and_then(Json::as_str).unwrap_or("");
            let subfolder = image.get("subfolder").and_then(Json::as_str).unwrap_or("");
            if as_url {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("127.0.0.1:8188");
                data.push(json!({
                    "url": format!(
                        "http://{host}/view?filename={}&subfolder={}&type=output",
                        query_escape(filename),
                        query_escape(subfolder)
                    )
                }));
            } else {
                let mut path = core.dirs.output.clone();
                path.extend(subfolder.split('/').filter(|p| !p.is_empty()));
                path.push(filename);
                // Behind a shared queue the image is in the queue's object store.
                let stored = match core.remote.clone() {
                    Some(remote) => {
                        let (sub, name) = (subfolder.to_string(), filename.to_string());
                        tokio::task::spawn_blocking(move || {
                            remote.output_file("output", &sub, &name)
                        })
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                    }
                    None => None,
                };
                let read = match stored {
                    Some(bytes) => Ok(bytes),
                    None => tokio::fs::read(&path).await,
                };
                match read {
                    Ok(bytes) => data.push(json!({
                        "b64_json": base64::engine::general_purpose::STANDARD.encode(bytes)
                    })),
                    Err(e) => {
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("cannot read the image '{}': {e}", path.display()),
                            None,
                        )
                    }
                }
            }
        }
    }
    let created = crate::now_ms() / 1000;
    axum::Json(json!({ "created": created, "data": data })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert_eq!(parse_size("1024x768").unwrap(), (1024, 768));
        assert_eq!(parse_size("64X64").unwrap(), (64, 64));
        for bad in ["1024", "10x10", "100x100", "0x64", "8192x64", "axb"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
