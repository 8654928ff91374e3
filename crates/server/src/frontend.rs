//! ComfyUI's web frontend on Veetance: the static files of an installed
//! `comfyui-frontend-package` (`--frontend DIR`, or `auto` to find it in the Python
//! environment), the workflow templates of installed `comfyui-workflow-templates*` packages
//! under `/templates/`, and the small routes the frontend reads at startup that belong to no
//! other module (`/extensions`, `/i18n`, `/workflow_templates`, `/global_subgraphs`).
//!
//! Nothing of the frontend is ever copied into this repository: the user installs it with pip,
//! and the server reads it where pip put it.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::routes::{blocking, ApiError};
use crate::AppState;

/// What `--frontend auto` found in a Python environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The frontend's `static/` folder (holds `index.html`).
    pub frontend: Option<PathBuf>,
    /// `templates/` folders of the installed template packages, the JSON package first.
    pub templates: Vec<PathBuf>,
    /// The frontend package's version, when found.
    pub version: Option<String>,
}

/// The Python program that prints where the packages are: for `comfyui_frontend_package`, its
/// `static` folder and version; for every `comfyui_workflow_templates*` package, its
/// `templates` folder. One line each, `kind<TAB>path`.
const LOCATE: &str = r#"
import importlib.util, importlib.metadata, os, pkgutil
spec = importlib.util.find_spec("comfyui_frontend_package")
if spec and spec.origin:
    print("frontend\t" + os.path.join(os.path.dirname(spec.origin), "static"))
    try:
        print("version\t" + importlib.metadata.version("comfyui-frontend-package"))
    except Exception:
        pass
names = sorted(m.name for m in pkgutil.iter_modules() if m.name.startswith("comfyui_workflow_templates"))
names.sort(key=lambda n: n != "comfyui_workflow_templates_json")
for name in names:
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for base in locations:
        path = os.path.join(base, "templates")
        if os.path.isdir(path):
            print("templates\t" + path)
"#;

/// Finds the frontend and the template packages in the Python environment: `python` when
/// given, else the active virtual environment's, else `python3` on the PATH.
pub fn locate_installed(python: Option<&Path>) -> Result<Installed, String> {
    let program = match python {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("VIRTUAL_ENV") {
            Some(venv) if Path::new(&venv).join("bin/python").is_file() => {
                Path::new(&venv).join("bin/python")
            }
            _ => PathBuf::from("python3"),
        },
    };
    let output = std::process::Command::new(&program)
        .arg("-c")
        .arg(LOCATE)
        .output()
        .map_err(|e| {
            format!(
                "--frontend auto runs `{} -c …` to find the installed package, and it could \
                 not start: {e}. Install Python, or pass --frontend DIR (the package's `static` \
                 folder)",
                program.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "--frontend auto: `{}` failed: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let mut found = Installed {
        frontend: None,
        templates: Vec::new(),
        version: None,
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        match line.split_once('\t') {
            Some(("frontend", p)) => found.frontend = Some(PathBuf::from(p)),
            Some(("version", v)) => found.version = Some(v.to_string()),
            Some(("templates", p)) => found.templates.push(PathBuf::from(p)),
            _ => {}
        }
    }
    Ok(found)
}

/// Checks that `dir` is a frontend build (holds `index.html`), accepting the package folder
/// too (its `static/`).
pub fn frontend_dir(dir: &Path) -> Result<PathBuf, String> {
    for candidate in [dir.to_path_buf(), dir.join("static")] {
        if candidate.join("index.html").is_file() {
            return candidate
                .canonicalize()
                .map_err(|e| format!("--frontend {}: {e}", dir.display()));
        }
    }
    Err(format!(
        "--frontend {}: no index.html there (nor in its static/). Install the frontend with \
         `pip install comfyui-frontend-package` and pass its `static` folder, or use \
         --frontend auto",
        dir.display()
    ))
}

/// The routes the frontend needs that no other module serves. Registered bare and under
/// `/api`, as the rest of ComfyUI's routes.
pub(crate) fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/extensions", get(extensions))
        .route("/i18n", get(|| async { axum::Json(json!({})) }))
        .route(
            "/workflow_templates",
            get(|| async { axum::Json(json!({})) }),
        )
        // Subgraph blueprints that custom nodes ship: none here.
        .route("/global_subgraphs", get(|| async { axum::Json(json!({})) }))
}

/// `/templates/…`, served from the template packages' folders.
pub(crate) fn template_routes() -> Router<AppState> {
    Router::new().route("/templates/{*file}", get(template_file))
}

/// `/extensions`: the frontend's own extension scripts (`extensions/**/*.js` in its folder),
/// as ComfyUI lists them; `[]` without a frontend.
async fn extensions(State(core): State<AppState>) -> Result<Response, ApiError> {
    let list = blocking(&core, |c| {
        let Some(root) = c.dirs.frontend.clone() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut stack = vec![root.join("extensions")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(path),
                    Ok(t) if t.is_file() && path.extension().is_some_and(|x| x == "js") => {
                        if let Ok(rel) = path.strip_prefix(&root) {
                            out.push(format!("/{}", rel.to_string_lossy().replace('\\', "/")));
                        }
                    }
                    _ => {}
                }
            }
        }
        out.sort();
        Ok(out)
    })
    .await?;
    Ok(axum::Json(list).into_response())
}

