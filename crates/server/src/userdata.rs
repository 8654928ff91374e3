//! What ComfyUI keeps per user and its web frontend reads and writes: `/users`, `/settings`
//! and `/userdata` (saved workflows, subgraphs, `user.css`, templates a user made).
//!
//! One user, `default`, as ComfyUI without `--multi-user`: its files live in
//! `<user dir>/default/`, settings in `comfy.settings.json` there. Paths in requests are
//! relative, hold no `..` (nor, on Windows, drive or stream names), and never lead through a
//! link outside the user's folder; hidden files are not listed. Every write goes to a
//! temp file in the same folder first and is renamed over the target, so a crash or a full disk
//! never leaves half a workflow or half a settings file behind.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value as Json};

use crate::files::{inside, make_dir_inside, subfolder_parts};
use crate::routes::{blocking, read_body, ApiError};
use crate::{AppState, Core};

/// The one user, as ComfyUI names it without `--multi-user`.
pub const DEFAULT_USER: &str = "default";

/// The settings file in the user's folder (ComfyUI's name).
const SETTINGS_FILE: &str = "comfy.settings.json";

/// Most entries one listing returns; a folder with more is cut there (and logged).
const MAX_LISTED: usize = 100_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(users).post(add_user))
        .route("/settings", get(all_settings).post(merge_settings))
        .route("/settings/{id}", get(one_setting).post(set_setting))
        .route("/userdata", get(list))
        .route("/v2/userdata", get(list_v2))
        .route(
            "/userdata/{file}",
            get(read_file).post(write_file).delete(delete_file),
        )
        .route("/userdata/{file}/move/{dest}", post(move_file))
}

/// A plain-text error answer, as ComfyUI's user routes give (`web.Response(status, text)`).
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::debug!("userdata: {message}");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// Why a path or the user folder is refused: a status and a plain-text message (kept small, so
/// that `Result`s carrying it stay cheap; it becomes a response at the route).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.status, self.message)
    }
}

impl From<Refusal> for Box<Response> {
    fn from(r: Refusal) -> Box<Response> {
        Box::new(r.into_response())
    }
}

/// Runs a route's file work off the async threads, in the user's folder (created when
/// missing). `Err` is the answer to give: a refusal or a server error, made one by `?`
/// (boxed: a `Response` is large).
async fn in_user_folder(
    core: &AppState,
    work: impl FnOnce(&Path) -> Result<Response, Box<Response>> + Send + 'static,
) -> Result<Response, ApiError> {
    blocking(core, move |c| {
        Ok(user_root(c)
            .map_err(Box::<Response>::from)
            .and_then(|root| work(&root))
            .unwrap_or_else(|answer| *answer))
    })
    .await
}

fn deny(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// The user's folder, created when missing.
fn user_root(core: &Core) -> Result<PathBuf, Refusal> {
    let root = core.dirs.user.join(DEFAULT_USER);
    std::fs::create_dir_all(&root).map_err(|e| {
        deny(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot create the user folder {}: {e}", root.display()),
        )
    })?;
    root.canonicalize().map_err(|e| {
        deny(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot resolve the user folder {}: {e}", root.display()),
        )
    })
}

/// The components of a path under the user's folder, or why it is refused: relative, no `..`,
/// no NUL. Unlike upload subfolders, `:` is allowed except on Windows (where it names a drive or
/// a stream): the frontend saves a workflow called "Flow: v2" as `Flow: v2.json`, as ComfyUI does
/// on Linux and macOS.
fn user_parts(rel: &str) -> Result<Vec<&str>, String> {
    if cfg!(windows) {
        return subfolder_parts(rel);
    }
    if rel.contains('\0') {
        return Err("the path holds a NUL character".into());
    }
    if rel.starts_with(['/', '\\']) {
        return Err(format!("{rel:?} is an absolute path"));
    }
    let mut parts = Vec::new();
    for part in rel.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{rel:?} leads outside the user folder")),
            p => parts.push(p),
        }
    }
    Ok(parts)
}

