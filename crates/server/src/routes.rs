//! ComfyUI's routes, each registered bare (`/prompt`) and under `/api` (`/api/prompt`), as
//! ComfyUI's `add_routes` does; the jobs family under `/api` only; OpenAI's route at
//! `/v1/images/generations`. Every route sits behind [`crate::security::guard`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use veetance_core::{HostMemory, NodeRegistry, RunEnv};

use crate::store::{Enqueued, NewPrompt, StoreError};
use crate::{
    files, frontend, jobs, now_ms, openai, security, userdata, ws, AppState, Core, Limits,
    WorkerMsg,
};

/// An error answer: a status and a JSON body, by default ComfyUI's error object
/// `{"error": {"type", "message", "details", "extra_info"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Json,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &str, message: String) -> ApiError {
        ApiError {
            status,
            body: json!({
                "error": { "type": kind, "message": message, "details": "", "extra_info": {} },
                "node_errors": {},
            }),
        }
    }

    pub fn bad_request(kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, kind, message.into())
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!("{message}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            message.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The shared queue is down or unreachable: try again later, as for a busy server.
            StoreError::Queue(message) => {
                tracing::error!("{message}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    message,
                )
            }
            e => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

impl From<ApiError> for Box<Response> {
    fn from(e: ApiError) -> Box<Response> {
        Box::new(e.into_response())
    }
}

/// Runs store (or other blocking) work off the async threads.
pub async fn blocking<T: Send + 'static>(
    core: &AppState,
    work: impl FnOnce(&Core) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let core = core.clone();
    tokio::task::spawn_blocking(move || work(&core))
        .await
        .map_err(|e| ApiError::internal(format!("a background task failed: {e}")))?
}

/// How much of an oversized body is still read (and dropped) before the 413 goes out, so
/// that a client that sent it whole reads the answer instead of a reset connection.
const DRAIN_BEYOND_LIMIT: usize = 16 << 20;

/// Reads a request body of at most `limit` bytes; `None` when it is larger. The body must
/// arrive within `limits.body_timeout`, plus a second for every `limits.body_min_rate` bytes
/// received: a client that stops sending, or trickles, gets 408 instead of holding the
/// connection (and its buffer) for ever.
pub async fn read_limited(
    body: Body,
    limit: usize,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, ApiError> {
    let started = tokio::time::Instant::now();
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    let mut seen = 0usize;
    loop {
        let deadline = started + body_allowance(seen, limits);
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body did not arrive in time: {seen} bytes in {:.0} s; this \
                         server waits {} s for a body, plus 1 s per {} bytes received \
                         (--body-timeout)",
                        started.elapsed().as_secs_f64(),
                        limits.body_timeout.as_secs(),
                        limits.body_min_rate
                    ),
                ))
            }
        };
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("invalid_body", format!("reading the body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            out = Vec::new();
            if seen > limit.saturating_add(DRAIN_BEYOND_LIMIT) {
                break;
            }
            continue;
        }
        out.extend_from_slice(&chunk);
    }
    Ok((seen <= limit).then_some(out))
}

/// How long a body of which `received` bytes have come may take in all.
fn body_allowance(received: usize, limits: &Limits) -> Duration {
    limits.body_timeout
        + Duration::from_secs_f64(received as f64 / limits.body_min_rate.max(1) as f64)
}

/// Reads a JSON route's body of at most the server's body limit; a larger one is 413.
pub async fn read_body(body: Body, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    let limit = limits.body_bytes;
    read_limited(body, limit, limits).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the request body is larger than {limit} bytes, this server's limit \
                 (--max-body-size)"
            ),
        )
    })
}

/// A JSON object body (an empty body counts as `{}`).
async fn read_object(core: &Core, body: Body) -> Result<serde_json::Map<String, Json>, ApiError> {
    parse_object(&read_body(body, &core.limits).await?)
}

