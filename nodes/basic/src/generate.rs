//! Image generators: `GradientImage` and `NoiseImage`.

use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem, Params, PortType,
    RunEnv, Value,
};

use crate::image_ops::{check_cancel, side_param, sized_image_bytes, ROWS_PER_CHECK};
use crate::rng::{mix64, unit_f32, SEED_MAX};

/// Parses `#rrggbb` (hex digits in either case) into RGB values in [0, 1].
pub fn parse_hex_color(text: &str) -> Result<[f32; 3], String> {
    let digits = text
        .strip_prefix('#')
        .filter(|d| d.len() == 6 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{text:?} is not a colour written #rrggbb (e.g. #ff8800)"))?;
    let channel = |i: usize| {
        u8::from_str_radix(&digits[i..i + 2], 16)
            .map(|v| v as f32 / 255.0)
            .map_err(|_| format!("{text:?} is not a colour written #rrggbb"))
    };
    Ok([channel(0)?, channel(2)?, channel(4)?])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Horizontal,
    Vertical,
    Diagonal,
    Radial,
}

impl Direction {
    const OPTIONS: [&'static str; 4] = ["horizontal", "vertical", "diagonal", "radial"];

    fn parse(name: &str) -> Result<Self, NodeError> {
        Ok(match name {
            "horizontal" => Direction::Horizontal,
            "vertical" => Direction::Vertical,
            "diagonal" => Direction::Diagonal,
            "radial" => Direction::Radial,
            other => {
                return Err(NodeError::failed(format!(
                    "param 'direction': {other:?} is not one of {}",
                    Self::OPTIONS.join(", ")
                )))
            }
        })
    }
}

/// Position of index `i` along an axis of `n` pixels, 0 at the first pixel and 1 at the last.
fn ramp(i: usize, n: u32) -> f32 {
    if n > 1 {
        i as f32 / (n - 1) as f32
    } else {
        0.0
    }
}

pub struct GradientImage {
    schema: NodeSchema,
}

impl Default for GradientImage {
    fn default() -> Self {
        Self::new()
    }
}

impl GradientImage {
    pub fn new() -> Self {
        GradientImage {
            schema: NodeSchema::new("GradientImage", "Gradient", "image/generate")
                .doc(
                    "An RGB image fading from `color_a` to `color_b` (mixed linearly in sRGB \
                     values): left to right, top to bottom, top-left to bottom-right, or from the \
                     centre out to the corner pixels.",
                )
                .param(side_param("width", "Width in pixels."))
                .param(side_param("height", "Height in pixels."))
                .param(ParamDef::string(
                    "color_a",
                    "#000000",
                    "Start colour, #rrggbb.",
                ))
                .param(ParamDef::string(
                    "color_b",
                    "#ffffff",
                    "End colour, #rrggbb.",
                ))
                .param(ParamDef::choice(
                    "direction",
                    &Direction::OPTIONS,
                    "horizontal",
                    "horizontal: left to right; vertical: top to bottom; diagonal: top-left to \
                     bottom-right; radial: centre to corners.",
                ))
                .output("image", PortType::Image, "The gradient (one RGB image)."),
        }
    }
}

impl NodeDef for GradientImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        ["color_a", "color_b"]
            .into_iter()
            .filter_map(|name| {
                let problem = match params.str(name) {
                    Ok(text) => parse_hex_color(text).err()?,
                    Err(e) => e.to_string(),
                };
                Some(ParamProblem {
                    param: name.into(),
                    message: problem,
                })
            })
            .collect()
    }

    /// The image it makes (one RGB image).
    fn host_need(&self, params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        sized_image_bytes(params, 1, 3)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let width = ctx.params.int("width")? as u32;
        let height = ctx.params.int("height")? as u32;
        let color = |name: &str| -> Result<[f32; 3], NodeError> {
            parse_hex_color(ctx.params.str(name)?)
                .map_err(|e| NodeError::failed(format!("param '{name}': {e}")))
        };
        let (from, to) = (color("color_a")?, color("color_b")?);
        let direction = Direction::parse(ctx.params.str("direction")?)?;

        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
        // Measured to the corner pixels' centres, so that they are exactly `color_b`, as the
        // last pixel is for the other directions.
        let max_radius = ((cx - 0.5).powi(2) + (cy - 0.5).powi(2))
            .sqrt()
            .max(f32::EPSILON);
        let columns: Vec<f32> = (0..width as usize).map(|x| ramp(x, width)).collect();
        let mut data = vec![0.0f32; width as usize * height as usize * 3];
        for (y, row) in data.chunks_exact_mut(width as usize * 3).enumerate() {
            if y % ROWS_PER_CHECK == 0 {
                check_cancel(ctx.cancel)?;
            }
            let ty = ramp(y, height);
            let dy = y as f32 + 0.5 - cy;
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let t = match direction {
                    Direction::Horizontal => columns[x],
                    Direction::Vertical => ty,
                    Direction::Diagonal => (columns[x] + ty) * 0.5,
                    Direction::Radial => {
                        let dx = x as f32 + 0.5 - cx;
                        ((dx * dx + dy * dy).sqrt() / max_radius).min(1.0)
                    }
                };
                for k in 0..3 {
                    px[k] = from[k] + (to[k] - from[k]) * t;
                }
            }
        }
        let image = Image::new(1, height, width, 3, data)
            .map_err(|e| NodeError::failed(format!("gradient: {e}")))?;
        Ok(vec![Value::Image(image)])
    }
}