/// A request's path under the user's folder: `(folder it sits in, file name)`, the folder
/// created when `create` is set. Refused (403, as ComfyUI) when it leaves the folder.
fn resolve(root: &Path, rel: &str, create: bool) -> Result<(PathBuf, String), Refusal> {
    let parts = user_parts(rel).map_err(|e| deny(StatusCode::FORBIDDEN, e))?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(deny(StatusCode::BAD_REQUEST, "the path names no file"));
    };
    let dirs: Vec<String> = dirs.iter().map(|s| s.to_string()).collect();
    let dir = if create {
        make_dir_inside(root, &dirs).map_err(|e| deny(StatusCode::FORBIDDEN, e))?
    } else {
        let dir = dirs.iter().fold(root.to_path_buf(), |d, p| d.join(p));
        match inside(root, &dir) {
            Some(real) => real,
            None if dir.exists() => {
                return Err(deny(
                    StatusCode::FORBIDDEN,
                    format!("{rel:?} leads outside the user folder"),
                ))
            }
            None => return Err(deny(StatusCode::NOT_FOUND, format!("{rel:?} not found"))),
        }
    };
    Ok((dir, name.to_string()))
}

/// The file at `rel` when it exists and is a plain file (links are not followed out).
fn existing_file(root: &Path, rel: &str) -> Result<PathBuf, Refusal> {
    let (dir, name) = resolve(root, rel, false)?;
    let path = dir.join(&name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(m) if m.file_type().is_symlink() => match inside(root, &path) {
            Some(real) if real.is_file() => Ok(real),
            _ => Err(deny(
                StatusCode::FORBIDDEN,
                format!("{rel:?} leads outside the user folder"),
            )),
        },
        Ok(_) => Err(deny(
            StatusCode::BAD_REQUEST,
            format!("{rel:?} is a folder"),
        )),
        Err(_) => Err(deny(StatusCode::NOT_FOUND, format!("{rel:?} not found"))),
    }
}

/// Writes `bytes` to `dir/name` through a temp file in `dir` and a rename, so a reader sees the
/// old file or the new one, never a part.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    write_new_or_replace(dir, name, bytes, true).map(|_| ())
}

/// Writes `bytes` to `dir/name` through a temp file in `dir`: renamed over the target when
/// `replace`, else linked to the name so that a file there (even one made a moment ago by
/// another request) is never replaced. `Ok(false)`: the name was taken.
fn write_new_or_replace(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    replace: bool,
) -> std::io::Result<bool> {
    // A short temp name: the target's own name may be near the file system's length limit.
    let temp = dir.join(format!(".veetance-{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&temp, dir.join(name))?;
            return Ok(true);
        }
        match std::fs::hard_link(&temp, dir.join(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&temp);
    result
}

/// ComfyUI's `FileInfo`: `{path, size, modified, created}`, times in seconds.
fn file_info(path: &Path, relative_to: &Path) -> Json {
    let meta = std::fs::metadata(path).ok();
    let rel = path
        .strip_prefix(relative_to)
        .map(|r| r.to_string_lossy().replace('\\', "/"))
        .unwrap_or_default();
    json!({
        "path": rel,
        "size": meta.as_ref().map_or(0, |m| m.len()),
        "modified": meta.as_ref().map_or(0.0, |m| crate::unix_seconds(m.modified())),
        "created": meta.as_ref().map_or(0.0, |m| crate::unix_seconds(m.created().or_else(|_| m.modified()))),
    })
}

/// `path` relative to the user's folder, with forward slashes.
fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .map(|r| r.to_string_lossy().replace('\\', "/"))
        .unwrap_or_default()
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

// ---- /users --------------------------------------------------------------------------------

async fn users(State(core): State<AppState>) -> Result<Response, ApiError> {
    let migrated = blocking(&core, |c| Ok(c.dirs.user.join(DEFAULT_USER).is_dir())).await?;
    Ok(axum::Json(json!({ "storage": "server", "migrated": migrated })).into_response())
}

async fn add_user() -> Response {
    refuse(
        StatusCode::BAD_REQUEST,
        "this server has one user (`default`); it has no multi-user mode",
    )
}

// ---- /settings -----------------------------------------------------------------------------

/// The user's settings as read: a missing file is `{}`; a damaged one (not a JSON object) is
/// `{}` too for reading, as ComfyUI, and is set aside before the next write replaces it.
struct Settings {
    map: Map<String, Json>,
    damaged: bool,
}

/// Reads the settings file. An error other than "not found" (permissions, I/O) is an error:
/// treating it as `{}` would let the next write wipe every setting.
fn load_settings(root: &Path) -> Result<Settings, ApiError> {
    let path = root.join(SETTINGS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Settings {
                map: Map::new(),
                damaged: false,
            })
        }
        Err(e) => {
            return Err(ApiError::internal(format!(
                "cannot read the settings file {}: {e}",
                path.display()
            )))
        }
    };
    match serde_json::from_slice::<Json>(&bytes) {
        Ok(Json::Object(map)) => Ok(Settings {
            map,
            damaged: false,
        }),
        _ => {
            tracing::error!(
                "the settings file {} is damaged; the frontend gets defaults, and the file is \
                 kept as {SETTINGS_FILE}.damaged when a setting is saved",
                path.display()
            );
            Ok(Settings {
                map: Map::new(),
                damaged: true,
            })
        }
    }
}

