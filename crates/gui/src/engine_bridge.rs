//! The engine thread. It owns the [`Engine`] (so the output cache survives across runs and
//! failures), takes [`Command`]s from the UI over a bounded channel, and answers with
//! [`Reply`]s over an unbounded one, waking the UI with `request_repaint` after each. The UI
//! only ever `try_send`s and `try_recv`s: it never waits on the engine.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use veetance_core::{
    validate, Budgets, CancelToken, Engine, Event, FnSink, Image, NodeRegistry, RunEnv, RunError,
    RunOptions, ValidationError,
};
use veetance_workflow::WorkflowFile;

use crate::telemetry::CacheTelemetry;

/// How many commands may wait for the engine thread. A run is one command, so a full queue
/// means the user clicked far ahead of the engine; the UI says so instead of blocking.
pub const COMMAND_QUEUE: usize = 8;

/// What the UI asks of the engine thread.
pub enum Command {
    /// Validate and run a workflow.
    Run {
        file: WorkflowFile,
        env: RunEnv,
        cancel: CancelToken,
    },
    /// Validate a workflow without running it (after opening a file).
    Validate {
        file: WorkflowFile,
        env: RunEnv,
    },
    /// Send a cache report.
    Telemetry,
    /// Where to send repaint requests (the UI's context, known after its first frame).
    SetRepaint(egui::Context),
    Shutdown,
}

/// What the engine thread reports.
#[derive(Debug)]
pub enum Reply {
    /// An engine event of the current run, as it happens.
    Event(Event),
    /// An image an output node wrote, read back for display.
    OutputImage {
        node: String,
        path: String,
        image: Image,
    },
    /// A run ended. `problems` lists validation errors when the workflow was invalid.
    RunDone {
        ok: bool,
        message: Option<String>,
        failed_node: Option<String>,
        problems: Vec<ValidationError>,
        cancelled: bool,
    },
    /// The result of [`Command::Validate`]: `graph_error` when the file could not even be made
    /// into a graph (duplicate ids).
    Validated {
        problems: Vec<ValidationError>,
        graph_error: Option<String>,
    },
    Cache(CacheTelemetry),
}

/// The UI's handle on the engine thread.
pub struct EngineBridge {
    commands: SyncSender<Command>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
}

impl EngineBridge {
    /// Starts the engine thread, with the GPU's memory probe when there is one.
    pub fn spawn(
        registry: Arc<NodeRegistry>,
        budgets: Budgets,
        probe: Option<Arc<dyn veetance_core::DeviceProbe>>,
    ) -> Self {
        let (commands, command_rx) = mpsc::sync_channel(COMMAND_QUEUE);
        let (reply_tx, replies) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("veetance-engine".into())
            .spawn(move || {
                let mut engine = Engine::new(registry, budgets);
                engine.set_device_probe(probe);
                engine_loop(engine, command_rx, reply_tx)
            })
            .expect("the engine thread starts");
        EngineBridge {
            commands,
            replies,
            thread: Some(thread),
        }
    }

    /// Queues a command without waiting; fails when the queue is full or the thread is gone.
    pub fn send(&self, command: Command) -> Result<(), String> {
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => {
                "the engine is busy with earlier requests; try again in a moment".to_string()
            }
            TrySendError::Disconnected(_) => "the engine thread has stopped".to_string(),
        })
    }

    /// The next reply, if one is waiting.
    pub fn try_recv(&self) -> Option<Reply> {
        self.replies.try_recv().ok()
    }
}

impl Drop for EngineBridge {
    fn drop(&mut self) {
        // A run in progress finishes its current node first; do not hold the UI for it.
        let _ = self.commands.try_send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn engine_loop(mut engine: Engine, commands: Receiver<Command>, replies: Sender<Reply>) {
    let repaint: Arc<Mutex<Option<egui::Context>>> = Arc::default();
    let send = {
        let repaint = repaint.clone();
        let replies = replies.clone();
        move |reply: Reply| {
            let _ = replies.send(reply);
            if let Some(ctx) = repaint.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                ctx.request_repaint();
            }
        }
    };
    while let Ok(command) = commands.recv() {
        match command {
            Command::Shutdown => break,
            Command::SetRepaint(ctx) => {
                *repaint.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx);
            }
            Command::Telemetry => send(Reply::Cache(CacheTelemetry::from_cache(engine.cache()))),
            Command::Validate { file, env } => {
                let reply = match file.to_graph("workflow") {
                    Ok(graph) => Reply::Validated {
                        problems: validate(&graph, engine.registry(), &env)
                            .err()
                            .unwrap_or_default(),
                        graph_error: None,
                    },
                    Err(e) => Reply::Validated {
                        problems: Vec::new(),
                        graph_error: Some(e.to_string()),
                    },
                };
                send(reply);
            }
            Command::Run { file, env, cancel } => {
                run_one(&mut engine, &file, env, cancel, &send);
                send(Reply::Cache(CacheTelemetry::from_cache(engine.cache())));
            }
        }
    }
}

fn run_one(
    engine: &mut Engine,
    file: &WorkflowFile,
    env: RunEnv,
    cancel: CancelToken,
    send: &(dyn Fn(Reply) + Send + Sync),
) {
    let graph = match file.to_graph("workflow") {
        Ok(g) => g,
        Err(e) => {
            send(Reply::RunDone {
                ok: false,
                message: Some(e.to_string()),
                failed_node: None,
                problems: Vec::new(),
                cancelled: false,
            });
            return;
        }
    };
    let options = RunOptions {
        targets: None,
        env,
        cancel,
    };
    let sink = FnSink(|event: &Event| {
        if let Event::OutputWritten { node, path } = event {
            // Read the written image back for the viewer; a non-image output is just listed.
            if let Ok(image) = veetance_nodes_basic::read_png_image(Path::new(path)) {
                send(Reply::OutputImage {
                    node: node.clone(),
                    path: path.clone(),
                    image,
                });
            }
        }
        send(Reply::Event(event.clone()));
    });
    let result = engine.run(&graph, &options, &sink);
    let reply = match result {
        Ok(_) => Reply::RunDone {
            ok: true,
            message: None,
            failed_node: None,
            problems: Vec::new(),
            cancelled: false,
        },
        Err(e) => {
            let message = Some(e.to_string());
            match e {
                RunError::Invalid(problems) => Reply::RunDone {
                    ok: false,
                    message,
                    failed_node: None,
                    problems,
                    cancelled: false,
                },
                RunError::NodeFailed { node, .. } | RunError::OutOfMemory { node, .. } => {
                    Reply::RunDone {
                        ok: false,
                        message,
                        failed_node: Some(node),
                        problems: Vec::new(),
                        cancelled: false,
                    }
                }
                RunError::Cancelled { node } => Reply::RunDone {
                    ok: false,
                    message,
                    failed_node: node,
                    problems: Vec::new(),
                    cancelled: true,
                },
                RunError::UnknownTarget(_) | RunError::NoOutputs => Reply::RunDone {
                    ok: false,
                    message,
                    failed_node: None,
                    problems: Vec::new(),
                    cancelled: false,
                },
            }
        }
    };
    send(reply);
}
