//! `veetance serve`: ComfyUI's HTTP/WebSocket API over the Veetance engine, with a durable
//! queue. See `docs/server.md` for the API as implemented, the security options, the
//! durability design and every difference from ComfyUI.
//!
//! Layout: [`Server::start`] opens the queue database ([`store`]), recovers prompts a crash
//! left running, starts the engine thread ([`worker`], which owns the [`Engine`] and runs one
//! prompt at a time) and serves the routes ([`routes`] for ComfyUI's API, [`jobs`] for
//! `/api/jobs`, [`files`] for `/view` and uploads, [`openai`] for `/v1/images/generations`,
//! [`ws`] for the WebSocket) behind the auth, Origin and size checks of [`security`]. The
//! async side never waits on the engine: it talks to the engine thread through a channel and
//! the database, and the engine thread hands WebSocket messages to [`hub`] without blocking.

mod files;
pub mod frontend;
mod hub;
mod jobs;
mod listen;
pub mod nats;
mod openai;
mod preview;
mod queue;
mod routes;
mod security;
mod store;
mod userdata;
mod worker;
mod workflow;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use veetance_core::{Budgets, CancelToken, DeviceProbe, NodeRegistry};

pub use files::{parse_upload, Folder, Upload};
pub use hub::ClientLimits;
pub use listen::raise_open_file_limit;
// The request parsers on their own, for the fuzz targets (crates/fuzzing) and tests.
pub use routes::{parse_object, parse_prompt_request, ApiError, PromptRequest};
pub use store::MAX_ATTEMPTS;
pub use ws::{client_feature_flags, ClientFeatureFlags};

/// Whether the server sends latent previews (binary frames) while sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreviewMethod {
    /// No previews unless a prompt asks (`extra_data.preview_method`): ComfyUI's default, and
    /// what clients that treat every binary frame as a result image need.
    #[default]
    None,
    /// Previews for every prompt that does not say `"none"`.
    Auto,
}

impl std::str::FromStr for PreviewMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(PreviewMethod::None),
            "auto" => Ok(PreviewMethod::Auto),
            other => Err(format!("{other:?} is not a preview method (none or auto)")),
        }
    }
}

/// Size limits on what clients send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest JSON request body (413 beyond).
    pub body_bytes: usize,
    /// Largest multipart upload (413 beyond); also `max_upload_size` in `/features`.
    pub upload_bytes: usize,
    /// Most nodes in one prompt (400 beyond).
    pub prompt_nodes: usize,
    /// What may wait for one WebSocket client before it is disconnected as too slow.
    pub ws_client: ClientLimits,
    /// Time a client has to send a request's head (request line and headers), and the longest
    /// an idle keep-alive connection is kept; the connection is closed after it.
    pub header_timeout: Duration,
    /// Time a client has to send a request body, extended by one second for every
    /// `body_min_rate` bytes it has sent (so a large upload on a slow line still fits, and a
    /// client that trickles bytes does not); 408 after it.
    pub body_timeout: Duration,
    /// Bytes a second a body must average, after `body_timeout`.
    pub body_min_rate: usize,
    /// Most connections open at once; beyond it the listener waits for one to close.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 32 << 20,
            upload_bytes: 100 << 20,
            prompt_nodes: 10_000,
            ws_client: ClientLimits::default(),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            body_min_rate: 16 << 10,
            connections: 4096,
        }
    }
}