/// A JSON object body's bytes read into an object (blank counts as `{}`).
pub fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, Json>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

/// A JSON answer whose object keys keep the given order (history entries oldest first, as
/// ComfyUI's dict), which `serde_json::Map` would sort.
pub fn ordered_object(entries: impl IntoIterator<Item = (String, Json)>) -> Response {
    let mut text = String::from("{");
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Json::String(key).to_string());
        text.push(':');
        text.push_str(&value.to_string());
    }
    text.push('}');
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn comfy_routes() -> Router<AppState> {
    Router::new()
        .route("/prompt", get(get_prompt).post(post_prompt))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/interrupt", post(post_interrupt))
        .route("/free", post(post_free))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{prompt_id}", get(get_history_one))
        .route("/view", get(files::view))
        .route(
            "/upload/image",
            // The upload checks its own limit (files::upload), with a clear 413.
            post(files::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_one))
        .route("/system_stats", get(system_stats))
        .route("/embeddings", get(|| async { axum::Json(json!([])) }))
        .route("/features", get(features))
        .route("/models", get(models))
        .route("/models/{folder}", get(models_in))
        .route("/experiment/models", get(experiment_models))
        .route("/experiment/models/{folder}", get(experiment_models_in))
        .route("/ws", get(ws::handler))
        .merge(userdata::routes())
        .merge(frontend::api_routes())
}

/// Every route, behind the guard.
pub fn router(core: AppState) -> Router {
    let comfy = comfy_routes();
    let app = Router::new()
        .merge(comfy.clone())
        .nest("/api", comfy.merge(jobs::routes()))
        .merge(frontend::template_routes())
        .route("/v1/images/generations", post(openai::generations))
        .route("/", get(frontend::index))
        .route("/user.css", get(userdata::user_css));
    // With a frontend, every other path is one of its static files (ComfyUI's
    // `web.static('/', web_root)`); without one, an unknown route is a JSON 404.
    let app = match core.dirs.frontend.clone() {
        Some(dir) => app.fallback_service(tower_http::services::ServeDir::new(dir)),
        None => app.fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route".into())
        }),
    };
    app.layer(middleware::from_fn_with_state(
        core.clone(),
        security::guard,
    ))
    .with_state(core)
}

/// `GET /` without `--frontend`: a line saying what this server is.
pub fn no_frontend_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Veetance: ComfyUI's HTTP/WebSocket API (see docs/server.md). There is no web frontend \
         here: start `veetance serve --frontend auto` for ComfyUI's web editor \
         (docs/web-editor.md), or point a ComfyUI client at this address.\n",
    )
        .into_response()
}

/// ComfyUI's server features (`/features`, and the WebSocket's `feature_flags` answer).
pub fn server_features(core: &Core) -> Json {
    json!({
        "supports_preview_metadata": true,
        "max_upload_size": core.limits.upload_bytes,
    })
}

async fn features(State(core): State<AppState>) -> Response {
    axum::Json(server_features(&core)).into_response()
}

async fn get_prompt(State(core): State<AppState>) -> Result<Response, ApiError> {
    let n = blocking(&core, |c| Ok(c.queue.remaining()?)).await?;
    Ok(axum::Json(json!({ "exec_info": { "queue_remaining": n } })).into_response())
}

/// A client's `prompt_id`: a UUID in canonical lowercase hyphenated form
/// (`comfy_execution/jobs.py validate_job_id`).
pub fn is_canonical_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

/// The run environment validation checks against.
pub fn check_env(core: &Core) -> RunEnv {
    RunEnv {
        out_dir: core.dirs.output.clone(),
        models_dir: core.dirs.models.clone(),
        temp_dir: Some(core.dirs.temp.clone()),
        input_dir: Some(core.dirs.input.clone()),
        ..RunEnv::default()
    }
}

/// What `POST /prompt` and the OpenAI route queue, once validated.
pub struct Accepted {
    pub prompt_id: String,
    pub number: Json,
    pub node_errors: Json,
}