fn save_settings(root: &Path, settings: &Settings) -> Result<(), ApiError> {
    if settings.damaged {
        let kept = root.join(format!("{SETTINGS_FILE}.damaged"));
        std::fs::rename(root.join(SETTINGS_FILE), &kept).map_err(|e| {
            ApiError::internal(format!(
                "cannot set the damaged settings file aside as {}: {e}",
                kept.display()
            ))
        })?;
    }
    let text = serde_json::to_vec_pretty(&settings.map).map_err(ApiError::internal)?;
    write_atomically(root, SETTINGS_FILE, &text).map_err(|e| {
        ApiError::internal(format!(
            "cannot save the settings in {}: {e}",
            root.join(SETTINGS_FILE).display()
        ))
    })
}

fn settings_body(bytes: &[u8]) -> Result<Json, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the setting value is not valid JSON: {e}"),
        )
    })
}

async fn all_settings(State(core): State<AppState>) -> Result<Response, ApiError> {
    in_user_folder(&core, |root| {
        Ok(axum::Json(Json::Object(load_settings(root)?.map)).into_response())
    })
    .await
}

async fn one_setting(
    State(core): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    in_user_folder(&core, move |root| {
        let value = load_settings(root)?.map.remove(&id).unwrap_or(Json::Null);
        Ok(axum::Json(value).into_response())
    })
    .await
}

/// Serialises read-modify-write of the settings file (two tabs saving at once).
static SETTINGS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

async fn merge_settings(State(core): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &core.limits).await?;
    let Json::Object(new) = settings_body(&bytes)? else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "POST /settings takes a JSON object of setting id → value",
        ));
    };
    in_user_folder(&core, move |root| {
        let _held = SETTINGS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut settings = load_settings(root)?;
        settings.map.extend(new);
        save_settings(root, &settings)?;
        Ok(StatusCode::OK.into_response())
    })
    .await
}

async fn set_setting(
    State(core): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &core.limits).await?;
    let value = settings_body(&bytes)?;
    in_user_folder(&core, move |root| {
        let _held = SETTINGS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut settings = load_settings(root)?;
        settings.map.insert(id, value);
        save_settings(root, &settings)?;
        Ok(StatusCode::OK.into_response())
    })
    .await
}

// ---- /userdata -----------------------------------------------------------------------------

/// Every plain file under `dir` (recursively when asked), hidden ones left out.
fn walk(dir: &Path, recurse: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            // Hidden files and folders are not listed (ComfyUI's glob skips them): the
            // frontend's own `workflows/.index.json`, temp files.
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                if recurse {
                    stack.push(e.path());
                }
            } else if kind.is_file() {
                out.push(e.path());
            }
            if out.len() >= MAX_LISTED {
                tracing::warn!(
                    "{}: more than {MAX_LISTED} files; the listing stops there",
                    dir.display()
                );
                return out;
            }
        }
    }
    out.sort();
    out
}

/// `GET /userdata?dir=…&recurse=&full_info=&split=`: ComfyUI's three shapes (paths, path
/// lists, file infos), relative to `dir`. A folder that does not exist yet is empty.
async fn list(
    State(core): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    in_user_folder(&core, move |root| {
        let Some(dir) = query.get("dir").filter(|d| !d.is_empty()) else {
            return Ok(refuse(
                StatusCode::BAD_REQUEST,
                "Directory not provided: add ?dir=",
            ));
        };
        let parts = match user_parts(dir) {
            Ok(p) => p,
            Err(e) => return Ok(refuse(StatusCode::FORBIDDEN, e)),
        };
        let path = parts.iter().fold(root.to_path_buf(), |d, p| d.join(p));
        let path = match inside(root, &path) {
            Some(p) if p.is_dir() => p,
            Some(_) => {
                return Ok(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("{dir:?} is a file, not a folder"),
                ))
            }
            // ComfyUI answers 404 for a folder not made yet, which the frontend reads as empty
            // but the browser logs as an error on every start of a new user: an empty list
            // says the same without the noise.
            None if !path.exists() => {
                return Ok(axum::Json(Json::Array(Vec::new())).into_response())
            }
            None => {
                return Ok(refuse(
                    StatusCode::FORBIDDEN,
                    format!("{dir:?} leads outside the user folder"),
                ))
            }
        };
        let (recurse, full, split) = (
            flag(&query, "recurse"),
            flag(&query, "full_info"),
            flag(&query, "split"),
        );
        let items: Vec<Json> = walk(&path, recurse)
            .iter()
            .map(|f| {
                if full {
                    file_info(f, &path)
                } else {
                    let rel = relative(f, &path);
                    if split {
                        let mut parts = vec![Json::String(rel.clone())];
                        parts.extend(rel.split('/').map(|p| Json::String(p.into())));
                        Json::Array(parts)
                    } else {
                        Json::String(rel)
                    }
                }
            })
            .collect();
        Ok(axum::Json(items).into_response())
    })
    .await
}

