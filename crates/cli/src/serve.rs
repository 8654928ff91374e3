//! `veetance serve`: ComfyUI's HTTP/WebSocket API with a durable queue (see `docs/server.md`).
//!
//! Budgets and the config file work as for headless runs (`--vram-budget`, `--ram-budget`,
//! `[cache]` and `[paths]` in `veetance.toml`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use veetance_core::HostMemory;
use veetance_server::{Limits, PreviewMethod, ServeOptions, Server};

use crate::config::{parse_size, ConfigFile};
use crate::{headless, CommonArgs, Failure, RunArgs};

/// ComfyUI's port.
const DEFAULT_PORT: u16 = 8188;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum PreviewArg {
    /// No latent previews unless a prompt asks (`extra_data.preview_method`).
    #[default]
    None,
    /// Previews for every prompt that does not say "none".
    Auto,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on, `ADDR[:PORT]`. Anything but loopback exposes the server to the
    /// network: use --token (or --token-file) then.
    #[arg(long, default_value = "127.0.0.1:8188", value_name = "ADDR[:PORT]")]
    pub listen: String,

    /// Port, overriding the one in --listen (ComfyUI's flag).
    #[arg(long)]
    pub port: Option<u16>,

    /// Folder of model files, in ComfyUI's layout (default: `models`, or `paths.models_dir`).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// ComfyUI's output folder (default: `out`, or `paths.out_dir`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// ComfyUI's input folder: uploads, LoadImage's names (default: `input`).
    #[arg(long, value_name = "DIR", default_value = "input")]
    pub input_dir: PathBuf,

    /// ComfyUI's temp folder: PreviewImage's files (default: `temp`).
    #[arg(long, value_name = "DIR", default_value = "temp")]
    pub temp_dir: PathBuf,

    /// Where the queue database (`queue.sqlite3`) lives; the queue and the history survive
    /// restarts there.
    #[arg(long, value_name = "DIR", default_value = "veetance-state")]
    pub state_dir: PathBuf,

    /// ComfyUI's user folder: the web frontend's settings and saved workflows live in
    /// `DIR/default/` (ComfyUI's flag).
    #[arg(long = "user-directory", value_name = "DIR", default_value = "user")]
    pub user_dir: PathBuf,

    /// Serve ComfyUI's web frontend at `/`: `auto` finds the `comfyui-frontend-package` installed
    /// in the Python environment (the active virtualenv's python, else python3), or give its
    /// `static` folder. See docs/web-editor.md.
    #[arg(long, alias = "front-end-root", value_name = "DIR|auto")]
    pub frontend: Option<String>,

    /// A folder of workflow templates for the frontend's template browser, served at
    /// `/templates/` (repeatable). With `--frontend auto`, the `templates` folders of installed
    /// `comfyui-workflow-templates*` packages are added.
    #[arg(long = "templates", value_name = "DIR")]
    pub template_dirs: Vec<PathBuf>,

    /// Require `Authorization: Bearer TOKEN` on every route (and `?token=` on the WebSocket
    /// and /view). Prefer --token-file: a token on the command line is visible to other users.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,

    /// Read the token from a file (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// As for headless runs: GPU memory in use the engine keeps under (`16GiB`, `80%`).
    #[arg(long, value_name = "SIZE|N%")]
    pub vram_budget: Option<String>,

    /// As for headless runs: host memory cached values may hold (`8GiB`, `50%`).
    #[arg(long, value_name = "SIZE|N%")]
    pub ram_budget: Option<String>,

    /// Latent previews on the WebSocket (binary frames). ComfyUI's default is none, which
    /// clients that take every binary frame for a result image need.
    #[arg(long, value_enum, default_value = "none")]
    pub preview_method: PreviewArg,

    /// Largest JSON request body; larger ones get 413.
    #[arg(long, value_name = "SIZE", default_value = "32MiB")]
    pub max_body_size: String,

    /// Largest upload (`/upload/image`); larger ones get 413.
    #[arg(long, value_name = "SIZE", default_value = "100MiB")]
    pub max_upload_size: String,

    /// Most nodes in one prompt; more get 400.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_prompt_nodes: usize,

    /// Seconds a client has to send a request's headers (and the longest an idle keep-alive
    /// connection is kept); the connection is closed after.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub header_timeout: u64,

    /// Seconds a client has to send a request body, plus 1 s per 16 KiB received; 408 after.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub body_timeout: u64,

    /// Most connections open at once; further ones wait until one closes.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,

    /// The workflow `POST /v1/images/generations` runs (`.ron`, or ComfyUI API or UI JSON);
    /// docs/server.md says which nodes get the prompt, size and seed.
    #[arg(long, value_name = "FILE")]
    pub default_workflow: Option<PathBuf>,

    /// Be a front door of a shared queue (`nats://HOST:4222`, a `nats-server -js`): prompts go
    /// to the `veetance worker`s behind it, and this server runs none itself. See
    /// docs/distributed.md.
    #[arg(long, value_name = "nats://HOST:PORT")]
    pub queue: Option<String>,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The shared queue to take jobs from: a `nats-server -js` (`nats://HOST:4222`).
    #[arg(long, value_name = "nats://HOST:PORT")]
    pub queue: String,

    /// This worker's name in job records and logs (its process id is added; default: the
    /// host name).
    #[arg(long)]
    pub name: Option<String>,

    /// Folder of model files, in ComfyUI's layout (default: `models`, or `paths.models_dir`).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// Where runs write their outputs before they go to the queue's object store (default:
    /// `out`, or `paths.out_dir`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// ComfyUI's input folder: LoadImage's names (share it with the front doors' for
    /// uploads).
    #[arg(long, value_name = "DIR", default_value = "input")]
    pub input_dir: PathBuf,

    /// ComfyUI's temp folder.
    #[arg(long, value_name = "DIR", default_value = "temp")]
    pub temp_dir: PathBuf,

    /// The worker's journal of the job it runs (one per worker process).
    #[arg(long, value_name = "DIR", default_value = "veetance-worker-state")]
    pub state_dir: PathBuf,

    /// As for headless runs: GPU memory in use the engine keeps under (`16GiB`, `80%`).
    #[arg(long, value_name = "SIZE|N%")]
    pub vram_budget: Option<String>,

    /// As for headless runs: host memory cached values may hold (`8GiB`, `50%`).
    #[arg(long, value_name = "SIZE|N%")]
    pub ram_budget: Option<String>,

    /// Latent previews for the clients of jobs that do not say (`none` or `auto`).
    #[arg(long, value_enum, default_value = "none")]
    pub preview_method: PreviewArg,

    /// The GPU this worker runs on: `cuda:N` (GPU N as `nvidia-smi` numbers them; sets
    /// CUDA_VISIBLE_DEVICES=N for this process, replacing any value it had) or `cpu` (hides every
    /// GPU). Default: what CUDA_VISIBLE_DEVICES leaves visible, the first of it.
    #[arg(long, value_name = "cuda:N|cpu")]
    pub device: Option<String>,
}

