//! The run history: every run the editor queued, with the workflow exactly as it ran, how it
//! ended and the images it made, so that any of them can be looked at again and restored. A
//! batch queues several runs of the document at once, each with the next seed.

use std::collections::VecDeque;

use veetance_core::NodeRegistry;
use veetance_workflow::{ParamValue, WorkflowFile};

/// Entries kept; the oldest finished ones go first (queued and running ones always stay).
pub const HISTORY_MAX: usize = 100;

/// Most runs one batch may queue.
pub const BATCH_MAX: u32 = 64;

/// How a history entry's run went.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    Queued,
    Running,
    Finished,
    Failed(String),
    Cancelled,
}

/// One queued or finished run.
pub struct HistoryEntry {
    /// 1 for the editor's first run, counting up.
    pub number: u64,
    /// The workflow as it ran (its seeds included): what Restore puts back.
    pub workflow: WorkflowFile,
    /// What sets it apart in a batch ("seed 8"), or empty.
    pub label: String,
    pub state: RunState,
    /// Images its output nodes wrote: (node, path, texture).
    pub outputs: Vec<(String, String, egui::TextureHandle)>,
}

impl HistoryEntry {
    /// One line for the list: "#3 seed 8: finished".
    pub fn title(&self) -> String {
        let state = match &self.state {
            RunState::Queued => "queued".to_string(),
            RunState::Running => "running".to_string(),
            RunState::Finished => "finished".to_string(),
            RunState::Failed(e) => format!("failed: {e}"),
            RunState::Cancelled => "cancelled".to_string(),
        };
        if self.label.is_empty() {
            format!("#{} {state}", self.number)
        } else {
            format!("#{} {}: {state}", self.number, self.label)
        }
    }
}

/// The history and the runs waiting their turn.
#[derive(Default)]
pub struct RunHistory {
    /// Oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Numbers of the queued entries, in the order they run.
    pending: VecDeque<u64>,
    next_number: u64,
}

impl RunHistory {
    /// Adds a queued run; returns its number.
    pub fn queue(&mut self, workflow: WorkflowFile, label: String) -> u64 {
        self.next_number += 1;
        let number = self.next_number;
        self.entries.push(HistoryEntry {
            number,
            workflow,
            label,
            state: RunState::Queued,
            outputs: Vec::new(),
        });
        self.pending.push_back(number);
        self.trim();
        number
    }

    /// The next queued run, taken off the queue.
    pub fn take_next(&mut self) -> Option<u64> {
        self.pending.pop_front()
    }

    /// Runs waiting their turn.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drops every queued run (marked cancelled); returns how many there were.
    pub fn cancel_pending(&mut self) -> usize {
        let n = self.pending.len();
        for number in std::mem::take(&mut self.pending) {
            if let Some(e) = self.get_mut(number) {
                e.state = RunState::Cancelled;
            }
        }
        n
    }

    pub fn get(&self, number: u64) -> Option<&HistoryEntry> {
        self.entries.iter().find(|e| e.number == number)
    }

    pub fn get_mut(&mut self, number: u64) -> Option<&mut HistoryEntry> {
        self.entries.iter_mut().find(|e| e.number == number)
    }

    fn trim(&mut self) {
        while self.entries.len() > HISTORY_MAX {
            let Some(i) = self
                .entries
                .iter()
                .position(|e| !matches!(e.state, RunState::Queued | RunState::Running))
            else {
                break;
            };
            self.entries.remove(i);
        }
    }
}

/// Whether `param` of a node of `type_name` is a seed: an integer param named `seed` or
/// `noise_seed`, or one followed by ComfyUI's `control_after_generate` widget.
fn is_seed(registry: &NodeRegistry, type_name: &str, param: &str) -> bool {
    let flagged = registry.get(type_name).is_some_and(|def| {
        def.schema()
            .params
            .iter()
            .any(|p| p.name == param && p.control_after_generate)
    });
    flagged || param == "seed" || param == "noise_seed"
}