/// A URL path below a served folder as relative components, or `None` when it would leave it.
fn plain_relative(path: &str) -> Option<PathBuf> {
    let rel = Path::new(path);
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty() && !path.contains('\\')).then_some(out)
}

async fn template_file(
    State(core): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    blocking(&core, move |c| {
        let Some(rel) = plain_relative(&file) else {
            return Ok(StatusCode::NOT_FOUND.into_response());
        };
        for dir in &c.dirs.templates {
            let path = dir.join(&rel);
            // Stay inside the package folder even through links.
            let Some(real) = crate::files::inside(dir, &path) else {
                continue;
            };
            if real.is_file() {
                let bytes = std::fs::read(&real)
                    .map_err(|e| ApiError::internal(format!("reading {}: {e}", real.display())))?;
                let kind = crate::files::content_type(&real.to_string_lossy());
                return Ok(([(header::CONTENT_TYPE, kind)], bytes).into_response());
            }
        }
        Ok(StatusCode::NOT_FOUND.into_response())
    })
    .await
}

/// `GET /` with a frontend: its `index.html`, never cached (a new frontend version must not
/// meet an old page).
pub(crate) async fn index(
    State(core): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // With --token, `/?token=…` signs the browser in (the guard has checked the token): the
    // browser gets an HttpOnly, SameSite=Strict cookie derived from the token, which the
    // frontend's requests and WebSocket then carry, and the page reloads without the token in
    // the address bar.
    if let (Some(token), Some(_)) = (&core.token, query.get("token")) {
        let cookie = crate::security::sign_in_cookie(&headers, token);
        return Ok((
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, cookie),
                (header::LOCATION, "./".to_string()),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response());
    }
    let Some(root) = core.dirs.frontend.clone() else {
        return Ok(crate::routes::no_frontend_page());
    };
    let page = blocking(&core, move |_| {
        std::fs::read(root.join("index.html")).map_err(|e| {
            ApiError::internal(format!(
                "the frontend's index.html in {}: {e}",
                root.display()
            ))
        })
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
            (header::EXPIRES, "0"),
        ],
        page,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_paths_stay_inside() {
        assert_eq!(
            plain_relative("index.json"),
            Some(PathBuf::from("index.json"))
        );
        assert_eq!(plain_relative("a/b.webp"), Some(PathBuf::from("a/b.webp")));
        assert_eq!(plain_relative("../x"), None);
        assert_eq!(plain_relative("/etc/passwd"), None);
        assert_eq!(plain_relative("a/../../x"), None);
        assert_eq!(plain_relative("a\\..\\x"), None);
        assert_eq!(plain_relative(""), None);
    }

    #[test]
    fn a_frontend_folder_needs_an_index() {
        let dir = tempfile::tempdir().unwrap();
        assert!(frontend_dir(dir.path()).is_err());
        std::fs::create_dir(dir.path().join("static")).unwrap();
        std::fs::write(dir.path().join("static/index.html"), "<html>").unwrap();
        let found = frontend_dir(dir.path()).unwrap();
        assert!(found.ends_with("static"));
    }
}