/// CUDA_VISIBLE_DEVICES for `--device` (`cuda:N` → `N`, `cpu` → empty), or why the value is
/// not one.
fn visible_devices(device: &str) -> Result<String, String> {
    let d = device.trim();
    if d.eq_ignore_ascii_case("cpu") {
        return Ok(String::new());
    }
    match d.strip_prefix("cuda:").map(str::parse::<u32>) {
        Some(Ok(n)) => Ok(n.to_string()),
        _ => Err(format!(
            "--device {device:?}: expected cuda:N (a GPU number, as nvidia-smi lists them) or cpu"
        )),
    }
}

/// The engine's budgets from `--vram-budget`/`--ram-budget` and the config file, as for
/// headless runs (serve and worker alike).
fn engine_budgets(
    vram_budget: &Option<String>,
    ram_budget: &Option<String>,
    config: &ConfigFile,
    config_path: Option<&std::path::Path>,
    probe: &Option<std::sync::Arc<dyn veetance_core::DeviceProbe>>,
) -> Result<veetance_core::Budgets, Failure> {
    let run_args = RunArgs {
        vram_budget: vram_budget.clone(),
        ram_budget: ram_budget.clone(),
        ..RunArgs::default()
    };
    headless::budgets(
        &run_args,
        &config.cache,
        config_path,
        probe.as_ref().and_then(|p| p.memory()),
        &HostMemory::read(),
    )
    .map_err(Failure::invalid)
}

