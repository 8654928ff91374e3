//! The facade over every Veetance node family: one call registers them all, for the CLI, the
//! editor and tests.
//!
//! To add a family: depend on its crate in `Cargo.toml` and add a row to [`FAMILIES`].

use std::sync::Arc;

use veetance_core::{DeviceProbe, NodeRegistry};

/// A node family's `register` function.
pub type RegisterFn = fn(&mut NodeRegistry);

/// Every node family, by name, with its registration function.
pub const FAMILIES: &[(&str, RegisterFn)] = &[
    ("basic", veetance_nodes_basic::register),
    ("flux2", veetance_nodes_flux2::register),
    ("comfy", veetance_nodes_comfy::register),
];

/// Registers every node of every family.
///
/// # Panics
/// If two families register the same node type name (a programming error, caught by this
/// crate's tests).
pub fn register_all(reg: &mut NodeRegistry) {
    for (_, register) in FAMILIES {
        register(reg);
    }
}

/// A registry holding every node.
pub fn registry() -> NodeRegistry {
    let mut reg = NodeRegistry::new();
    register_all(&mut reg);
    reg
}

/// The device-memory probe for engines that run these nodes: the first CUDA GPU's free and
/// total memory as the driver reports them (`veetance_models::device`). `None` in builds without
/// the `cuda` feature or on machines without a GPU; the engine then budgets by its own byte
/// accounting only. Its [`DeviceProbe::release`] trims CUDA's allocator pool between nodes.
pub fn device_probe() -> Option<Arc<dyn DeviceProbe>> {
    let probe = veetance_models::device::cuda_memory_probe()?;
    Some(Arc::new(CudaDeviceProbe(probe)))
}

struct CudaDeviceProbe(veetance_models::device::CudaProbe);

impl DeviceProbe for CudaDeviceProbe {
    fn memory(&self) -> Option<veetance_core::memory::DeviceMemory> {
        self.0
            .memory()
            .map(|(free, total)| veetance_core::memory::DeviceMemory { free, total })
    }

    fn release(&self) -> bool {
        self.0.release()
    }
}