/// Validates a prompt as ComfyUI does and queues it. `Err` is the 400 answer.
pub async fn submit(
    core: &AppState,
    prompt_id: String,
    prompt: Json,
    mut extra_data: serde_json::Map<String, Json>,
    partial_targets: Option<Vec<String>>,
    number: Option<f64>,
    front: bool,
) -> Result<Accepted, ApiError> {
    let Some(nodes) = prompt.as_object() else {
        return Err(ApiError::bad_request(
            "invalid_prompt",
            "`prompt` must be an object of node id → {class_type, inputs}",
        ));
    };
    if nodes.len() > core.limits.prompt_nodes {
        return Err(ApiError::bad_request(
            "prompt_too_large",
            format!(
                "`prompt` has {} nodes; this server takes at most {} (--max-prompt-nodes)",
                nodes.len(),
                core.limits.prompt_nodes
            ),
        ));
    }
    extra_data.insert("create_time".into(), json!(now_ms()));
    let created_ms = now_ms();
    blocking(core, move |core| {
        let graph =
            veetance_comfy::prompt_to_graph(&prompt, &core.registry).map_err(prompt_error)?;
        let checked = veetance_comfy::check_prompt(&graph, &core.registry, &check_env(core))
            .map_err(prompt_error)?;
        let mut outputs = checked.outputs;
        let mut node_errors = checked.node_errors;
        if let Some(targets) = &partial_targets {
            // "Run selected": only these outputs, and only their errors.
            outputs.retain(|o| targets.contains(o));
            node_errors.retain(|_, e| e.dependent_outputs.iter().any(|o| targets.contains(o)));
            if outputs.is_empty() {
                let (kind, message) = if node_errors.is_empty() {
                    ("prompt_no_outputs", "Prompt has no outputs")
                } else {
                    (
                        "prompt_outputs_failed_validation",
                        "Prompt outputs failed validation",
                    )
                };
                return Err(prompt_error(veetance_comfy::PromptError {
                    error: veetance_comfy::ErrorBody {
                        kind: kind.into(),
                        message: message.into(),
                        details: "none of `partial_execution_targets` is an output node that \
                                  can run"
                            .into(),
                        extra_info: json!({}),
                    },
                    node_errors,
                }));
            }
        }
        let node_errors = serde_json::to_value(&node_errors)
            .map_err(|e| ApiError::internal(format!("node_errors: {e}")))?;
        let enqueued = core.queue.enqueue(NewPrompt {
            prompt_id: prompt_id.clone(),
            number,
            front,
            prompt,
            extra_data: Json::Object(extra_data),
            outputs_to_execute: outputs,
            created_ms,
        })?;
        let number = match enqueued {
            Enqueued::New(n) => {
                core.wake();
                core.broadcast_status();
                n
            }
            Enqueued::Existing(n) => n,
        };
        Ok(Accepted {
            prompt_id,
            number: number.to_json(),
            node_errors,
        })
    })
    .await
}

/// ComfyUI's 400 answer for a prompt: `{"error": {...}, "node_errors": {...}}`.
pub fn prompt_error(e: veetance_comfy::PromptError) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        body: serde_json::to_value(&e).unwrap_or_else(|_| json!({ "error": e.to_string() })),
    }
}

async fn post_prompt(
    State(core): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &core.limits).await?;
    let usage_source = headers
        .get("Comfy-Usage-Source")
        .and_then(|v| v.to_str().ok());
    let request = parse_prompt_request(&bytes, &core.registry, usage_source)?;
    let accepted = submit(
        &core,
        request.prompt_id,
        request.prompt,
        request.extra_data,
        request.partial_targets,
        request.number,
        request.front,
    )
    .await?;
    Ok(axum::Json(json!({
        "prompt_id": accepted.prompt_id,
        "number": accepted.number,
        "node_errors": accepted.node_errors,
    }))
    .into_response())
}

