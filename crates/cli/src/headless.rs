//! `veetance --headless`: load, override, validate, run, report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use veetance_comfy::{check_prompt, node_error_lines, prune};
use veetance_core::events::FanOut;
use veetance_core::{
    validate, Budgets, CancelToken, DeviceMemory, Engine, EventSink, HostMemory, MemoryReport,
    RunEnv, RunOptions,
};
use veetance_workflow::WorkflowFile;

use crate::config::{format_size, parse_budget, CacheSection, ConfigFile};
use crate::load::{apply_sets, comfy_failure, default_workflow, load_workflow, prompt_as_run};
use crate::progress::{JsonLines, TerminalProgress};
use crate::{CommonArgs, Failure, RunArgs};

pub fn run(path: Option<&Path>, args: &RunArgs, common: &CommonArgs) -> Result<(), Failure> {
    let (config, config_path) =
        ConfigFile::load(common.config.as_deref()).map_err(Failure::invalid)?;
    if let Some(p) = &config_path {
        tracing::info!("config from {}", p.display());
    }
    let registry = Arc::new(veetance_nodes::registry());
    let loaded = match path {
        Some(p) => load_workflow(p, &registry)?,
        None => default_workflow()?,
    };
    let mut graph = loaded.graph()?;
    apply_sets(&mut graph, &registry, &args.sets)?;

    // The workflow exactly as it runs (overrides applied), for outputs to embed.
    let mut as_run = WorkflowFile::from_graph(&graph, loaded.file.layout.clone());
    as_run.description = loaded.file.description.clone();

    let out_dir = args
        .out
        .clone()
        .or(config.paths.out_dir)
        .unwrap_or_else(|| PathBuf::from("out"));
    let models_dir = args
        .models_dir
        .clone()
        .or(config.paths.models_dir)
        .unwrap_or_else(|| PathBuf::from("models"));
    let probe = veetance_nodes::device_probe();
    let device_at_start = probe.as_ref().and_then(|p| p.memory());
    let budgets = budgets(
        args,
        &config.cache,
        config_path.as_deref(),
        device_at_start,
        &HostMemory::read(),
    )
    .map_err(Failure::invalid)?;
    tracing::info!(
        "cache budgets: vram {}, ram {}",
        budgets
            .device
            .map(format_size)
            .unwrap_or_else(|| "unlimited".into()),
        budgets
            .host
            .map(format_size)
            .unwrap_or_else(|| "unlimited".into())
    );

    let mut env = RunEnv {
        out_dir: out_dir.clone(),
        models_dir,
        run_index: 0,
        workflow: Some(as_run.to_ron().into()),
        input_dir: args.input_dir.clone(),
        ..RunEnv::default()
    };
    match &loaded.comfy {
        Some(comfy) => {
            // ComfyUI's text chunks, as ComfyUI writes them into its images: the prompt as it
            // runs (overrides applied), and the UI workflow it came from.
            let prompt = prompt_as_run(&comfy.prompt, &graph, &args.sets);
            env.png_text.push(("prompt".into(), prompt.to_string()));
            if let Some(ui) = &comfy.workflow {
                env.png_text.push(("workflow".into(), ui.to_string()));
            }
            // ComfyUI's rules: outputs whose nodes have problems are skipped, the others run,
            // and nodes no output needs are neither checked nor run.
            let checked = check_prompt(&graph, &registry, &env)
                .map_err(|e| comfy_failure(&loaded.origin, &e))?;
            for line in node_error_lines(&checked.node_errors) {
                eprintln!("warning: {}: {line}", loaded.origin);
            }
            if !checked.node_errors.is_empty() {
                eprintln!(
                    "warning: {}: running output(s) {} only, as ComfyUI would",
                    loaded.origin,
                    checked.outputs.join(", ")
                );
            }
            graph = prune(&graph, &checked.outputs);
        }
        None => {
            if let Err(errors) = validate(&graph, &registry, &env) {
                for e in &errors {
                    eprintln!("{}: {e}", loaded.origin);
                }
                return Err(Failure::invalid(anyhow!(
                    "{}: {} problem(s); nothing was run",
                    loaded.origin,
                    errors.len()
                )));
            }
        }
    }
    ensure_writable_dir(&out_dir).map_err(Failure::invalid)?;

    let events_to_stdout = args.events.as_deref() == Some("-");
    let json = match args.events.as_deref() {
        None => None,
        Some("-") => Some(JsonLines::new(Box::new(std::io::stdout()))),
        Some(file) => {
            let f = std::fs::File::create(file)
                .map_err(|e| Failure::invalid(anyhow!("--events {file}: cannot create: {e}")))?;
            Some(JsonLines::new(Box::new(std::io::BufWriter::new(f))))
        }
    };
    let progress = TerminalProgress::new(args.quiet);
    let mut sinks: Vec<&dyn EventSink> = vec![&progress];
    if let Some(j) = &json {
        sinks.push(j);
    }
    let sink = FanOut(sinks);

    let cancel = CancelToken::new();
    install_ctrl_c(cancel.clone());

    let mut engine = Engine::new(registry, budgets);
    if let Some(probe) = probe {
        engine = engine.with_device_probe(probe);
    }
    let options = RunOptions {
        targets: (!args.targets.is_empty()).then(|| args.targets.clone()),
        env,
        cancel,
    };
    let result = engine.run(&graph, &options, &sink);
    progress.finish();
    match result {
        Ok(report) => {
            if !events_to_stdout {
                for path in progress.written() {
                    crate::print_stdout(&format!("{path}\n"));
                }
            }
            if !args.quiet {
                eprintln!(
                    "done in {:.0} ms: {} node(s) ran, {} from the cache",
                    report.duration.as_secs_f64() * 1e3,
                    report.executed.len(),
                    report.cached.len()
                );
                eprintln!("{}", memory_summary(&report.memory));
            }
            Ok(())
        }
        Err(e) if e.is_invalid_input() => Err(Failure::invalid(anyhow!("{}: {e}", loaded.origin))),
        Err(e) => Err(Failure::run_failed(anyhow!("{}: {e}", loaded.origin))),
    }
}

