//! ComfyUI's `/api/jobs` family (`comfy_execution/jobs.py`): one list of every prompt the
//! server knows, queued, running or finished, with filters, sorting and pagination; one job
//! with its outputs (and, here, the running node's progress); cancelling by id.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value as Json};

use crate::routes::{blocking, interrupt, is_canonical_uuid, read_body, ApiError};
use crate::store::{HistoryEntry, JobRow, QueueItem, State as RowState};
use crate::{AppState, Core};

const STATUSES: [&str; 5] = ["pending", "in_progress", "completed", "failed", "cancelled"];
const PREVIEWABLE: [&str; 5] = ["images", "video", "audio", "3d", "text"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/cancel", post(cancel_many))
        .route("/jobs/{job_id}", get(one))
        .route("/jobs/{job_id}/cancel", post(cancel_one))
}

/// The jobs routes answer errors as `{"error": "..."}`, like ComfyUI's.
fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        body: json!({ "error": message.into() }),
    }
}

/// Drops `null` members, as ComfyUI's `prune_dict`.
fn prune(value: Json) -> Json {
    match value {
        Json::Object(map) => Json::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

/// `(outputs_count, preview_output, previewable_outputs_count)` of a history entry's outputs.
fn outputs_summary(outputs: &Json) -> (usize, Json, usize) {
    let mut count = 0;
    let mut previewable = 0;
    let mut preview = Json::Null;
    let mut fallback = Json::Null;
    if let Some(nodes) = outputs.as_object() {
        for (node_id, node_outputs) in nodes {
            let Some(kinds) = node_outputs.as_object() else {
                continue;
            };
            for (media, items) in kinds {
                if media == "animated" {
                    continue;
                }
                let Some(items) = items.as_array() else {
                    continue;
                };
                for item in items.iter().filter(|i| i.is_object()) {
                    count += 1;
                    if !PREVIEWABLE.contains(&media.as_str()) {
                        continue;
                    }
                    previewable += 1;
                    let mut enriched = item.as_object().cloned().unwrap_or_default();
                    enriched.insert("nodeId".into(), json!(node_id));
                    enriched.entry("mediaType").or_insert_with(|| json!(media));
                    if preview.is_null() && item.get("type") == Some(&json!("output")) {
                        preview = Json::Object(enriched);
                    } else if fallback.is_null() {
                        fallback = Json::Object(enriched);
                    }
                }
            }
        }
    }
    if preview.is_null() {
        preview = fallback;
    }
    (count, preview, previewable)
}

/// Status, start, end and error of a finished prompt, from its history status.
fn finished_status(status: &Json) -> (&'static str, Json, Json, Json) {
    let (mut start, mut end, mut error, mut interrupted) =
        (Json::Null, Json::Null, Json::Null, false);
    if let Some(messages) = status.get("messages").and_then(Json::as_array) {
        for m in messages {
            let (Some(kind), Some(data)) = (m.get(0).and_then(Json::as_str), m.get(1)) else {
                continue;
            };
            match kind {
                "execution_start" => start = data.get("timestamp").cloned().unwrap_or(Json::Null),
                "execution_success" | "execution_error" | "execution_interrupted" => {
                    end = data.get("timestamp").cloned().unwrap_or(Json::Null);
                    if kind == "execution_error" {
                        error = data.clone();
                    }
                    interrupted |= kind == "execution_interrupted";
                }
                _ => {}
            }
        }
    }
    let job_status = match status.get("status_str").and_then(Json::as_str) {
        Some("error") if interrupted => "cancelled",
        Some("error") => "failed",
        _ => "completed",
    };
    (job_status, start, end, error)
}

fn job_of_row(row: &JobRow, running: Option<&crate::Running>) -> Json {
    match row.state {
        RowState::Pending | RowState::Running => {
            let status = if row.state == RowState::Running {
                "in_progress"
            } else {
                "pending"
            };
            let mut job = json!({
                "id": row.prompt_id,
                "status": status,
                "priority": row.number.to_json(),
                "create_time": row.created_ms,
                "outputs_count": 0,
                "previewable_outputs_count": 0,
                "workflow_id": row.workflow_id,
            });
            if let Some(r) = running.filter(|r| r.prompt_id == row.prompt_id) {
                job["progress"] = progress(r);
            }
            if let Some(w) = &row.worker {
                job["worker"] = json!(w);
            }
            prune(job)
        }
        RowState::Done => {
            let (status, start, end, error) = finished_status(&row.status);
            let (count, preview, previewable) = outputs_summary(&row.outputs);
            prune(json!({
                "id": row.prompt_id,
                "status": status,
                "priority": row.number.to_json(),
                "create_time": row.created_ms,
                "execution_start_time": start,
                "execution_end_time": end,
                "execution_error": error,
                "outputs_count": count,
                "previewable_outputs_count": previewable,
                "preview_output": preview,
                "workflow_id": row.workflow_id,
                // Behind a shared queue: the worker that ran it (an addition to ComfyUI).
                "worker": row.worker,
            }))
        }
    }
}

/// The running node's progress (an addition to ComfyUI's job shape).
fn progress(r: &crate::Running) -> Json {
    json!({ "node": r.node, "value": r.value, "max": r.max })
}

async fn list(
    State(core): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let statuses: Option<Vec<String>> = match q.get("status") {
        Some(s) if !s.trim().is_empty() => {
            let wanted: Vec<String> = s
                .split(',')
                .map(|x| x.trim().to_lowercase())
                .filter(|x| !x.is_empty())
                .collect();
            let invalid: Vec<&str> = wanted
                .iter()
                .map(String::as_str)
                .filter(|x| !STATUSES.contains(x))
                .collect();
            if !invalid.is_empty() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Invalid status value(s): {}. Valid values: {}",
                        invalid.join(", "),
                        STATUSES.join(", ")
                    ),
                ));
            }
            Some(wanted)
        }
        _ => None,
    };
    let sort_by = q
        .get("sort_by")
        .map_or("created_at".to_string(), |s| s.to_lowercase());
    if sort_by != "created_at" && sort_by != "execution_duration" {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "sort_by must be 'created_at' or 'execution_duration'",
        ));
    }
    let sort_order = q
        .get("sort_order")
        .map_or("desc".to_string(), |s| s.to_lowercase());
    if sort_order != "asc" && sort_order != "desc" {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "sort_order must be 'asc' or 'desc'",
        ));
    }
    let limit = match q.get("limit") {
        None => None,
        Some(l) => match l.trim().parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "limit must be a positive integer",
                ))
            }
            Err(_) => return Err(error(StatusCode::BAD_REQUEST, "limit must be an integer")),
        },
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(o) => match o.trim().parse::<i64>() {
            Ok(n) => n.max(0) as usize,
            Err(_) => return Err(error(StatusCode::BAD_REQUEST, "offset must be an integer")),
        },
    };
    let workflow_id = q.get("workflow_id").cloned().filter(|w| !w.is_empty());

    let rows = blocking(&core, |c| Ok(c.queue.job_rows()?)).await?;
    let running = core.running().clone();
    // ComfyUI's order before sorting: running, pending (queue order), history (oldest first).
    let rank = |r: &JobRow| match r.state {
        RowState::Running => 0,
        RowState::Pending => 1,
        RowState::Done => 2,
    };
    let mut rows = rows;
    rows.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then(a.number.value.total_cmp(&b.number.value))
    });
    let mut jobs: Vec<Json> = rows
        .iter()
        .filter(|r| workflow_id.is_none() || r.workflow_id == workflow_id)
        .map(|r| job_of_row(r, running.as_ref()))
        .filter(|j| {
            statuses.as_ref().is_none_or(|s| {
                j.get("status")
                    .and_then(Json::as_str)
                    .is_some_and(|st| s.iter().any(|x| x == st))
            })
        })
        .collect();
    let key = |j: &Json| -> i64 {
        if sort_by == "execution_duration" {
            let start = j.get("execution_start_time").and_then(Json::as_i64);
            let end = j.get("execution_end_time").and_then(Json::as_i64);
            match (start, end) {
                (Some(s), Some(e)) if s > 0 && e > 0 => e - s,
                _ => 0,
            }
        } else {
            j.get("create_time").and_then(Json::as_i64).unwrap_or(0)
        }
    };
    // Stable, like Python's sorted (reverse=True keeps ties in order too).
    if sort_order == "desc" {
        jobs.sort_by_key(|j| std::cmp::Reverse(key(j)));
    } else {
        jobs.sort_by_key(key);
    }
    let total = jobs.len();
    let page: Vec<Json> = jobs
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    let has_more = offset + page.len() < total;
    Ok(axum::Json(json!({
        "jobs": page,
        "pagination": { "offset": offset, "limit": limit, "total": total, "has_more": has_more },
    }))
    .into_response())
}