/// A `POST /prompt` body as read, before the prompt itself is validated ([`submit`] does that).
#[derive(Debug)]
pub struct PromptRequest {
    pub prompt_id: String,
    /// The API prompt (a UI workflow already turned into one).
    pub prompt: Json,
    /// `extra_data`, with `client_id`, the UI workflow (as `extra_pnginfo.workflow`) and
    /// `comfy_usage_source` added as ComfyUI adds them.
    pub extra_data: serde_json::Map<String, Json>,
    pub partial_targets: Option<Vec<String>>,
    pub number: Option<f64>,
    pub front: bool,
}

/// Reads a `POST /prompt` body (`usage_source`: the `Comfy-Usage-Source` header). `Err` is the
/// 400 answer naming the field.
pub fn parse_prompt_request(
    bytes: &[u8],
    registry: &NodeRegistry,
    usage_source: Option<&str>,
) -> Result<PromptRequest, ApiError> {
    let mut request = parse_object(bytes)?;
    let number = match request.get("number") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => n.as_f64(),
        Some(Json::String(s)) => Some(s.trim().parse::<f64>().map_err(|_| {
            ApiError::bad_request("invalid_number", format!("`number` {s:?} is not a number"))
        })?),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_number",
                format!("`number` must be a number, not {other}"),
            ))
        }
    };
    if number.is_some_and(|n| !n.is_finite()) {
        return Err(ApiError::bad_request(
            "invalid_number",
            "`number` must be finite",
        ));
    }
    let front = request.get("front").is_some_and(truthy);
    let Some(prompt) = request.remove("prompt") else {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "error": {
                    "type": "no_prompt",
                    "message": "No prompt provided",
                    "details": "No prompt provided",
                    "extra_info": {},
                },
                "node_errors": {},
            }),
        });
    };
    // A UI workflow (the JSON ComfyUI saves) is queued as the API prompt ComfyUI's frontend
    // would make of it; the workflow goes where the frontend puts it, into the PNG's chunks.
    let (prompt, ui_workflow) = match veetance_comfy::detect(&prompt) {
        Some(veetance_comfy::Format::Ui) => (
            veetance_comfy::ui_to_prompt(&prompt, registry).map_err(prompt_error)?,
            Some(prompt),
        ),
        _ => (prompt, None),
    };
    let prompt_id = match request.get("prompt_id") {
        None | Some(Json::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Json::String(id)) if is_canonical_uuid(id) => id.clone(),
        Some(_) => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                body: json!({
                    "error": {
                        "type": "invalid_prompt_id",
                        "message": "prompt_id must be a valid UUID",
                        "details": "prompt_id must be a UUID string in canonical lowercase \
                                    hyphenated form; omit it to let the server generate one",
                        "extra_info": {},
                    },
                    "node_errors": {},
                }),
            })
        }
    };
    let partial_targets = match request.get("partial_execution_targets") {
        None | Some(Json::Null) => None,
        Some(Json::Array(ids)) => Some(
            ids.iter()
                .map(|v| match v {
                    Json::String(s) => Ok(s.clone()),
                    Json::Number(n) => Ok(n.to_string()),
                    other => Err(ApiError::bad_request(
                        "invalid_partial_execution_targets",
                        format!("`partial_execution_targets` holds {other}, not a node id"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_partial_execution_targets",
                "`partial_execution_targets` must be a list of node ids",
            ))
        }
    };
    let mut extra_data = match request.remove("extra_data") {
        None | Some(Json::Null) => serde_json::Map::new(),
        Some(Json::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_extra_data",
                "`extra_data` must be a JSON object",
            ))
        }
    };
    match request.get("client_id") {
        None | Some(Json::Null) => {}
        Some(client_id @ Json::String(_)) => {
            extra_data.insert("client_id".into(), client_id.clone());
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_client_id",
                format!("`client_id` must be a string (the WebSocket's clientId), not {other}"),
            ))
        }
    }
    if let Some(workflow) = ui_workflow {
        if let Json::Object(pnginfo) = extra_data
            .entry("extra_pnginfo")
            .or_insert_with(|| json!({}))
        {
            pnginfo.entry("workflow").or_insert(workflow);
        }
    }
    if !extra_data.contains_key("comfy_usage_source") {
        if let Some(source) = usage_source {
            extra_data.insert("comfy_usage_source".into(), json!(source));
        }
    }
    Ok(PromptRequest {
        prompt_id,
        prompt,
        extra_data,
        partial_targets,
        number,
        front,
    })
}

