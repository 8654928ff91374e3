//! `PreviewDemo`, a model-free node that behaves like a sampler for the editor: it takes a
//! number of steps, reports progress and a preview at every step (noise resolving into a
//! gradient), and stops when the run is cancelled.
//!
//! It is not in the default registry; the tests and the screenshot example register it with
//! [`register_demo`] to drive the progress, preview and overlay UI until the FLUX.2 sampler
//! node exists.

use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeRegistry, NodeSchema, ParamDef, PortType, Value,
};

/// The category of nodes that exist for tests: never offered by a release build's palette or
/// add-node menu ([`crate::canvas::offered`]), even when registered.
pub const TEST_CATEGORY: &str = "testing";

pub struct PreviewDemo {
    schema: NodeSchema,
}

impl Default for PreviewDemo {
    fn default() -> Self {
        PreviewDemo {
            schema: NodeSchema::new("PreviewDemo", "Preview Demo (sampler stand-in)", TEST_CATEGORY)
                .doc("Pretends to sample: `steps` steps of `step_ms` each, with progress and a preview at every step. Checks for cancellation between steps.")
                .param(ParamDef::int("steps", 20, 1, 1000, "How many steps."))
                .param(ParamDef::int("step_ms", 25, 0, 10_000, "Milliseconds each step takes."))
                .param(ParamDef::int("size", 64, 8, 1024, "Width and height of the image."))
                .output("image", PortType::Image, "The final image."),
        }
    }
}

/// The image at `t` in 0..=1: random noise fading into an indigo-to-pink gradient.
pub fn demo_image(size: u32, t: f32, seed: u64) -> Image {
    let mut data = Vec::with_capacity((size * size * 3) as usize);
    let mut state = seed;
    for y in 0..size {
        for x in 0..size {
            state = crate::canvas::splitmix(state);
            let noise = (state & 0xffff) as f32 / 65535.0;
            let u = x as f32 / size as f32;
            let v = y as f32 / size as f32;
            let g = [0.29 + (1.0 - 0.29) * u, 0.41 * v, 0.51 + (0.71 - 0.51) * u];
            for c in g {
                data.push(noise * (1.0 - t) + c * t);
            }
        }
    }
    Image::new(1, size, size, 3, data).expect("sizes match")
}

impl NodeDef for PreviewDemo {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let steps = ctx.params.int("steps")?.max(1) as u64;
        let step_ms = ctx.params.int("step_ms")?.max(0) as u64;
        let size = ctx.params.int("size")?.clamp(8, 1024) as u32;
        for step in 1..=steps {
            ctx.check_cancelled()?;
            std::thread::sleep(std::time::Duration::from_millis(step_ms));
            ctx.progress(step, steps);
            ctx.preview(demo_image(size, step as f32 / steps as f32, step));
        }
        Ok(vec![Value::Image(demo_image(size, 1.0, 0))])
    }
}

/// Registers [`PreviewDemo`].
pub fn register_demo(registry: &mut NodeRegistry) {
    registry.add(PreviewDemo::default());
}
