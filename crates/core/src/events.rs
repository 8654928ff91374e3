//! Events of a run: what scripts read as JSON lines (`--events`) and what the editor and the
//! CLI's progress bars are driven by.

use std::sync::Mutex;

use serde::Serialize;

use crate::value::Image;

/// Something that happened during a run. Serialized as one JSON object per line, tagged by
/// `"event"`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run: u64,
        /// Nodes the requested outputs depend on.
        nodes: usize,
        /// Of those, how many will execute (the rest are served from the cache or not needed).
        to_execute: usize,
    },
    NodeStarted {
        node: String,
        node_type: String,
    },
    Progress {
        node: String,
        step: u64,
        total: u64,
    },
    /// A preview image of work in progress (a sampler's denoised estimate, say). The pixels are
    /// not written to JSON; the editor receives them in-process.
    Preview {
        node: String,
        width: u32,
        height: u32,
        #[serde(skip)]
        image: Image,
    },
    NodeFinished {
        node: String,
        node_type: String,
        duration_ms: f64,
        cached: bool,
    },
    OutputWritten {
        node: String,
        path: String,
    },
    Warning {
        node: Option<String>,
        message: String,
    },
    Error {
        node: Option<String>,
        message: String,
    },
    /// Memory telemetry: at the start of a run, after each executed node, and at the end. Fields
    /// are `null` where unknown (no device probe; not Linux for the host fields).
    Memory {
        run: u64,
        at: MemoryPoint,
        /// The node that just finished (`at: "node_finished"`).
        node: Option<String>,
        /// Free and total device bytes as the driver reports them (all processes).
        device_free: Option<u64>,
        device_total: Option<u64>,
        /// The run's device budget (what Veetance may hold on the device).
        device_budget: Option<u64>,
        /// Device bytes the node added at its peak, measured while it ran.
        node_peak: Option<u64>,
        /// Resident memory of this process.
        process_rss: Option<u64>,
        /// Host memory the system can still give out, and its total.
        host_available: Option<u64>,
        host_total: Option<u64>,
        /// Bytes the output cache holds per tier.
        cache_device: u64,
        cache_host: u64,
        /// Cache entries moved to host memory, moved back, and dropped so far in this run.
        offloaded: usize,
        reloaded: usize,
        dropped: usize,
    },
    RunFinished {
        run: u64,
        ok: bool,
        duration_ms: f64,
        executed: usize,
        /// Nodes reported `cached`: served from the cache, or not needed and still up to date
        /// in it.
        cached: usize,
    },
}

/// When a [`Event::Memory`] reading was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryPoint {
    RunStarted,
    NodeFinished,
    RunFinished,
}

/// Receives events. Implementations must be cheap: they are called on the engine thread.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);

    /// Whether anyone listens. The engine skips building per-node events for a sink that does
    /// not (a fully cached re-run of a large graph would otherwise spend most of its time
    /// cloning node names into events nobody reads).
    fn enabled(&self) -> bool {
        true
    }
}

/// Discards every event.
#[derive(Debug, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: &Event) {}

    fn enabled(&self) -> bool {
        false
    }
}

/// Keeps every event (for tests and for summaries).
#[derive(Debug, Default)]
pub struct CollectSink(pub Mutex<Vec<Event>>);

impl CollectSink {
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl EventSink for CollectSink {
    fn emit(&self, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

/// Calls a closure for every event.
pub struct FnSink<F: Fn(&Event) + Send + Sync>(pub F);

impl<F: Fn(&Event) + Send + Sync> EventSink for FnSink<F> {
    fn emit(&self, event: &Event) {
        (self.0)(event)
    }
}

/// Sends every event to several sinks.
pub struct FanOut<'a>(pub Vec<&'a dyn EventSink>);

impl EventSink for FanOut<'_> {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }

    fn enabled(&self) -> bool {
        self.0.iter().any(|s| s.enabled())
    }
}