fn job_of_history(entry: &HistoryEntry) -> Json {
    let row = JobRow {
        prompt_id: entry.item.prompt_id.clone(),
        state: RowState::Done,
        number: entry.item.number,
        created_ms: entry.created_ms,
        workflow_id: workflow_id(&entry.item),
        outputs: entry.outputs.clone(),
        status: entry.status.clone(),
        worker: None,
    };
    let mut job = job_of_row(&row, None);
    job["outputs"] = entry.outputs.clone();
    job["execution_status"] = entry.status.clone();
    job["workflow"] = json!({ "prompt": entry.item.prompt, "extra_data": entry.item.extra_data });
    job
}

fn workflow_id(item: &QueueItem) -> Option<String> {
    item.extra_data
        .pointer("/extra_pnginfo/workflow/id")
        .and_then(Json::as_str)
        .map(str::to_string)
}

async fn one(
    State(core): State<AppState>,
    UrlPath(job_id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let id = job_id.clone();
    let found = blocking(&core, move |c| {
        let worker = c.queue.worker_of(&id);
        let with_worker = |mut job: Json| {
            if let Some(w) = &worker {
                job["worker"] = json!(w);
            }
            job
        };
        if let Some(entry) = c.queue.history_one(&id)? {
            return Ok(Some(with_worker(job_of_history(&entry))));
        }
        let Some((state, item)) = c.queue.queued_item(&id)? else {
            return Ok(None);
        };
        let created = item
            .extra_data
            .get("create_time")
            .and_then(Json::as_i64)
            .unwrap_or(0);
        let row = JobRow {
            prompt_id: item.prompt_id.clone(),
            state,
            number: item.number,
            created_ms: created,
            workflow_id: workflow_id(&item),
            outputs: json!({}),
            status: Json::Null,
            worker: None,
        };
        let running = c.running().clone();
        let mut job = job_of_row(&row, running.as_ref());
        job["workflow"] = json!({ "prompt": item.prompt, "extra_data": item.extra_data });
        Ok(Some(with_worker(job)))
    })
    .await?;
    match found {
        Some(job) => Ok(axum::Json(job).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, "Job not found")),
    }
}

