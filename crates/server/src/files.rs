//! `GET /view` and `POST /upload/image`: files in the output, input and temp folders, and
//! nothing outside them.
//!
//! A name may not hold a separator, `..` or NUL; a subfolder may not be absolute, name a drive
//! or hold a `..` component; and the resolved path (symlinks followed) must still lie inside
//! the folder. Percent-encoded separators are decoded before these checks, so `..%2F` is `../`.
//! Uploads are written to a temporary file, synced, and linked into place, so a file is never
//! seen half-written and an existing one is never overwritten unless asked.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::routes::{blocking, read_limited, ApiError};
use crate::store::UPLOADS;
use crate::{AppState, Core};

/// The three folders ComfyUI serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Folder {
    Output,
    Input,
    Temp,
}

impl Folder {
    pub fn parse(name: &str) -> Option<Folder> {
        match name {
            "output" => Some(Folder::Output),
            "input" => Some(Folder::Input),
            "temp" => Some(Folder::Temp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Folder::Output => "output",
            Folder::Input => "input",
            Folder::Temp => "temp",
        }
    }

    fn dir(self, core: &Core) -> &Path {
        match self {
            Folder::Output => &core.dirs.output,
            Folder::Input => &core.dirs.input,
            Folder::Temp => &core.dirs.temp,
        }
    }
}

/// ComfyUI's annotated names: `"x.png [output]"` names the folder in the name itself.
pub fn annotated(name: &str) -> (&str, Option<Folder>) {
    for folder in [Folder::Output, Folder::Input, Folder::Temp] {
        let suffix = format!(" [{}]", folder.name());
        if let Some(stem) = name.strip_suffix(&suffix) {
            return (stem, Some(folder));
        }
        // ComfyUI also strips the tag without its space.
        let bare = format!("[{}]", folder.name());
        if let Some(stem) = name.strip_suffix(&bare) {
            return (stem, Some(folder));
        }
    }
    (name, None)
}

/// The components of a subfolder, or why it is refused.
pub fn subfolder_parts(subfolder: &str) -> Result<Vec<&str>, String> {
    if subfolder.contains('\0') {
        return Err("the subfolder holds a NUL character".into());
    }
    if subfolder.starts_with(['/', '\\']) {
        return Err(format!("the subfolder {subfolder:?} is an absolute path"));
    }
    let mut parts = Vec::new();
    for part in subfolder.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "the subfolder {subfolder:?} leads outside its folder"
                ))
            }
            p if p.contains(':') => {
                return Err(format!(
                    "the subfolder {subfolder:?} names a drive or stream"
                ))
            }
            p => parts.push(p),
        }
    }
    Ok(parts)
}

/// Whether a file name is one plain name inside its folder.
fn plain_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the file name is empty".into());
    }
    if name.contains('\0') {
        return Err("the file name holds a NUL character".into());
    }
    if name.starts_with(['/', '\\']) || name.contains("..") || name == "." {
        return Err(format!(
            "the file name {name:?} may not be a path or hold '..'"
        ));
    }
    Ok(())
}

/// `path`, with symlinks resolved, inside `root` (already canonical)?
pub(crate) fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let real = path.canonicalize().ok()?;
    real.starts_with(root).then_some(real)
}

/// The type `/view` and `/templates/` serve a file as; anything a browser would run or
/// render as a page is a download.
pub(crate) fn content_type(name: &str) -> &'static str {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        // html, js, css, svg and everything else: downloaded, never rendered by the browser.
        _ => "application/octet-stream",
    }
}