/// The run's byte budgets: `--vram-budget` / `--ram-budget`, else `[cache]` in the config file,
/// else the defaults below. A budget is a size (`16GiB`) or a share of the memory (`80%`: of the
/// GPU's total for VRAM, of the machine's RAM for the host).
pub fn budgets(
    args: &RunArgs,
    cache: &CacheSection,
    config_path: Option<&Path>,
    device: Option<DeviceMemory>,
    host: &HostMemory,
) -> anyhow::Result<Budgets> {
    let pick = |flag: &Option<String>,
                file: &Option<String>,
                flag_name: &str,
                key: &str,
                total: Option<u64>|
     -> anyhow::Result<Option<u64>> {
        if let Some(text) = flag {
            return parse_budget(text, total)
                .map(Some)
                .map_err(|e| anyhow!("{flag_name}: {e}"));
        }
        if let Some(text) = file {
            let place = config_path.map_or_else(
                || "the config file".to_string(),
                |p| p.display().to_string(),
            );
            return parse_budget(text, total)
                .map(Some)
                .map_err(|e| anyhow!("{place}: [cache] {key}: {e}"));
        }
        Ok(None)
    };
    let device_budget = pick(
        &args.vram_budget,
        &cache.vram_budget,
        "--vram-budget",
        "vram_budget",
        device.map(|d| d.total),
    )?;
    if let (Some(b), Some(d)) = (device_budget, device) {
        if b > d.free {
            tracing::warn!(
                "the VRAM budget ({}) is more than the GPU has free ({}); the engine also keeps \
                 to what the driver reports free",
                format_size(b),
                format_size(d.free)
            );
        }
    }
    let host_budget = pick(
        &args.ram_budget,
        &cache.ram_budget,
        "--ram-budget",
        "ram_budget",
        host.total,
    )?;
    Ok(Budgets {
        device: device_budget.or_else(|| device.map(default_device_budget)),
        host: host_budget.or_else(|| default_host_budget(host)),
    })
}

/// The default VRAM budget: 90% of the GPU's memory. The budget caps all device memory in use as
/// the driver reports it (this process's CUDA context and workspaces, and other programs', which
/// the reading cannot tell apart), so the 10% is left free for the rest of the system. Without a
/// GPU there is no device budget.
pub fn default_device_budget(device: DeviceMemory) -> u64 {
    device.total / 10 * 9
}

/// The default RAM budget for cached values: half of the memory the system has available when
/// the run starts (`MemAvailable`), leaving the rest to model weights being loaded, the OS and
/// other programs; half of the total where availability is unknown; unlimited where both are.
pub fn default_host_budget(host: &HostMemory) -> Option<u64> {
    host.available.or(host.total).map(|bytes| bytes / 2)
}

/// One line for people: the run's memory peaks and tier moves.
pub fn memory_summary(m: &MemoryReport) -> String {
    let device = match (m.device_peak_used, m.device_total) {
        (Some(peak), Some(total)) => format!(
            "device peak {} of {}{}",
            format_size(peak),
            format_size(total),
            m.device_budget
                .map(|b| format!(" (budget {})", format_size(b)))
                .unwrap_or_default()
        ),
        _ => "no device readings".to_string(),
    };
    let rss = m
        .process_rss_peak
        .map(|r| format!(", process peak {}", format_size(r)))
        .unwrap_or_default();
    let mut line = format!(
        "memory: {device}{rss}, cache peak {} device / {} host",
        format_size(m.cache_peak.device),
        format_size(m.cache_peak.host)
    );
    if m.offloaded + m.reloaded + m.dropped + m.oom_retries > 0 {
        line.push_str(&format!(
            "; {} offloaded, {} reloaded, {} dropped, {} out-of-memory retr{}",
            m.offloaded,
            m.reloaded,
            m.dropped,
            m.oom_retries,
            if m.oom_retries == 1 { "y" } else { "ies" }
        ));
    }
    line
}

/// Makes sure the output folder exists and can be written, before anything runs.
fn ensure_writable_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow!("output folder '{}' cannot be created: {e}", dir.display()))?;
    let probe = dir.join(format!(".veetance-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| anyhow!("output folder '{}' is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// First Ctrl-C cancels the run at the next check; a second one exits at once.
fn install_ctrl_c(cancel: CancelToken) {
    let result = ctrlc::set_handler(move || {
        if cancel.is_cancelled() {
            std::process::exit(130);
        }
        eprintln!("\ncancelling… (Ctrl-C again to quit at once)");
        cancel.cancel();
    });
    if let Err(e) = result {
        tracing::warn!("Ctrl-C will not cancel gracefully: {e}");
    }
}