/// `veetance worker`: runs jobs of a shared queue until Ctrl-C or SIGTERM.
pub fn run_worker(args: &WorkerArgs, common: &CommonArgs) -> Result<(), Failure> {
    if let Some(device) = &args.device {
        // Before anything touches CUDA (the probe below is the first), while the process has
        // one thread.
        let visible = visible_devices(device).map_err(|e| Failure::invalid(anyhow::anyhow!(e)))?;
        std::env::set_var("CUDA_VISIBLE_DEVICES", visible);
    }
    let (config, config_path) =
        ConfigFile::load(common.config.as_deref()).map_err(Failure::invalid)?;
    let probe = veetance_nodes::device_probe();
    let budgets = engine_budgets(
        &args.vram_budget,
        &args.ram_budget,
        &config,
        config_path.as_deref(),
        &probe,
    )?;
    let options = veetance_server::nats::WorkerOptions {
        queue: args.queue.clone(),
        name: args.name.clone(),
        models_dir: args
            .models_dir
            .clone()
            .or(config.paths.models_dir)
            .unwrap_or_else(|| PathBuf::from("models")),
        out_dir: args
            .out
            .clone()
            .or(config.paths.out_dir)
            .unwrap_or_else(|| PathBuf::from("out")),
        input_dir: args.input_dir.clone(),
        temp_dir: args.temp_dir.clone(),
        state_dir: args.state_dir.clone(),
        budgets,
        device_probe: probe,
        preview: match args.preview_method {
            PreviewArg::None => PreviewMethod::None,
            PreviewArg::Auto => PreviewMethod::Auto,
        },
        registry: None,
    };
    eprintln!(
        "veetance worker: taking jobs from {}; Ctrl-C stops",
        args.queue
    );
    veetance_server::nats::run_worker(options).map_err(|e| match e {
        veetance_server::ServerError::Store(_) | veetance_server::ServerError::Folder { .. } => {
            Failure::invalid(e)
        }
        other => Failure::run_failed(other),
    })
}

/// `ADDR[:PORT]`, a host name or an IP address, with `port` overriding.
fn listen_address(listen: &str, port: Option<u16>) -> anyhow::Result<SocketAddr> {
    let text = listen.trim();
    let with_port = if text
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_ipv6())
    {
        format!("[{text}]:{DEFAULT_PORT}")
    } else if text.starts_with('[') && text.ends_with(']') || !text.contains(':') {
        format!("{text}:{DEFAULT_PORT}")
    } else {
        text.to_string()
    };
    let mut addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen:?} is not an address (try 127.0.0.1:8188)"))?
        .next()
        .ok_or_else(|| anyhow!("--listen {listen:?} does not resolve to an address"))?;
    if let Some(p) = port {
        addr.set_port(p);
    }
    Ok(addr)
}

fn size_flag(text: &str, flag: &str) -> Result<usize, Failure> {
    parse_size(text)
        .map(|s| s as usize)
        .map_err(|e| Failure::invalid(anyhow!("{flag}: {e}")))
}

/// The frontend folder and the template folders, `--frontend auto` resolved.
fn frontend_folders(args: &ServeArgs) -> Result<(Option<PathBuf>, Vec<PathBuf>), Failure> {
    let mut templates = args.template_dirs.clone();
    let frontend = match args.frontend.as_deref() {
        None => None,
        Some("auto") => {
            let found = veetance_server::frontend::locate_installed(None)
                .map_err(|e| Failure::invalid(anyhow!(e)))?;
            let Some(dir) = found.frontend else {
                return Err(Failure::invalid(anyhow!(
                    "--frontend auto: comfyui-frontend-package is not installed in this Python \
                     environment; install it with `pip install comfyui-frontend-package` (see \
                     docs/web-editor.md for the tested versions), or pass --frontend DIR"
                )));
            };
            eprintln!(
                "veetance serve: ComfyUI's frontend {} from {}",
                found.version.as_deref().unwrap_or("(unknown version)"),
                dir.display()
            );
            if found.templates.is_empty() && args.template_dirs.is_empty() {
                eprintln!(
                    "veetance serve: no workflow templates installed (`pip install \
                     comfyui-workflow-templates`); the template browser will be empty"
                );
            }
            templates.extend(found.templates);
            Some(dir)
        }
        Some(dir) => Some(PathBuf::from(dir)),
    };
    Ok((frontend, templates))
}

fn positive_seconds(seconds: u64, flag: &str) -> Result<std::time::Duration, Failure> {
    if seconds == 0 {
        return Err(Failure::invalid(anyhow!(
            "{flag} 0: give at least 1 second"
        )));
    }
    Ok(std::time::Duration::from_secs(seconds))
}

