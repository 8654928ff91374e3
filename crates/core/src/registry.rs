//! The registry of node types. Registration is explicit: each node crate exports
//! `pub fn register(reg: &mut NodeRegistry)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::node::NodeDef;
use crate::schema::NodeSchema;

#[derive(Clone, Default)]
pub struct NodeRegistry {
    defs: BTreeMap<String, Arc<dyn NodeDef>>,
}

impl std::fmt::Debug for NodeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.defs.keys()).finish()
    }
}

impl NodeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a node type.
    ///
    /// # Panics
    /// If a node type of the same name is already registered: two crates claiming one name is
    /// a programming error, caught by the registry tests of the node crates.
    pub fn add(&mut self, def: impl NodeDef) {
        let name = def.schema().type_name.clone();
        assert!(
            !self.defs.contains_key(&name),
            "node type {name:?} registered twice"
        );
        self.defs.insert(name, Arc::new(def));
    }

    pub fn get(&self, type_name: &str) -> Option<&Arc<dyn NodeDef>> {
        self.defs.get(type_name)
    }

    /// Every schema, sorted by type name.
    pub fn schemas(&self) -> impl Iterator<Item = &NodeSchema> + '_ {
        self.defs.values().map(|d| d.schema())
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Type names close to `name` (same letters ignoring case, or one contains the other), to
    /// suggest in "unknown node type" errors.
    pub fn suggest(&self, name: &str) -> Option<&str> {
        let lower = name.to_ascii_lowercase();
        self.defs
            .keys()
            .find(|k| {
                let k = k.to_ascii_lowercase();
                k == lower || (lower.len() >= 4 && (k.contains(&lower) || lower.contains(&k)))
            })
            .map(String::as_str)
    }
}
