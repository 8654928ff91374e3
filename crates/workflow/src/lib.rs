//! The `.ron` workflow format.
//!
//! A workflow file is a versioned document, kept apart from the engine's runtime types:
//!
//! ```ron
//! (
//!     version: 1,
//!     nodes: [
//!         (id: "gradient", type: "GradientImage", params: {"width": 512}),
//!         (id: "save", type: "SaveImage"),
//!     ],
//!     links: [
//!         (from: ("gradient", "image"), to: ("save", "images")),
//!     ],
//!     layout: Some((positions: {"gradient": (0.0, 0.0), "save": (320.0, 0.0)})),
//! )
//! ```
//!
//! Nodes have stable string ids; links join ports by (node id, port name); params not written
//! take their defaults; the optional `layout` section (editor positions and groups) is ignored by
//! headless runs. A file of a newer version is refused by name; an older one is brought up to
//! date by the explicit functions in [`MIGRATIONS`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use veetance_core::{Graph, GraphError, Link, PortRef, Value};

/// Writes `bytes` to `path` so that `path` is always either what it was or all of `bytes`: they
/// go to a new hidden temporary file beside it (`.<name>.<pid>.<n>.tmp`), are synced to disk,
/// and the file is renamed over `path`. On an error (a full disk, say) the temporary file is
/// removed and `path` is untouched; a process killed mid-write leaves at most a `.tmp` file,
/// which nothing reads as a workflow. Workflow saves and the editor's autosave use it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workflow.ron".into());
    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The version this build writes and reads natively.
pub const CURRENT_VERSION: u32 = 1;

/// A step that turns a document of version `from` into one of version `from + 1`.
pub type Migration = fn(ron::Value) -> Result<ron::Value, String>;

/// Migrations from each older version, in order: `MIGRATIONS[i]` takes version `i + 1` files
/// (version 1 is the first release of the format, so there are none yet). Every format change
/// adds one function here rather than accepting two shapes in the types below.
pub const MIGRATIONS: &[Migration] = &[];

/// A workflow document, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    pub version: u32,
    /// A free text shown by the editor and `veetance validate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub nodes: Vec<NodeEntry>,
    #[serde(default)]
    pub links: Vec<LinkEntry>,
    /// Editor state; headless runs ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
}

/// A param constant as written in a file. Choices are written as strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEntry {
    /// (node id, output port)
    pub from: (String, String),
    /// (node id, input port or linkable param)
    pub to: (String, String),
}

/// Editor layout: node positions and visual groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    #[serde(default)]
    pub positions: BTreeMap<String, (f32, f32)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub title: String,
    /// x, y, width, height in canvas units.
    pub rect: (f32, f32, f32, f32),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// Why a workflow could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{origin}: cannot read the file: {source}")]
    Io {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: workflow format version {found} is newer than this Veetance understands (up to {supported}); update Veetance to open it")]
    NewerVersion {
        origin: String,
        found: u32,
        supported: u32,
    },
    #[error("{origin}: migrating from format version {from}: {message}")]
    Migration {
        origin: String,
        from: u32,
        message: String,
    },
    #[error("{origin}: {}", .errors.join("; "))]
    Graph { origin: String, errors: Vec<String> },
}

impl WorkflowError {
    fn parse(origin: &str, e: ron::error::SpannedError) -> Self {
        WorkflowError::Parse {
            origin: origin.into(),
            line: e.span.start.line,
            column: e.span.start.col,
            message: e.code.to_string(),
        }
    }
}

/// Only the version field, read first so that a newer file is refused by its number before
/// its shape is judged.
#[derive(Deserialize)]
struct VersionProbe {
    /// 0 when missing: version 0 never existed.
    #[serde(default)]
    version: u32,
}

impl WorkflowFile {
    /// Parses `.ron` text. `origin` (a file name) prefixes every error message.
    pub fn parse(text: &str, origin: &str) -> Result<Self, WorkflowError> {
        Self::parse_with(text, origin, MIGRATIONS)
    }

