//! The `veetance` command.
//!
//! - `veetance --headless [WORKFLOW] [--set node.param=value]… [--out DIR] [--events FILE|-]`
//!   runs a workflow (`.ron`; ComfyUI's JSON, API prompt or UI workflow; or a PNG written by
//!   SaveImage or by ComfyUI) with progress bars and writes its outputs; without a file it runs
//!   the built-in example. ComfyUI graphs run by ComfyUI's rules (see `veetance_comfy`): node
//!   ids are the prompt's, problems are reported in ComfyUI's terms, outputs with problems are
//!   skipped, and images carry ComfyUI's `prompt` and `workflow` text chunks.
//! - `veetance validate FILE` checks a workflow without running it.
//! - `veetance nodes [--json]` lists every node type.
//! - `veetance serve [--listen ADDR[:PORT]] …` serves ComfyUI's HTTP/WebSocket API with a
//!   durable queue; see [`serve`] and `docs/server.md`.
//! - `veetance bench --model klein-4b|klein-9b|tiny` (or model files) times the FLUX.2 transformer
//!   forward and a whole generation on one device; see [`bench`].
//!
//! Exit codes: 0 ok, 1 the run failed, 2 invalid input.

mod bench;
mod config;
mod headless;
mod load;
mod progress;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit code for a run that failed while running.
const EXIT_RUN_FAILED: u8 = 1;
/// Exit code for input that is not valid (bad file, bad flag, validation errors).
const EXIT_INVALID: u8 = 2;

/// An error with the exit code it should end the process with.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn invalid(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_INVALID,
            error: error.into(),
        }
    }

    pub fn run_failed(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_RUN_FAILED,
            error: error.into(),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "veetance",
    version,
    about = "A node-graph engine for diffusion image generation",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Run without the editor: execute the workflow and write its outputs.
    #[arg(long)]
    headless: bool,

    /// Workflow to open or run (.ron, ComfyUI .json, or a PNG written by SaveImage or ComfyUI).
    /// Headless runs without one run the built-in example.
    workflow: Option<PathBuf>,

    #[command(flatten)]
    run: RunArgs,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Override a param: `--set node.param=value` (repeatable).
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub sets: Vec<String>,

    /// Folder for output files (default: `out`, or `paths.out_dir` in the config file).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Write run events as JSON lines to FILE, or to stdout with `-`.
    #[arg(long, value_name = "FILE|-")]
    pub events: Option<String>,

    /// Run only what these nodes need (repeatable); default: every output node.
    #[arg(long = "target", value_name = "NODE")]
    pub targets: Vec<String>,

    /// GPU memory in use, as the driver reports it, that the run keeps under: cached values, the
    /// running node, the CUDA context, e.g. `16GiB` or `80%` (default: 90% of the GPU).
    #[arg(long, value_name = "SIZE|N%")]
    pub vram_budget: Option<String>,

    /// Host memory cached values may hold, e.g. `8GiB` or `50%` (default: half of the memory
    /// available at start).
    #[arg(long, value_name = "SIZE|N%")]
    pub ram_budget: Option<String>,

    /// Folder of model files, laid out as ComfyUI keeps them (default: `models`).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// ComfyUI's `input` folder: where LoadImage and LoadImageMask find bare file names, and
    /// which names may not leave (default: none; names are paths from the current directory).
    #[arg(long, value_name = "DIR")]
    pub input_dir: Option<PathBuf>,

    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug, Default)]
pub struct CommonArgs {
    /// Config file (TOML); default: `$VEETANCE_CONFIG`, else `./veetance.toml` if present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More log output (-v info, -vv debug); `VEETANCE_LOG` takes a tracing filter too.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a workflow without running it; every problem is listed.
    Validate {
        /// Workflow file (.ron, ComfyUI .json, or a PNG written by SaveImage or ComfyUI).
        file: PathBuf,
        /// Folder of model files, for checks of model params.
        #[arg(long, value_name = "DIR")]
        models_dir: Option<PathBuf>,
        /// ComfyUI's `input` folder, for checks of image names.
        #[arg(long, value_name = "DIR")]
        input_dir: Option<PathBuf>,
    },
    /// List every node type with its ports and params.
    Nodes {
        /// Machine-readable JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time the FLUX.2 transformer forward and a whole generation (encode, steps, decode).
    Bench(Box<bench::BenchArgs>),
    /// Serve ComfyUI's HTTP/WebSocket API (and OpenAI's image route) with a durable queue.
    Serve(Box<serve::ServeArgs>),
    /// Run jobs of a shared queue (NATS JetStream) that `veetance serve --queue` front doors
    /// fill; see docs/distributed.md.
    Worker(Box<serve::WorkerArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.common.verbose);
    let result = match cli.command {
        Some(Command::Validate {
            file,
            models_dir,
            input_dir,
        }) => load::validate_command(&file, models_dir, input_dir),
        Some(Command::Nodes { json }) => load::nodes_command(json),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::Serve(args)) => serve::run(&args, &cli.common),
        Some(Command::Worker(args)) => serve::run_worker(&args, &cli.common),
        None if cli.headless => headless::run(cli.workflow.as_deref(), &cli.run, &cli.common),
        None => editor(cli.workflow, &cli.run, &cli.common),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line per error; the chain joined so that the place comes first.
            let mut msg = f.error.to_string();
            for cause in f.error.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(f.code)
        }
    }
}

/// Opens the editor, with the workflow given (if any).
#[cfg(feature = "editor")]
fn editor(workflow: Option<PathBuf>, run: &RunArgs, common: &CommonArgs) -> Result<(), Failure> {
    let (config, config_path) =
        config::ConfigFile::load(common.config.as_deref()).map_err(Failure::invalid)?;
    let probe = veetance_nodes::device_probe();
    let budgets = headless::budgets(
        run,
        &config.cache,
        config_path.as_deref(),
        probe.as_ref().and_then(|p| p.memory()),
        &veetance_core::HostMemory::read(),
    )
    .map_err(Failure::invalid)?;
    if let Some(path) = &workflow {
        if !path.exists() {
            return Err(Failure::invalid(anyhow::anyhow!(
                "{}: no such file",
                path.display()
            )));
        }
    }
    veetance_gui::run(veetance_gui::EditorOptions {
        workflow,
        models_dir: run.models_dir.clone().or(config.paths.models_dir),
        out_dir: run.out.clone().or(config.paths.out_dir),
        budgets,
        state_dir: None,
        device_probe: probe,
    })
    .map_err(|e| Failure::run_failed(anyhow::anyhow!("the editor stopped: {e}")))
}

#[cfg(not(feature = "editor"))]
fn editor(workflow: Option<PathBuf>, _run: &RunArgs, _common: &CommonArgs) -> Result<(), Failure> {
    Err(Failure::invalid(anyhow::anyhow!(
        "this veetance was built without the editor (headless build); run a workflow with \
         `veetance --headless {}`",
        workflow
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<workflow.ron>".into())
    )))
}

/// Writes to stdout, ignoring a closed pipe (`veetance nodes | head` must not panic).
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Sets up `tracing` once for the process: warnings by default, more with -v, or any filter
/// in `VEETANCE_LOG`.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("VEETANCE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