fn disposition(name: &str) -> HeaderValue {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ');
    let value = if plain {
        format!("filename=\"{name}\"")
    } else {
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("filename*=UTF-8''{encoded}")
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `GET /view?filename=&subfolder=&type=`.
pub async fn view(
    State(core): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(filename) = q.get("filename") else {
        return Ok(not_found("`filename` is missing"));
    };
    let (name, tagged) = annotated(filename);
    if let Err(message) = plain_name(name) {
        return Err(ApiError::bad_request("invalid_filename", message));
    }
    let folder = match tagged {
        Some(f) => f,
        None => {
            let kind = q.get("type").map(String::as_str).unwrap_or("output");
            Folder::parse(kind).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_type",
                    format!("`type` {kind:?} is not output, input or temp"),
                )
            })?
        }
    };
    let parts = subfolder_parts(q.get("subfolder").map(String::as_str).unwrap_or(""))
        .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, "forbidden_path", m))?
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    // Like ComfyUI, a name with a separator stands for its last part.
    let name = name.rsplit(['/', '\\']).next().unwrap_or(name).to_string();
    let found = blocking(&core, move |core| {
        // Behind a shared queue, outputs live in its object store (workers wrote them on
        // other machines); this server's own folders are the fallback (uploads, inputs).
        if let (Some(remote), Folder::Output | Folder::Temp) = (&core.remote, folder) {
            if let Some(bytes) = remote.output_file(folder.name(), &parts.join("/"), &name)? {
                return Ok(Ok((name, Found::Bytes(bytes))));
            }
        }
        let root = folder.dir(core).to_path_buf();
        let mut path = root.clone();
        path.extend(&parts);
        path.push(&name);
        if !path.is_file() {
            return Ok(Err(StatusCode::NOT_FOUND));
        }
        let Some(real) = inside(&root, &path) else {
            return Ok(Err(StatusCode::FORBIDDEN));
        };
        Ok(Ok((name, Found::File(real))))
    })
    .await?;
    let (name, body) = match found {
        Ok((name, Found::Bytes(bytes))) => (name, Body::from(bytes)),
        Ok((name, Found::File(path))) => match tokio::fs::File::open(&path).await {
            Ok(file) => (name, stream_file(file)),
            Err(_) => return Ok(not_found("no such file")),
        },
        Err(StatusCode::FORBIDDEN) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_path",
                "the file lies outside its folder (through a link)".into(),
            ))
        }
        Err(_) => return Ok(not_found("no such file")),
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&name)),
            ),
            (header::CONTENT_DISPOSITION, disposition(&name)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response())
}

/// What `/view` found: bytes from the shared queue's store, or a file checked to lie inside
/// its folder.
enum Found {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// A file's bytes as a response body, read 64 KiB at a time as the client takes them: a
/// thousand clients asking for a large input at once hold a thousand small buffers, not a
/// thousand copies of the file.
fn stream_file(file: tokio::fs::File) -> Body {
    use tokio::io::AsyncReadExt;
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Body::from_stream(chunks)
}

fn not_found(message: &str) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message.to_string()).into_response()
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload is larger than {limit} bytes, this server's limit (--max-upload-size)"),
    )
}

/// `POST /upload/image` (multipart: `image`, `overwrite`, `type`, `subfolder`).
pub async fn upload(State(core): State<AppState>, request: Request) -> Result<Response, ApiError> {
    // The whole body first, against the upload limit: an oversized one is read to its end
    // (within reason) so the client gets the 413 rather than a reset connection.
    let limit = core.limits.upload_bytes;
    let (parts, body) = request.into_parts();
    let bytes = read_limited(body, limit, &core.limits)
        .await?
        .ok_or_else(|| too_large(limit))?;
    let form = parse_upload(Request::from_parts(parts, Body::from(bytes)), limit).await?;
    let Upload {
        file_name,
        bytes,
        overwrite,
        folder,
        subfolder,
        parts,
    } = form;
    let saved = blocking(&core, move |core| {
        save_upload(core, folder, &parts, &file_name, &bytes, overwrite)
    })
    .await?;
    Ok(axum::Json(json!({
        "name": saved,
        "subfolder": subfolder,
        "type": folder.name(),
    }))
    .into_response())
}