/// `GET /v2/userdata?path=`: files and folders under `path`, folders first.
async fn list_v2(
    State(core): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    in_user_folder(&core, move |root| {
        let rel = query.get("path").cloned().unwrap_or_default();
        let parts = match user_parts(&rel) {
            Ok(p) => p,
            Err(e) => return Ok(refuse(StatusCode::BAD_REQUEST, e)),
        };
        let target = parts.iter().fold(root.to_path_buf(), |d, p| d.join(p));
        let Some(target) = inside(root, &target) else {
            return Ok(refuse(StatusCode::NOT_FOUND, format!("{rel:?} not found")));
        };
        if !target.is_dir() {
            return Ok(refuse(
                StatusCode::BAD_REQUEST,
                format!("{rel:?} is not a folder"),
            ));
        }
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        let mut stack = vec![target];
        'walk: while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let Ok(kind) = e.file_type() else { continue };
                let path = e.path();
                if kind.is_dir() {
                    dirs.push(
                        json!({"name": name, "path": relative(&path, root), "type": "directory"}),
                    );
                    stack.push(path);
                } else if kind.is_file() {
                    let meta = e.metadata().ok();
                    files.push(json!({
                        "name": name,
                        "path": relative(&path, root),
                        "type": "file",
                        "size": meta.as_ref().map_or(0, |m| m.len()),
                        "modified": meta.as_ref().map_or(0.0, |m| crate::unix_seconds(m.modified())),
                    }));
                }
                if dirs.len() + files.len() >= MAX_LISTED {
                    break 'walk;
                }
            }
        }
        let key = |v: &Json| v["name"].as_str().unwrap_or("").to_lowercase();
        dirs.sort_by_key(key);
        files.sort_by_key(key);
        dirs.extend(files);
        Ok(axum::Json(dirs).into_response())
    })
    .await
}