/// Python's truthiness for JSON values (`if json_data['front']:`).
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

/// The prompt ids of a `delete` field: absent or null is none; anything but a list of strings
/// is 400 naming the field (ComfyUI would iterate a string's characters).
fn id_list(request: &serde_json::Map<String, Json>, field: &str) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_json",
            format!("`{field}` must be a list of prompt ids (strings)"),
        )
    };
    match request.get(field) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(ids)) => ids
            .iter()
            .map(|id| id.as_str().map(str::to_string).ok_or_else(invalid))
            .collect(),
        Some(_) => Err(invalid()),
    }
}

async fn get_queue(State(core): State<AppState>) -> Result<Response, ApiError> {
    let (running, pending) = blocking(&core, |c| Ok(c.queue.queue()?)).await?;
    Ok(axum::Json(json!({
        "queue_running": running.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
        "queue_pending": pending.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn post_queue(State(core): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let request = read_object(&core, body).await?;
    let delete = id_list(&request, "delete")?;
    blocking(&core, move |c| {
        let mut removed = Vec::new();
        if request.get("clear").is_some_and(truthy) {
            removed.extend(c.queue.clear_pending()?);
        }
        if !delete.is_empty() {
            removed.extend(c.queue.delete_pending(&delete)?);
        }
        for id in &removed {
            // Callers waiting for it (the OpenAI route) learn that it will not run.
            c.notify_done(id);
        }
        if !removed.is_empty() {
            c.broadcast_status();
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn post_interrupt(State(core): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &core.limits).await?;
    // An empty or invalid body is a global interrupt, as in ComfyUI.
    let target = serde_json::from_slice::<Json>(&bytes)
        .ok()
        .and_then(|j| {
            j.get("prompt_id")
                .and_then(Json::as_str)
                .map(str::to_string)
        })
        .filter(|id| !id.is_empty());
    interrupt(&core, target.as_deref());
    Ok(StatusCode::OK.into_response())
}

/// Cancels the running prompt (any, or only `prompt_id`); whether one was cancelled.
pub fn interrupt(core: &Core, prompt_id: Option<&str>) -> bool {
    if let Some(remote) = &core.remote {
        return remote.interrupt(prompt_id);
    }
    match core.running().as_ref() {
        Some(r) if prompt_id.is_none_or(|id| id == r.prompt_id) => {
            tracing::info!("interrupting prompt {}", r.prompt_id);
            r.cancel.cancel();
            true
        }
        _ => false,
    }
}

async fn post_free(State(core): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let request = read_object(&core, body).await?;
    let unload_models = request.get("unload_models").is_some_and(truthy);
    let free_memory = request.get("free_memory").is_some_and(truthy);
    if let (true, Some(remote)) = (unload_models || free_memory, &core.remote) {
        remote.free(unload_models, free_memory);
    } else if unload_models || free_memory {
        core.tell_worker(WorkerMsg::Free {
            unload_models,
            free_memory,
        });
    }
    Ok(StatusCode::OK.into_response())
}

fn parse_query_int(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("`{name}` must be an integer, not {v:?}"),
            )
        }),
    }
}

async fn get_history(
    State(core): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let max_items = parse_query_int(&q, "max_items")?.map(|m| m.max(0) as usize);
    let offset = parse_query_int(&q, "offset")?;
    let entries = blocking(&core, move |c| Ok(c.queue.history(max_items, offset)?)).await?;
    Ok(ordered_object(
        entries
            .into_iter()
            .map(|e| (e.item.prompt_id.clone(), e.to_json())),
    ))
}

async fn get_history_one(
    State(core): State<AppState>,
    UrlPath(prompt_id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let entry = blocking(&core, move |c| Ok(c.queue.history_one(&prompt_id)?)).await?;
    Ok(ordered_object(
        entry.map(|e| (e.item.prompt_id.clone(), e.to_json())),
    ))
}

async fn post_history(State(core): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let request = read_object(&core, body).await?;
    let delete = id_list(&request, "delete")?;
    blocking(&core, move |c| {
        if request.get("clear").is_some_and(truthy) {
            c.queue.clear_history()?;
        }
        if !delete.is_empty() {
            c.queue.delete_history(&delete)?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn object_info(State(core): State<AppState>) -> Result<Response, ApiError> {
    let info = blocking(&core, |c| {
        Ok(veetance_comfy::object_info(&c.registry, &c.dirs.models))
    })
    .await?;
    Ok(axum::Json(info).into_response())
}

async fn object_info_one(
    State(core): State<AppState>,
    UrlPath(class): UrlPath<String>,
) -> Result<Response, ApiError> {
    let info = blocking(&core, move |c| {
        let all = veetance_comfy::object_info(&c.registry, &c.dirs.models);
        let mut out = serde_json::Map::new();
        if let Some(entry) = all.get(&class) {
            out.insert(class, entry.clone());
        }
        Ok(Json::Object(out))
    })
    .await?;
    Ok(axum::Json(info).into_response())
}

async fn system_stats(State(core): State<AppState>) -> Result<Response, ApiError> {
    let stats = blocking(&core, |c| {
        let host = HostMemory::read();
        let ram_total = host.total.unwrap_or(0);
        let ram_free = host.available.unwrap_or(0);
        let cache_device = c
            .cache_device_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let device = match c.probe.as_ref().and_then(|p| p.memory()) {
            Some(m) => json!({
                "name": "cuda:0",
                "type": "cuda",
                "index": 0,
                "vram_total": m.total,
                "vram_free": m.free,
                "torch_vram_total": cache_device,
                "torch_vram_free": 0,
            }),
            None => json!({
                "name": "cpu",
                "type": "cpu",
                "index": null,
                "vram_total": ram_total,
                "vram_free": ram_free,
                "torch_vram_total": ram_total,
                "torch_vram_free": ram_free,
            }),
        };
        let os = match std::env::consts::OS {
            "windows" => "win32",
            "macos" => "darwin",
            other => other,
        };
        Ok(json!({
            "system": {
                "os": os,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": env!("CARGO_PKG_VERSION"),
                "veetance_version": env!("CARGO_PKG_VERSION"),
                "required_frontend_version": "",
                "installed_templates_version": "",
                "required_templates_version": "",
                "comfy_package_versions": [],
                "python_version": "",
                "pytorch_version": "",
                "embedded_python": false,
                "deploy_environment": "veetance",
                "argv": std::env::args().collect::<Vec<_>>(),
            },
            "devices": [device],
        }))
    })
    .await?;
    Ok(axum::Json(stats).into_response())
}

/// Model folders: the ones the loaders use and every folder present in the models folder.
fn model_folders(core: &Core) -> Vec<String> {
    let mut names: Vec<String> = ["diffusion_models", "text_encoders", "vae"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Ok(entries) = std::fs::read_dir(&core.dirs.models) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Some(n) = e.file_name().to_str() {
                    if !names.iter().any(|x| x == n) {
                        names.push(n.to_string());
                    }
                }
            }
        }
    }
    names.sort();
    names
}

async fn models(State(core): State<AppState>) -> Result<Response, ApiError> {
    let names = blocking(&core, |c| Ok(model_folders(c))).await?;
    Ok(axum::Json(names).into_response())
}

const MODEL_EXTENSIONS: [&str; 8] = [
    "safetensors",
    "sft",
    "gguf",
    "ckpt",
    "pt",
    "pt2",
    "pth",
    "bin",
];

/// The model files (and top-level folders: a VAE saved as a diffusers folder) in one of the
/// models folder's subfolders, relative to it and sorted; `None` when it is not a model folder.
fn model_files(core: &Core, folder: &str) -> Option<Vec<(String, PathBuf)>> {
    if !model_folders(core).iter().any(|f| f == folder) {
        return None;
    }
    let root = core.dirs.models.join(folder);
    let mut out = Vec::new();
    let mut stack = vec![(root.clone(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(&root)
                .map(|r| r.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default();
            if rel.starts_with('.') || rel.contains("/.") {
                continue;
            }
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                if depth == 0 {
                    out.push((rel.clone(), path.clone()));
                }
                if depth < 8 {
                    stack.push((path, depth + 1));
                }
            } else if path
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| MODEL_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            {
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Some(out)
}

async fn models_in(
    State(core): State<AppState>,
    UrlPath(folder): UrlPath<String>,
) -> Result<Response, ApiError> {
    let list = blocking(&core, move |c| {
        Ok(model_files(c, &folder).map(|l| l.into_iter().map(|(rel, _)| rel).collect::<Vec<_>>()))
    })
    .await?;
    match list {
        Some(list) => Ok(axum::Json(list).into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// `/experiment/models`: the frontend's model library asks which folders there are.
async fn experiment_models(State(core): State<AppState>) -> Result<Response, ApiError> {
    let list = blocking(&core, |c| {
        Ok(model_folders(c)
            .into_iter()
            .map(|name| {
                let path = c.dirs.models.join(&name).to_string_lossy().into_owned();
                json!({ "name": name, "folders": [path] })
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(axum::Json(list).into_response())
}

/// `/experiment/models/{folder}`: ComfyUI's `{name, pathIndex, modified, created, size}`.
async fn experiment_models_in(
    State(core): State<AppState>,
    UrlPath(folder): UrlPath<String>,
) -> Result<Response, ApiError> {
    let list = blocking(&core, move |c| {
        Ok(model_files(c, &folder).map(|files| {
            files
                .into_iter()
                .filter(|(_, path)| path.is_file())
                .map(|(name, path)| {
                    let meta = std::fs::metadata(&path).ok();
                    json!({
                        "name": name,
                        "pathIndex": 0,
                        "modified": meta.as_ref().map_or(0.0, |m| crate::unix_seconds(m.modified())),
                        "created": meta.as_ref().map_or(0.0, |m| crate::unix_seconds(m.created().or_else(|_| m.modified()))),
                        "size": meta.as_ref().map_or(0, |m| m.len()),
                    })
                })
                .collect::<Vec<_>>()
        }))
    })
    .await?;
    match list {
        Some(list) => Ok(axum::Json(list).into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_must_be_canonical_uuids() {
        assert!(is_canonical_uuid("2f1c5d3e-8b7a-4c1e-9f0a-123456789abc"));
        assert!(!is_canonical_uuid("2F1C5D3E-8B7A-4C1E-9F0A-123456789ABC"));
        assert!(!is_canonical_uuid("2f1c5d3e8b7a4c1e9f0a123456789abc"));
        assert!(!is_canonical_uuid("{2f1c5d3e-8b7a-4c1e-9f0a-123456789abc}"));
        assert!(!is_canonical_uuid("hello"));
    }

    #[test]
    fn truthiness_is_pythons() {
        assert!(truthy(&json!(true)) && truthy(&json!(1)) && truthy(&json!("x")));
        assert!(!truthy(&json!(false)) && !truthy(&json!(0)) && !truthy(&json!("")));
    }
}
