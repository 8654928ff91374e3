//! `veetance --headless`: load, override, validate, run, report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use veetance_core::events::FanOut;
use veetance_core::{validate, Budgets, CancelToken, Engine, EventSink, RunEnv, RunOptions};
use veetance_workflow::WorkflowFile;

use crate::config::{format_size, parse_size, total_ram_bytes, ConfigFile};
use crate::load::{apply_sets, default_workflow, load_workflow};
use crate::progress::{JsonLines, TerminalProgress};
use crate::{CommonArgs, Failure, RunArgs};

pub fn run(path: Option<&Path>, args: &RunArgs, common: &CommonArgs) -> Result<(), Failure> {
    let (config, config_path) =
        ConfigFile::load(common.config.as_deref()).map_err(Failure::invalid)?;
    if let Some(p) = &config_path {
        tracing::info!("config from {}", p.display());
    }
    let loaded = match path {
        Some(p) => load_workflow(p)?,
        None => default_workflow()?,
    };
    let registry = Arc::new(veetance_nodes::registry());
    let mut graph = loaded
        .file
        .to_graph(&loaded.origin)
        .map_err(Failure::invalid)?;
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
    let budgets = budgets(args, &config.cache).map_err(Failure::invalid)?;
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

    let env = RunEnv {
        out_dir: out_dir.clone(),
        models_dir,
        run_index: 0,
        workflow: Some(as_run.to_ron().into()),
    };
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
            }
            Ok(())
        }
        Err(e) if e.is_invalid_input() => Err(Failure::invalid(anyhow!("{}: {e}", loaded.origin))),
        Err(e) => Err(Failure::run_failed(anyhow!("{}: {e}", loaded.origin))),
    }
}

pub fn budgets(args: &RunArgs, cache: &crate::config::CacheSection) -> anyhow::Result<Budgets> {
    let pick =
        |flag: &Option<String>, file: &Option<String>, what: &str| -> anyhow::Result<Option<u64>> {
            match flag.as_ref().or(file.as_ref()) {
                Some(text) => parse_size(text)
                    .map(Some)
                    .map_err(|e| anyhow!("{what}: {e}")),
                None => Ok(None),
            }
        };
    let device = pick(&args.vram_budget, &cache.vram_budget, "--vram-budget")?;
    let host = pick(&args.ram_budget, &cache.ram_budget, "--ram-budget")?
        .or_else(|| total_ram_bytes().map(|t| t / 2));
    Ok(Budgets { device, host })
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