/// Cancels a job whatever its state: interrupts it if it runs, dequeues it if it waits;
/// whether either happened (a finished or unknown id is a no-op).
fn cancel(core: &Core, id: &str) -> Result<bool, ApiError> {
    if interrupt(core, Some(id)) {
        return Ok(true);
    }
    if !core.queue.delete_pending(&[id.to_string()])?.is_empty() {
        core.notify_done(id);
        core.broadcast_status();
        return Ok(true);
    }
    // It may have started between the two checks.
    Ok(interrupt(core, Some(id)))
}

async fn cancel_one(
    State(core): State<AppState>,
    UrlPath(job_id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let cancelled = blocking(&core, move |c| cancel(c, &job_id)).await?;
    Ok(axum::Json(json!({ "cancelled": cancelled })).into_response())
}

async fn cancel_many(State(core): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &core.limits).await?;
    let request: Json = serde_json::from_slice(&bytes)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "Request body must be valid JSON"))?;
    let Some(ids) = request.get("job_ids").and_then(Json::as_array) else {
        return Err(error(StatusCode::BAD_REQUEST, "job_ids must be a list"));
    };
    let invalid: Vec<Json> = ids
        .iter()
        .filter(|v| !v.as_str().is_some_and(is_canonical_uuid))
        .map(|v| match v {
            Json::String(s) => json!(s),
            other => json!(other.to_string()),
        })
        .collect();
    if !invalid.is_empty() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({ "error": "job_ids contains invalid id(s)", "invalid_ids": invalid }),
        });
    }
    let ids: Vec<String> = ids
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let cancelled = blocking(&core, move |c| {
        let mut any = false;
        for id in &ids {
            any |= cancel(c, id)?;
        }
        Ok(any)
    })
    .await?;
    Ok(axum::Json(json!({ "cancelled": cancelled })).into_response())
}