/// The lattice value of value noise at integer point (`ix`, `iy`) for a seed and channel.
fn lattice(seed_channel: u64, ix: i64, iy: i64) -> f32 {
    unit_f32(mix64(mix64(seed_channel ^ ix as u64) ^ iy as u64))
}

/// Smoothstep, so that the noise has no visible creases at lattice lines.
fn fade(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

pub struct NoiseImage {
    schema: NodeSchema,
}

impl Default for NoiseImage {
    fn default() -> Self {
        Self::new()
    }
}

impl NoiseImage {
    pub fn new() -> Self {
        NoiseImage {
            schema: NodeSchema::new("NoiseImage", "Noise", "image/generate")
                .doc(
                    "Value noise: random values on a grid `scale` pixels apart, smoothly \
                     interpolated between. The same seed and params always give the same image, \
                     on every machine.",
                )
                .param(side_param("width", "Width in pixels."))
                .param(side_param("height", "Height in pixels."))
                .param(ParamDef::int(
                    "seed",
                    0,
                    0,
                    SEED_MAX,
                    "The noise pattern; link a Seed node to vary it per run.",
                ))
                .param(ParamDef::float(
                    "scale",
                    32.0,
                    1.0,
                    4096.0,
                    1.0,
                    "Size of the noise features in pixels: 1 gives independent pixels (white \
                     noise), larger values give smoother blobs.",
                ))
                .param(ParamDef::bool(
                    "color",
                    false,
                    "Independent noise per channel (coloured) instead of one gray pattern.",
                ))
                .output("image", PortType::Image, "The noise (one RGB image)."),
        }
    }
}

impl NodeDef for NoiseImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    /// The image it makes (one RGB image).
    fn host_need(&self, params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        sized_image_bytes(params, 1, 3)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let width = ctx.params.int("width")? as u32;
        let height = ctx.params.int("height")? as u32;
        let seed = ctx.params.int("seed")? as u64;
        let scale = ctx.params.float("scale")?.max(1.0);
        let planes = if ctx.params.bool("color")? { 3 } else { 1 };

        // Per column: lattice cell and eased offset; the same for every row.
        let (w, h) = (width as usize, height as usize);
        let mut cell_x = Vec::with_capacity(w);
        let mut fade_x = Vec::with_capacity(w);
        for x in 0..w {
            let fx = x as f64 / scale;
            cell_x.push(fx.floor() as i64);
            fade_x.push(fade((fx - fx.floor()) as f32));
        }
        let cells = cell_x.last().map_or(0, |&c| c as usize) + 2;
        // The two lattice rows around the current pixel row, per plane, refilled when the row
        // crosses a lattice line.
        let mut upper = vec![0.0f32; cells * planes];
        let mut lower = vec![0.0f32; cells * planes];
        let plane_seed: Vec<u64> = (0..planes as u64)
            .map(|p| mix64(seed ^ mix64(p.wrapping_add(0x5EED))))
            .collect();
        let mut filled_row = None;

        let mut data = vec![0.0f32; w * h * 3];
        for (y, row) in data.chunks_exact_mut(w * 3).enumerate() {
            if y % ROWS_PER_CHECK == 0 {
                check_cancel(ctx.cancel)?;
            }
            let fy = y as f64 / scale;
            let iy = fy.floor() as i64;
            let ty = fade((fy - fy.floor()) as f32);
            if filled_row != Some(iy) {
                for (p, &ps) in plane_seed.iter().enumerate() {
                    for c in 0..cells {
                        upper[p * cells + c] = lattice(ps, c as i64, iy);
                        lower[p * cells + c] = lattice(ps, c as i64, iy + 1);
                    }
                }
                filled_row = Some(iy);
            }
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let (c, tx) = (cell_x[x] as usize, fade_x[x]);
                for p in 0..planes {
                    let (u, l) = (&upper[p * cells..], &lower[p * cells..]);
                    let top = u[c] + (u[c + 1] - u[c]) * tx;
                    let bottom = l[c] + (l[c + 1] - l[c]) * tx;
                    px[p] = top + (bottom - top) * ty;
                }
                if planes == 1 {
                    px[1] = px[0];
                    px[2] = px[0];
                }
            }
        }
        let image = Image::new(1, height, width, 3, data)
            .map_err(|e| NodeError::failed(format!("noise: {e}")))?;
        Ok(vec![Value::Image(image)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_colours_parse_strictly() {
        assert_eq!(parse_hex_color("#ff0000").unwrap(), [1.0, 0.0, 0.0]);
        assert_eq!(parse_hex_color("#00FF00").unwrap(), [0.0, 1.0, 0.0]);
        for bad in ["ff0000", "#fff", "#gg0000", "#ff00001", "", "#ff00é"] {
            assert!(parse_hex_color(bad).is_err(), "{bad:?}");
        }
    }
}