/// Everything `veetance serve` is configured with.
pub struct ServeOptions {
    /// Address to listen on; loopback by default. Port 0 picks a free port
    /// ([`ServerHandle::addr`] says which).
    pub listen: SocketAddr,
    /// Model files, in ComfyUI's layout (`diffusion_models/`, `text_encoders/`, `vae/`).
    pub models_dir: PathBuf,
    /// ComfyUI's `output` folder: where SaveImage writes, `/view?type=output`.
    pub out_dir: PathBuf,
    /// ComfyUI's `input` folder: uploads, LoadImage's names, `/view?type=input`.
    pub input_dir: PathBuf,
    /// ComfyUI's `temp` folder: PreviewImage, `/view?type=temp`.
    pub temp_dir: PathBuf,
    /// The queue database (`queue.sqlite3`) lives here.
    pub state_dir: PathBuf,
    /// ComfyUI's `user` folder: settings and saved workflows, `<user_dir>/default/`.
    pub user_dir: PathBuf,
    /// ComfyUI's web frontend: the `static` folder of an installed `comfyui-frontend-package`
    /// (see [`frontend::locate_installed`]); `None`: API only.
    pub frontend: Option<PathBuf>,
    /// `templates` folders of installed `comfyui-workflow-templates*` packages, searched in
    /// order for `/templates/…`.
    pub template_dirs: Vec<PathBuf>,
    /// Bearer token every route and the WebSocket require; `None`: no authentication.
    pub token: Option<String>,
    pub budgets: Budgets,
    pub device_probe: Option<Arc<dyn DeviceProbe>>,
    pub preview: PreviewMethod,
    pub limits: Limits,
    /// Workflow (`.ron`, or ComfyUI API or UI JSON) that `/v1/images/generations` runs.
    pub default_workflow: Option<PathBuf>,
    /// Node types; `None`: every Veetance node (`veetance_nodes::registry()`).
    pub registry: Option<NodeRegistry>,
    /// History entries kept (ComfyUI: 10,000).
    pub history_max: usize,
    /// Stop on Ctrl-C / SIGTERM (the CLI); tests stop through [`ServerHandle::shutdown`].
    pub handle_signals: bool,
    /// A shared queue (`nats://HOST:4222`): this server becomes a front door that publishes
    /// prompts for `veetance worker`s and runs none itself; `None`: the embedded queue.
    pub queue: Option<String>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("listen", &self.listen)
            .field("models_dir", &self.models_dir)
            .field("out_dir", &self.out_dir)
            .field("input_dir", &self.input_dir)
            .field("temp_dir", &self.temp_dir)
            .field("state_dir", &self.state_dir)
            .field("user_dir", &self.user_dir)
            .field("frontend", &self.frontend)
            .field("template_dirs", &self.template_dirs)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("budgets", &self.budgets)
            .field("preview", &self.preview)
            .field("limits", &self.limits)
            .field("default_workflow", &self.default_workflow)
            .field("queue", &self.queue)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8188)),
            models_dir: PathBuf::from("models"),
            out_dir: PathBuf::from("out"),
            input_dir: PathBuf::from("input"),
            temp_dir: PathBuf::from("temp"),
            state_dir: PathBuf::from("veetance-state"),
            user_dir: PathBuf::from("user"),
            frontend: None,
            template_dirs: Vec::new(),
            token: None,
            budgets: Budgets::default(),
            device_probe: None,
            preview: PreviewMethod::None,
            limits: Limits::default(),
            default_workflow: None,
            registry: None,
            history_max: 10_000,
            handle_signals: false,
            queue: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("{0}")]
    Frontend(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("--default-workflow {path}: {message}")]
    DefaultWorkflow { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Runtime(String),
}

/// The folders, resolved to absolute paths.
#[derive(Clone, Debug)]
pub(crate) struct Dirs {
    pub models: PathBuf,
    pub output: PathBuf,
    pub input: PathBuf,
    pub temp: PathBuf,
    pub state: PathBuf,
    pub user: PathBuf,
    pub frontend: Option<PathBuf>,
    pub templates: Vec<PathBuf>,
}

/// What the engine thread is doing, for the routes and the WebSocket.
#[derive(Clone, Debug)]
pub(crate) struct Running {
    pub prompt_id: String,
    pub client_id: Option<String>,
    pub cancel: CancelToken,
    /// The node executing now, and its progress.
    pub node: Option<String>,
    pub value: u64,
    pub max: u64,
}

/// A message for the engine thread.
#[derive(Debug)]
pub(crate) enum WorkerMsg {
    /// The queue changed.
    Wake,
    /// `POST /free`.
    Free {
        unload_models: bool,
        free_memory: bool,
    },
    Shutdown,
}

/// State shared by the routes and the engine thread.
pub(crate) struct Core {
    pub dirs: Dirs,
    pub token: Option<String>,
    /// The server listens on a loopback address only: without a token it then answers only
    /// requests whose `Host` is a loopback name (see [`security::check_host`]).
    pub local_only: bool,
    pub preview: PreviewMethod,
    pub limits: Limits,
    /// The embedded queue's database; behind a shared queue, only uploads are recorded in it.
    pub store: Arc<store::Store>,
    /// What the routes queue prompts in and read the history from: `store`, or `remote`.
    pub queue: Arc<dyn queue::JobQueue>,
    /// The shared queue this server is a front door of (`serve --queue`).
    pub remote: Option<Arc<nats::FrontDoor>>,
    pub hub: hub::Hub,
    pub registry: Arc<NodeRegistry>,
    pub probe: Option<Arc<dyn DeviceProbe>>,
    pub running: Mutex<Option<Running>>,
    /// Callers waiting for a prompt to finish (the OpenAI route).
    pub waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    pub worker: Mutex<mpsc::Sender<WorkerMsg>>,
    pub default_workflow: Option<workflow::DefaultWorkflow>,
    /// Bytes the engine's cache held after the last prompt, device and host.
    pub cache_device_bytes: AtomicU64,
    pub cache_host_bytes: AtomicU64,
    /// The server is stopping: a cancelled run goes back to the queue instead of the history.
    pub shutting_down: AtomicBool,
}