/// An upload's form, read and checked: nothing written yet.
#[derive(Debug)]
pub struct Upload {
    /// A plain file name (no separator, `..` or NUL).
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub overwrite: bool,
    pub folder: Folder,
    /// The subfolder as sent (for the answer) and its checked parts.
    pub subfolder: String,
    pub parts: Vec<String>,
}

/// Reads the multipart form of `POST /upload/image` from a request whose body was read whole
/// (`limit`: the upload limit, for the 413). `Err` is the 400 answer naming the field.
pub async fn parse_upload(request: Request, limit: usize) -> Result<Upload, ApiError> {
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::bad_request(
            "invalid_upload",
            format!("expected a multipart/form-data body with an `image` field: {e}"),
        )
    })?;
    let mut image: Option<(String, Vec<u8>)> = None;
    let mut overwrite = false;
    let mut kind = "input".to_string();
    let mut subfolder = String::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(limit)),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid_upload",
                    format!("reading the multipart body: {e}"),
                ))
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(limit)),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid_upload",
                    format!("reading field `{name}`: {e}"),
                ))
            }
        };
        let text = || String::from_utf8_lossy(&data).into_owned();
        match name.as_str() {
            "image" => {
                let file_name = file_name.ok_or_else(|| {
                    ApiError::bad_request("invalid_upload", "the `image` field has no file name")
                })?;
                image = Some((file_name, data.to_vec()));
            }
            "overwrite" => overwrite = matches!(text().as_str(), "true" | "1"),
            "type" => kind = text(),
            "subfolder" => subfolder = text(),
            _ => {}
        }
    }
    let Some((file_name, bytes)) = image else {
        return Err(ApiError::bad_request(
            "invalid_upload",
            "the multipart body has no `image` file field",
        ));
    };
    let folder = Folder::parse(if kind.is_empty() { "input" } else { &kind }).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_type",
            format!("`type` {kind:?} is not input, output or temp"),
        )
    })?;
    plain_name(&file_name).map_err(|m| ApiError::bad_request("invalid_filename", m))?;
    if file_name.contains(['/', '\\']) {
        return Err(ApiError::bad_request(
            "invalid_filename",
            format!("the file name {file_name:?} may not hold a separator"),
        ));
    }
    let parts: Vec<String> = subfolder_parts(&subfolder)
        .map_err(|m| ApiError::bad_request("invalid_subfolder", m))?
        .into_iter()
        .map(str::to_string)
        .collect();
    Ok(Upload {
        file_name,
        bytes,
        overwrite,
        folder,
        subfolder,
        parts,
    })
}

/// Writes an upload; the name it was saved (or found) under.
fn save_upload(
    core: &Core,
    folder: Folder,
    parts: &[String],
    file_name: &str,
    bytes: &[u8],
    overwrite: bool,
) -> Result<String, ApiError> {
    let dir = make_dir_inside(folder.dir(core), parts)
        .map_err(|message| ApiError::bad_request("invalid_subfolder", message))?;
    let temp = dir.join(format!(".upload.{}.tmp", uuid::Uuid::new_v4().simple()));
    let write_temp = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write_temp() {
        let _ = std::fs::remove_file(&temp);
        return Err(ApiError::internal(format!("cannot write the upload: {e}")));
    }
    let result = place(&dir, &temp, file_name, bytes, overwrite);
    let _ = std::fs::remove_file(&temp);
    let (name, path) =
        result.map_err(|e| ApiError::internal(format!("cannot save the upload: {e}")))?;
    if folder != Folder::Input {
        // Recorded, so that crash recovery never takes it for a run's unrecorded output.
        core.store.record_file(UPLOADS, "", &path)?;
    }
    Ok(name)
}