pub fn run(args: &ServeArgs, common: &CommonArgs) -> Result<(), Failure> {
    let (config, config_path) =
        ConfigFile::load(common.config.as_deref()).map_err(Failure::invalid)?;
    let listen = listen_address(&args.listen, args.port).map_err(Failure::invalid)?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Failure::invalid(anyhow!("--token-file {}: {e}", file.display())))?;
            Some(text.trim().to_string())
        }
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err(Failure::invalid(anyhow!("the token is empty")));
    }
    if !listen.ip().is_loopback() && token.is_none() {
        eprintln!(
            "warning: listening on {listen} without --token: anyone who can reach this port can \
             queue prompts, read outputs and upload files"
        );
    }
    let probe = veetance_nodes::device_probe();
    let budgets = engine_budgets(
        &args.vram_budget,
        &args.ram_budget,
        &config,
        config_path.as_deref(),
        &probe,
    )?;
    let limits = Limits {
        body_bytes: size_flag(&args.max_body_size, "--max-body-size")?,
        upload_bytes: size_flag(&args.max_upload_size, "--max-upload-size")?,
        prompt_nodes: args.max_prompt_nodes,
        header_timeout: positive_seconds(args.header_timeout, "--header-timeout")?,
        body_timeout: positive_seconds(args.body_timeout, "--body-timeout")?,
        connections: args.max_connections.max(1),
        ..Limits::default()
    };
    // Thousands of connections need as many file descriptors; the soft limit is often 1024.
    if let Some((soft, _)) = veetance_server::raise_open_file_limit() {
        let wanted = limits.connections as u64 + 256;
        if soft < wanted {
            eprintln!(
                "warning: this process may open only {soft} files; --max-connections {} needs \
                 about {wanted} (raise `ulimit -n`, or lower --max-connections)",
                limits.connections
            );
        }
    }
    let (frontend, template_dirs) = frontend_folders(args)?;
    let options = ServeOptions {
        listen,
        models_dir: args
            .models_dir
            .clone()
            .or(config.paths.models_dir)
            .unwrap_or_else(|| PathBuf::from("models")),
        out_dir: args
            .out
            .clone()
            .or(config.paths.out_dir)
            .unwrap_or_else(|| PathBuf::from("out")),
        input_dir: args.input_dir.clone(),
        temp_dir: args.temp_dir.clone(),
        state_dir: args.state_dir.clone(),
        user_dir: args.user_dir.clone(),
        frontend,
        template_dirs,
        token,
        budgets,
        device_probe: probe,
        preview: match args.preview_method {
            PreviewArg::None => PreviewMethod::None,
            PreviewArg::Auto => PreviewMethod::Auto,
        },
        limits,
        default_workflow: args.default_workflow.clone(),
        registry: None,
        history_max: 10_000,
        handle_signals: true,
        queue: args.queue.clone(),
    };
    let state = match &options.queue {
        Some(url) => format!("the shared queue {url}"),
        None => options.state_dir.display().to_string(),
    };
    let handle = Server::start(options).map_err(|e| match e {
        veetance_server::ServerError::Listen { .. } | veetance_server::ServerError::Runtime(_) => {
            Failure::run_failed(e)
        }
        other => Failure::invalid(other),
    })?;
    eprintln!(
        "veetance serve: ComfyUI's API on http://{} (queue and history in {state}); Ctrl-C stops",
        handle.addr()
    );
    handle.wait().map_err(Failure::run_failed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_flag_maps_to_visible_devices() {
        assert_eq!(super::visible_devices("cuda:1").unwrap(), "1");
        assert_eq!(super::visible_devices("CPU").unwrap(), "");
        for bad in ["cuda", "cuda:x", "1", "gpu:0", "cuda:-1"] {
            let e = super::visible_devices(bad).unwrap_err();
            assert!(e.contains("--device") && e.contains("cuda:N"), "{e}");
        }
    }
    use super::*;

    #[test]
    fn listen_takes_addresses_with_or_without_a_port() {
        assert_eq!(
            listen_address("127.0.0.1:9000", None).unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            listen_address("0.0.0.0", None).unwrap(),
            "0.0.0.0:8188".parse().unwrap()
        );
        assert_eq!(
            listen_address("::1", Some(1234)).unwrap(),
            "[::1]:1234".parse().unwrap()
        );
        assert_eq!(
            listen_address("[::1]:7", None).unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert!(listen_address("localhost", None)
            .unwrap()
            .ip()
            .is_loopback());
        assert!(listen_address("not an address:x", None).is_err());
    }
}
