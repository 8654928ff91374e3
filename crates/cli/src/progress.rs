//! Terminal progress bars and the JSON-lines event writer.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use veetance_core::{Event, EventSink};

/// Draws a bar for the whole run and one for the node that reports steps, and prints a line per
/// finished node, warning and written file. When stderr is not a terminal the bars are not
/// drawn and the lines are printed plainly.
pub struct TerminalProgress {
    multi: MultiProgress,
    state: Mutex<BarState>,
    quiet: bool,
}

#[derive(Default)]
struct BarState {
    run: Option<ProgressBar>,
    step: Option<(String, ProgressBar)>,
    written: Vec<String>,
}

impl TerminalProgress {
    pub fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        TerminalProgress {
            multi: MultiProgress::with_draw_target(target),
            state: Mutex::new(BarState::default()),
            quiet,
        }
    }

    /// Files written during the run, in order.
    pub fn written(&self) -> Vec<String> {
        self.lock().written.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BarState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn line(&self, text: String) {
        if !self.quiet {
            self.multi.suspend(|| eprintln!("{text}"));
        }
    }

    /// Removes the bars (call once the run is over).
    pub fn finish(&self) {
        let mut st = self.lock();
        if let Some((_, bar)) = st.step.take() {
            bar.finish_and_clear();
        }
        if let Some(bar) = st.run.take() {
            bar.finish_and_clear();
        }
    }
}

impl EventSink for TerminalProgress {
    fn emit(&self, event: &Event) {
        match event {
            Event::RunStarted {
                to_execute, nodes, ..
            } => {
                let bar = self.multi.add(ProgressBar::new(*to_execute as u64));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix("nodes");
                if *to_execute == 0 {
                    self.line(format!("all {nodes} node(s) served from the cache"));
                }
                self.lock().run = Some(bar);
            }
            Event::NodeStarted { node, node_type } => {
                if let Some(bar) = &self.lock().run {
                    bar.set_message(format!("{node} ({node_type})"));
                }
            }
            Event::Progress { node, step, total } => {
                let mut st = self.lock();
                let same = st.step.as_ref().is_some_and(|(n, _)| n == node);
                if !same {
                    if let Some((_, old)) = st.step.take() {
                        old.finish_and_clear();
                    }
                    let bar = self.multi.add(ProgressBar::new(*total));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>8} [{bar:30}] {pos}/{len} {per_sec}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(node.clone());
                    st.step = Some((node.clone(), bar));
                }
                if let Some((_, bar)) = &st.step {
                    bar.set_length(*total);
                    bar.set_position(*step);
                }
            }
            Event::NodeFinished {
                node,
                node_type,
                duration_ms,
                cached,
            } => {
                let mut st = self.lock();
                if st.step.as_ref().is_some_and(|(n, _)| n == node) {
                    if let Some((_, bar)) = st.step.take() {
                        bar.finish_and_clear();
                    }
                }
                if !cached {
                    if let Some(bar) = &st.run {
                        bar.inc(1);
                    }
                }
                drop(st);
                if *cached {
                    self.line(format!("  cached  {node} ({node_type})"));
                } else {
                    self.line(format!(
                        "  ran     {node} ({node_type}) in {duration_ms:.1} ms"
                    ));
                }
            }
            Event::OutputWritten { path, .. } => {
                self.lock().written.push(path.clone());
                self.line(format!("  wrote   {path}"));
            }
            Event::Warning { node, message } => {
                let at = node
                    .as_ref()
                    .map(|n| format!("node '{n}': "))
                    .unwrap_or_default();
                // Warnings show even in quiet mode.
                self.multi.suspend(|| eprintln!("warning: {at}{message}"));
            }
            // Memory readings are summed up in one line after the run (see `memory_summary`).
            Event::Preview { .. }
            | Event::Error { .. }
            | Event::RunFinished { .. }
            | Event::Memory { .. } => {}
        }
    }
}

/// Writes each event as one JSON object per line, with `t_ms` (milliseconds since the writer
/// was made) added.
pub struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
    start: Instant,
}

#[derive(Serialize)]
struct Stamped<'a> {
    t_ms: f64,
    #[serde(flatten)]
    event: &'a Event,
}

impl JsonLines {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        JsonLines {
            out: Mutex::new(out),
            start: Instant::now(),
        }
    }
}

impl EventSink for JsonLines {
    fn emit(&self, event: &Event) {
        let stamped = Stamped {
            t_ms: (self.start.elapsed().as_secs_f64() * 1e3 * 1000.0).round() / 1000.0,
            event,
        };
        if let Ok(line) = serde_json::to_string(&stamped) {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            // A reader that went away (a closed pipe) must not stop the run.
            let _ = writeln!(out, "{line}").and_then(|_| out.flush());
        }
    }
}