    /// Parses with an explicit migration table (for tests of the migration chain).
    pub fn parse_with(
        text: &str,
        origin: &str,
        migrations: &[Migration],
    ) -> Result<Self, WorkflowError> {
        let current = migrations.len() as u32 + 1;
        let probe: VersionProbe =
            ron::from_str(text).map_err(|e| WorkflowError::parse(origin, e))?;
        let version = probe.version;
        if version == 0 {
            return Err(WorkflowError::Parse {
                origin: origin.into(),
                line: 1,
                column: 1,
                message: "missing field `version` (the first entry should be `version: 1,`)".into(),
            });
        }
        if version > current {
            return Err(WorkflowError::NewerVersion {
                origin: origin.into(),
                found: version,
                supported: current,
            });
        }
        if version == current {
            return ron::from_str(text).map_err(|e| WorkflowError::parse(origin, e));
        }
        let mut doc: ron::Value =
            ron::from_str(text).map_err(|e| WorkflowError::parse(origin, e))?;
        for from in version..current {
            let step = migrations[(from - 1) as usize];
            doc = step(doc).map_err(|message| WorkflowError::Migration {
                origin: origin.into(),
                from,
                message,
            })?;
        }
        let mut file: WorkflowFile = doc.into_rust().map_err(|e| WorkflowError::Migration {
            origin: origin.into(),
            from: version,
            message: e.to_string(),
        })?;
        file.version = current;
        Ok(file)
    }

    /// Reads and parses a `.ron` file.
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| WorkflowError::Io {
            origin: origin.clone(),
            source,
        })?;
        Self::parse(&text, &origin)
    }

    /// The canonical text of this workflow: what `save` writes and what round-trips unchanged.
    pub fn to_ron(&self) -> String {
        let config = ron::ser::PrettyConfig::new()
            .depth_limit(2)
            .indentor("    ")
            .separate_tuple_members(false)
            .struct_names(false);
        let mut text = ron::ser::to_string_pretty(self, config)
            .expect("workflow types always serialize to RON");
        text.push('\n');
        text
    }

    /// Writes the canonical text to `path` through a temporary file and a rename
    /// ([`write_atomic`]), so a failure or a crash never leaves a partly written workflow behind.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, self.to_ron().as_bytes())
    }

    /// Builds the engine graph. Problems that make a graph impossible (a duplicate or invalid
    /// id) are errors; everything else (unknown types, bad links) is left for validation.
    pub fn to_graph(&self, origin: &str) -> Result<Graph, WorkflowError> {
        let mut graph = Graph::new();
        let mut errors = Vec::new();
        for node in &self.nodes {
            let params = node
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_value()))
                .collect();
            if let Err(e) = graph.add_node(&node.id, &node.type_name, params) {
                errors.push(match e {
                    GraphError::DuplicateId(id) => format!("node id {id:?} is used twice"),
                    other => other.to_string(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(WorkflowError::Graph {
                origin: origin.into(),
                errors,
            });
        }
        for link in &self.links {
            graph.add_link(Link {
                from: PortRef::new(&link.from.0, &link.from.1),
                to: PortRef::new(&link.to.0, &link.to.1),
            });
        }
        Ok(graph)
    }

    /// Builds a document from an engine graph (params as set on the nodes, links in graph
    /// order) and an optional layout.
    pub fn from_graph(graph: &Graph, layout: Option<Layout>) -> Self {
        WorkflowFile {
            version: CURRENT_VERSION,
            description: None,
            nodes: graph
                .nodes()
                .map(|n| NodeEntry {
                    id: n.id.clone(),
                    type_name: n.type_name.clone(),
                    params: n
                        .params
                        .iter()
                        .filter_map(|(k, v)| ParamValue::from_value(v).map(|p| (k.clone(), p)))
                        .collect(),
                })
                .collect(),
            links: graph
                .links()
                .into_iter()
                .map(|l| LinkEntry {
                    from: (l.from.node, l.from.port),
                    to: (l.to.node, l.to.port),
                })
                .collect(),
            layout,
        }
    }
}

impl ParamValue {
    pub fn to_value(&self) -> Value {
        match self {
            ParamValue::Bool(b) => Value::Bool(*b),
            ParamValue::Int(i) => Value::Int(*i),
            ParamValue::Float(f) => Value::Float(*f),
            ParamValue::String(s) => Value::string(s.as_str()),
        }
    }

    /// The file form of a scalar value; `None` for images and objects, which are never params.
    pub fn from_value(value: &Value) -> Option<Self> {
        Some(match value {
            Value::Bool(b) => ParamValue::Bool(*b),
            Value::Int(i) => ParamValue::Int(*i),
            Value::Float(f) => ParamValue::Float(*f),
            Value::String(s) | Value::Choice(s) => ParamValue::String(s.to_string()),
            Value::Image(_) | Value::Object(_) => return None,
        })
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_value().fmt(f)
    }
}