/// Creates `root/parts…` one folder at a time, checking before each step that what exists so far
/// (symlinks resolved) is inside `root`, so that nothing is ever created outside it.
pub(crate) fn make_dir_inside(root: &Path, parts: &[String]) -> Result<PathBuf, String> {
    let mut dir = root.to_path_buf();
    for part in parts {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create the subfolder '{part}': {e}")),
        }
        dir = inside(root, &dir)
            .ok_or_else(|| "the subfolder leads outside its folder (through a link)".to_string())?;
        if !dir.is_dir() {
            return Err(format!("'{part}' in the subfolder is a file, not a folder"));
        }
    }
    Ok(dir)
}

/// Moves the temp file to its name: the name itself with `overwrite`, else the first of
/// `name`, `name (1)`, `name (2)`… that is free or already holds the same bytes.
fn place(
    dir: &Path,
    temp: &Path,
    file_name: &str,
    bytes: &[u8],
    overwrite: bool,
) -> std::io::Result<(String, PathBuf)> {
    if overwrite {
        let target = dir.join(file_name);
        std::fs::rename(temp, &target)?;
        return Ok((file_name.to_string(), target));
    }
    let as_path = Path::new(file_name);
    let stem = as_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = as_path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    for i in 0..10_000u32 {
        let name = if i == 0 {
            file_name.to_string()
        } else {
            format!("{stem} ({i}){ext}")
        };
        let target = dir.join(&name);
        match std::fs::symlink_metadata(&target) {
            Ok(meta) => {
                // A link is never read through (its target may lie outside the folder).
                if meta.is_file()
                    && meta.len() == bytes.len() as u64
                    && std::fs::read(&target).is_ok_and(|b| b == bytes)
                {
                    return Ok((name, target));
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // A hard link fails if the name was taken meanwhile: never overwrites.
        match std::fs::hard_link(temp, &target) {
            Ok(()) => return Ok((name, target)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) => {
                if std::fs::symlink_metadata(&target).is_err() {
                    std::fs::rename(temp, &target)?;
                    return Ok((name, target));
                }
            }
        }
    }
    Err(std::io::Error::other("no free name left"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subfolders_stay_inside() {
        assert_eq!(subfolder_parts("a/b").unwrap(), ["a", "b"]);
        assert_eq!(subfolder_parts("./a\\b/").unwrap(), ["a", "b"]);
        for bad in ["..", "a/../..", "/etc", "\\x", "C:/x", "a/\0"] {
            assert!(subfolder_parts(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_plain() {
        assert!(plain_name("x.png").is_ok());
        for bad in ["", ".", "../x.png", "/etc/passwd", "a..b", "x\0"] {
            assert!(plain_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(annotated("x.png [output]"), ("x.png", Some(Folder::Output)));
        assert_eq!(annotated("x.png [temp]"), ("x.png", Some(Folder::Temp)));
        assert_eq!(annotated("x.png"), ("x.png", None));
    }

    #[cfg(unix)]
    #[test]
    fn subfolders_are_never_created_through_a_link_outside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root_path = root.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(outside.path(), root_path.join("link")).unwrap();
        assert!(make_dir_inside(&root_path, &["link".into(), "new".into()]).is_err());
        assert!(!outside.path().join("new").exists());
        let made = make_dir_inside(&root_path, &["a".into(), "b".into()]).unwrap();
        assert_eq!(made, root_path.join("a/b"));
    }

    #[test]
    fn same_name_other_bytes_gets_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let put = |bytes: &[u8]| {
            let temp = dir.path().join(".t");
            std::fs::write(&temp, bytes).unwrap();
            let r = place(dir.path(), &temp, "a.png", bytes, false).unwrap().0;
            let _ = std::fs::remove_file(&temp);
            r
        };
        assert_eq!(put(b"one"), "a.png");
        assert_eq!(put(b"one"), "a.png");
        assert_eq!(put(b"two"), "a (1).png");
        assert_eq!(put(b"three"), "a (2).png");
        assert_eq!(put(b"two"), "a (1).png");
    }
}