async fn read_file(
    State(core): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    in_user_folder(&core, move |root| {
        let path = match existing_file(root, &file) {
            Ok(p) => p,
            Err(r) => return Ok(absent_default(&file).unwrap_or_else(|| r.into_response())),
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?;
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => "application/json",
            Some("css") => "text/css",
            Some("js") => "text/javascript",
            Some("txt") | Some("md") => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        };
        Ok((
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response())
    })
    .await
}

/// What the frontend asks for at every start whether or not the user made it: the user's style
/// sheet (`user.css`), the legacy node templates (`comfy.templates.json`) and the bookmarked
/// workflows (`workflows/.index.json`). ComfyUI answers
/// 404, which the frontend reads as "none" but the browser logs as an error; the empty file says
/// the same without the noise.
fn absent_default(file: &str) -> Option<Response> {
    let (kind, body) = match file {
        "user.css" => ("text/css", ""),
        "comfy.templates.json" => ("application/json", "[]"),
        "workflows/.index.json" => ("application/json", r#"{"favorites":[]}"#),
        _ => return None,
    };
    Some(
        (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
    )
}

/// `GET /user.css` (index.html links it beside `api/userdata/user.css`): the user's style
/// sheet, or an empty one.
pub(crate) async fn user_css(State(core): State<AppState>) -> Result<Response, ApiError> {
    read_file(State(core), UrlPath("user.css".to_string())).await
}

/// `POST /userdata/{file}?overwrite=&full_info=`: the body is the file's bytes.
async fn write_file(
    State(core): State<AppState>,
    UrlPath(file): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &core.limits).await?;
    in_user_folder(&core, move |root| {
        let (dir, name) = resolve(root, &file, true)?;
        let path = dir.join(&name);
        let overwrite = query.get("overwrite").is_none_or(|v| v != "false");
        if path.is_dir() {
            return Ok(refuse(
                StatusCode::CONFLICT,
                format!("{file:?} is a folder"),
            ));
        }
        match write_new_or_replace(&dir, &name, &bytes, overwrite) {
            Ok(true) => {}
            Ok(false) => return Ok(refuse(StatusCode::CONFLICT, "File already exists")),
            Err(e) => {
                return Ok(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("cannot save {file:?}: {e}"),
                ))
            }
        }
        Ok(saved_answer(&path, root, flag(&query, "full_info")))
    })
    .await
}

fn saved_answer(path: &Path, root: &Path, full_info: bool) -> Response {
    if full_info {
        axum::Json(file_info(path, root)).into_response()
    } else {
        axum::Json(relative(path, root)).into_response()
    }
}

async fn delete_file(
    State(core): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    in_user_folder(&core, move |root| {
        let (dir, name) = resolve(root, &file, false)?;
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.is_dir() => {
                std::fs::remove_file(&path)
                    .map_err(|e| ApiError::internal(format!("deleting {file:?}: {e}")))?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Ok(_) => Ok(refuse(
                StatusCode::BAD_REQUEST,
                format!("{file:?} is a folder"),
            )),
            Err(_) => Ok(refuse(StatusCode::NOT_FOUND, format!("{file:?} not found"))),
        }
    })
    .await
}

/// `POST /userdata/{file}/move/{dest}?overwrite=&full_info=`: rename within the user folder.
async fn move_file(
    State(core): State<AppState>,
    UrlPath((file, dest)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    in_user_folder(&core, move |root| {
        let source = existing_file(root, &file)?;
        let (dir, name) = resolve(root, &dest, true)?;
        let target = dir.join(name);
        let overwrite = query.get("overwrite").is_none_or(|v| v != "false");
        if target.is_dir() {
            return Ok(refuse(
                StatusCode::CONFLICT,
                format!("{dest:?} is a folder"),
            ));
        }
        if overwrite {
            std::fs::rename(&source, &target)
                .map_err(|e| ApiError::internal(format!("moving {file:?} to {dest:?}: {e}")))?;
        } else {
            // A link fails when the name is taken, even by a file made a moment ago: the
            // destination is never replaced.
            match std::fs::hard_link(&source, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Ok(refuse(StatusCode::CONFLICT, "File already exists"))
                }
                Err(e) => {
                    return Err(
                        ApiError::internal(format!("moving {file:?} to {dest:?}: {e}")).into(),
                    )
                }
            }
            std::fs::remove_file(&source)
                .map_err(|e| ApiError::internal(format!("moving {file:?} to {dest:?}: {e}")))?;
        }
        Ok(saved_answer(&target, root, flag(&query, "full_info")))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_user_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        assert!(resolve(&root, "../x.json", true).is_err());
        assert!(resolve(&root, "/etc/passwd", true).is_err());
        assert!(resolve(&root, "workflows/../../x", true).is_err());
        assert!(resolve(&root, "", true).is_err());
        let (d, n) = resolve(&root, "workflows/sub/a.json", true).unwrap();
        assert_eq!(d, root.join("workflows/sub"));
        assert_eq!(n, "a.json");
    }

    #[cfg(unix)]
    #[test]
    fn links_out_of_the_user_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.json"), b"{}").unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
        assert!(resolve(&root, "out/new.json", true).is_err());
        assert!(existing_file(&root, "out/secret.json").is_err());
        std::os::unix::fs::symlink(outside.path().join("secret.json"), root.join("link.json"))
            .unwrap();
        assert!(existing_file(&root, "link.json").is_err());
    }

    #[test]
    fn colons_are_names_except_on_windows() {
        let parts = user_parts("workflows/Flow: v2.json");
        if cfg!(windows) {
            assert!(parts.is_err());
        } else {
            assert_eq!(parts.unwrap(), ["workflows", "Flow: v2.json"]);
        }
        assert!(user_parts("a/../../b").is_err());
        assert!(user_parts("/abs").is_err());
        assert!(user_parts("a\0b").is_err());
    }

    #[test]
    fn no_overwrite_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_new_or_replace(dir.path(), "a.json", b"one", false).unwrap());
        assert!(!write_new_or_replace(dir.path(), "a.json", b"two", false).unwrap());
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"one");
        // A name near the file system's limit still saves (the temp name is short).
        let long = format!("{}.json", "w".repeat(250));
        assert!(write_new_or_replace(dir.path(), &long, b"x", true).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "a.json", b"one").unwrap();
        write_atomically(dir.path(), "a.json", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temp file is left behind");
    }
}