/// The largest value of an integer param, from its schema (2^53 - 1 when unknown).
fn seed_max(registry: &NodeRegistry, type_name: &str, param: &str) -> i64 {
    registry
        .get(type_name)
        .and_then(|def| {
            def.schema()
                .params
                .iter()
                .find(|p| p.name == param)
                .and_then(|p| match p.kind {
                    veetance_core::ParamKind::Int { max, .. } => Some(max),
                    _ => None,
                })
        })
        .unwrap_or((1 << 53) - 1)
}

/// `file` with every seed param moved on by `offset` (wrapping within the param's range), and
/// seed nodes that pick their own seed (`control`: increment or randomize) set to `fixed`, so
/// that the file says exactly which seed the run used. Returns the label of the change ("seed
/// 8", "seeds 8, 12") or `None` when the workflow has no seed to vary.
pub fn with_seed_offset(
    file: &WorkflowFile,
    offset: u64,
    registry: &NodeRegistry,
) -> (WorkflowFile, Option<String>) {
    let mut out = file.clone();
    let mut seeds = Vec::new();
    for node in &mut out.nodes {
        let names: Vec<String> = node
            .params
            .iter()
            .filter(|(name, v)| {
                matches!(v, ParamValue::Int(_)) && is_seed(registry, &node.type_name, name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            let max = seed_max(registry, &node.type_name, &name).max(0);
            if let Some(ParamValue::Int(v)) = node.params.get_mut(&name) {
                let modulus = max as u128 + 1;
                let next = ((*v).max(0) as u128 + offset as u128) % modulus;
                *v = next as i64;
                seeds.push(*v);
            }
            if let Some(ParamValue::String(control)) = node.params.get_mut("control") {
                *control = "fixed".into();
            }
        }
    }
    let label = match seeds.as_slice() {
        [] => None,
        [one] => Some(format!("seed {one}")),
        many => Some(format!(
            "seeds {}",
            many.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    (out, label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> WorkflowFile {
        WorkflowFile::parse(text, "test").unwrap()
    }

    #[test]
    fn a_seed_node_gets_a_fixed_next_seed_wrapping_at_its_max() {
        let registry = crate::node_registry();
        let max = (1i64 << 53) - 1;
        let base = file(&format!(
            r#"(version: 1, nodes: [(id: "s", type: "Seed", params: {{"seed": {max}, "control": "increment"}})])"#
        ));
        let (next, label) = with_seed_offset(&base, 2, &registry);
        let node = &next.nodes[0];
        assert_eq!(node.params["seed"], ParamValue::Int(1));
        assert_eq!(node.params["control"], ParamValue::String("fixed".into()));
        assert_eq!(label.as_deref(), Some("seed 1"));
        // Offset 0 keeps the seed and still fixes it.
        let (same, _) = with_seed_offset(&base, 0, &registry);
        assert_eq!(same.nodes[0].params["seed"], ParamValue::Int(max));
    }

    #[test]
    fn a_workflow_without_seeds_is_unchanged() {
        let registry = crate::node_registry();
        let base = file(
            r##"(version: 1, nodes: [(id: "g", type: "GradientImage", params: {"width": 64})])"##,
        );
        let (next, label) = with_seed_offset(&base, 3, &registry);
        assert_eq!(next, base);
        assert_eq!(label, None);
    }

    #[test]
    fn queued_and_running_entries_outlive_the_trim() {
        let mut h = RunHistory::default();
        let wf = file("(version: 1, nodes: [])");
        for _ in 0..HISTORY_MAX + 10 {
            h.queue(wf.clone(), String::new());
        }
        // All still queued: none may go.
        assert_eq!(h.entries.len(), HISTORY_MAX + 10);
        for _ in 0..20 {
            let number = h.take_next().unwrap();
            h.get_mut(number).unwrap().state = RunState::Finished;
        }
        h.queue(wf, String::new());
        assert_eq!(h.entries.len(), HISTORY_MAX);
        assert_eq!(h.entries[0].number, 12, "the oldest finished went first");
        assert_eq!(h.cancel_pending(), HISTORY_MAX + 11 - 20);
    }
}