impl Core {
    pub fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the engine thread to stop: a prompt it is running is cancelled and queued again.
    pub fn stop_worker(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        if let Some(running) = self.running().as_ref() {
            running.cancel.cancel();
        }
        self.tell_worker(WorkerMsg::Shutdown);
    }

    /// A prompt was queued: the engine thread looks (behind a shared queue, the front door
    /// woke the workers already).
    pub fn wake(&self) {
        if self.remote.is_none() {
            self.tell_worker(WorkerMsg::Wake);
        }
    }

    pub fn tell_worker(&self, msg: WorkerMsg) {
        if self.remote.is_some() {
            // A front door has no engine thread; the workers get /free and /interrupt
            // through the queue.
            return;
        }
        let tx = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if tx.send(msg).is_err() {
            tracing::error!("the engine thread has stopped; the queue is not being run");
        }
    }

    /// Broadcasts the queue size (`status`), as ComfyUI does on every queue change.
    pub fn broadcast_status(&self) {
        match self.queue.remaining() {
            Ok(n) => self.hub.send_json(
                None,
                "status",
                serde_json::json!({ "status": { "exec_info": { "queue_remaining": n } } }),
            ),
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Wakes the callers waiting for `prompt_id`.
    pub fn notify_done(&self, prompt_id: &str) {
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(prompt_id);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(());
        }
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("dirs", &self.dirs).finish()
    }
}

pub(crate) type AppState = Arc<Core>;

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A file time as seconds since the Unix epoch (ComfyUI's `os.path.getmtime`); 0 when the file
/// system has none.
pub(crate) fn unix_seconds(time: std::io::Result<std::time::SystemTime>) -> f64 {
    time.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What [`new_core`] puts together.
pub(crate) struct CoreParts {
    pub dirs: Dirs,
    pub token: Option<String>,
    pub local_only: bool,
    pub preview: PreviewMethod,
    pub limits: Limits,
    pub store: Arc<store::Store>,
    pub remote: Option<Arc<nats::FrontDoor>>,
    pub registry: Arc<NodeRegistry>,
    pub probe: Option<Arc<dyn DeviceProbe>>,
    pub default_workflow: Option<workflow::DefaultWorkflow>,
    pub worker_tx: mpsc::Sender<WorkerMsg>,
}

/// The state of a server or a worker.
pub(crate) fn new_core(parts: CoreParts) -> Arc<Core> {
    let queue: Arc<dyn queue::JobQueue> = match &parts.remote {
        Some(remote) => remote.clone(),
        None => parts.store.clone(),
    };
    let core = Arc::new(Core {
        dirs: parts.dirs,
        token: parts.token,
        local_only: parts.local_only,
        preview: parts.preview,
        limits: parts.limits,
        store: parts.store,
        queue,
        remote: parts.remote.clone(),
        hub: hub::Hub::new(parts.limits.ws_client),
        registry: parts.registry,
        probe: parts.probe,
        running: Mutex::new(None),
        waiters: Mutex::new(HashMap::new()),
        worker: Mutex::new(parts.worker_tx),
        default_workflow: parts.default_workflow,
        cache_device_bytes: AtomicU64::new(0),
        cache_host_bytes: AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
    });
    if let Some(remote) = &parts.remote {
        remote.attach(&core);
    }
    core
}

/// Creates a folder if needed and returns its absolute, symlink-free path.
pub(crate) fn resolve_dir(path: &Path, what: &str) -> Result<PathBuf, ServerError> {
    std::fs::create_dir_all(path).map_err(|e| ServerError::Folder {
        path: path.to_path_buf(),
        message: format!("cannot create the {what} folder: {e}"),
    })?;
    path.canonicalize().map_err(|e| ServerError::Folder {
        path: path.to_path_buf(),
        message: format!("cannot resolve the {what} folder: {e}"),
    })
}

/// A running server.
#[derive(Debug)]
pub struct Server;

/// Controls a server started with [`Server::start`].
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServerError>>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests, lets the engine thread stop at its next check (a prompt it
    /// was running is queued again, to run first at the next start), and waits for both.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join()
    }

    /// Waits until the server stops (a signal, with `handle_signals`).
    pub fn wait(mut self) -> Result<(), ServerError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), ServerError> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(ServerError::Runtime("the server thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = self.join();
        }
    }
}

impl Server {
    /// Opens the queue, recovers what a crash left running, starts the engine thread and
    /// listens. Returns once the socket is bound.
    pub fn start(options: ServeOptions) -> Result<ServerHandle, ServerError> {
        let dirs = Dirs {
            models: options
                .models_dir
                .canonicalize()
                .unwrap_or_else(|_| options.models_dir.clone()),
            output: resolve_dir(&options.out_dir, "output")?,
            input: resolve_dir(&options.input_dir, "input")?,
            temp: resolve_dir(&options.temp_dir, "temp")?,
            state: resolve_dir(&options.state_dir, "state")?,
            user: resolve_dir(&options.user_dir, "user")?,
            frontend: match &options.frontend {
                Some(dir) => Some(frontend::frontend_dir(dir).map_err(ServerError::Frontend)?),
                None => None,
            },
            templates: options
                .template_dirs
                .iter()
                .filter_map(|d| match d.canonicalize() {
                    Ok(d) if d.is_dir() => Some(d),
                    _ => {
                        tracing::warn!("templates folder '{}' not found; skipped", d.display());
                        None
                    }
                })
                .collect(),
        };
        if !dirs.models.is_dir() {
            tracing::warn!(
                "models folder '{}' does not exist; prompts that load models will fail validation",
                dirs.models.display()
            );
        }
        let store = Arc::new(store::Store::open(
            &dirs.state.join("queue.sqlite3"),
            options.history_max,
        )?);
        let remote = match &options.queue {
            Some(url) => Some(nats::FrontDoor::connect(url, options.history_max)?),
            None => {
                worker::recover(&store, &dirs)?;
                None
            }
        };

        let registry = Arc::new(options.registry.unwrap_or_else(veetance_nodes::registry));
        let default_workflow = match &options.default_workflow {
            Some(path) => {
                let w = workflow::DefaultWorkflow::load(path, &registry).map_err(|message| {
                    ServerError::DefaultWorkflow {
                        path: path.clone(),
                        message,
                    }
                })?;
                tracing::info!("/v1/images/generations runs {}", w.path.display());
                Some(w)
            }
            None => None,
        };

        let (worker_tx, worker_rx) = mpsc::channel();
        let front_door = remote.is_some();
        let core = new_core(CoreParts {
            dirs,
            token: options.token.filter(|t| !t.is_empty()),
            local_only: options.listen.ip().is_loopback(),
            preview: options.preview,
            limits: options.limits,
            store,
            remote,
            registry: registry.clone(),
            probe: options.device_probe.clone(),
            default_workflow,
            worker_tx,
        });

        // A front door runs nothing itself: the workers behind the queue do.
        let engine_thread = if front_door {
            None
        } else {
            Some(
                worker::spawn(core.clone(), worker_rx, options.budgets).map_err(|e| {
                    ServerError::Runtime(format!("cannot start the engine thread: {e}"))
                })?,
            )
        };
        let listener =
            std::net::TcpListener::bind(options.listen).map_err(|source| ServerError::Listen {
                addr: options.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: options.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Listen { addr, source })?;

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handle_signals = options.handle_signals;
        let limits = options.limits;
        let thread = std::thread::Builder::new()
            .name("veetance-http".into())
            .spawn(move || -> Result<(), ServerError> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("veetance-http")
                    .build()
                    .map_err(|e| ServerError::Runtime(format!("cannot start tokio: {e}")))?;
                let result = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .map_err(|source| ServerError::Listen { addr, source })?;
                    let app = routes::router(core.clone());
                    let stopping = Arc::new(tokio::sync::Notify::new());
                    let stopping_tx = stopping.clone();
                    let shutdown = async move {
                        if handle_signals {
                            tokio::select! {
                                _ = stop_rx => {}
                                _ = wait_for_signal() => {}
                            }
                        } else {
                            let _ = stop_rx.await;
                        }
                        stopping_tx.notify_one();
                    };
                    let served = listen::serve(listener, app, limits, shutdown);
                    // Requests still open when stop is asked (an OpenAI call waiting for its
                    // images, say) get a few seconds to finish.
                    tokio::select! {
                        _ = served => {}
                        _ = async {
                            stopping.notified().await;
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        } => {}
                    }
                    core.stop_worker();
                    Ok::<(), ServerError>(())
                });
                if engine_thread.is_some_and(|t| t.join().is_err()) {
                    tracing::error!("the engine thread panicked");
                }
                runtime.shutdown_timeout(Duration::from_secs(1));
                result
            })
            .map_err(|e| ServerError::Runtime(format!("cannot start the server thread: {e}")))?;
        Ok(ServerHandle {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// Ctrl-C, or SIGTERM on Unix.
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("stopping: the running prompt (if any) is queued again for the next start");
}

/// Runs a server until Ctrl-C or SIGTERM.
pub fn serve(mut options: ServeOptions) -> Result<(), ServerError> {
    options.handle_signals = true;
    let handle = Server::start(options)?;
    tracing::info!("listening on http://{}", handle.addr());
    handle.wait()
}
