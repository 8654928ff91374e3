//! Primitive constants (`Int`, `Float`, `Bool`, `String`) and `Seed`.

use veetance_core::{
    ExecContext, Freshness, NodeDef, NodeError, NodeSchema, ParamDef, Params, PortType, RunEnv,
    Value,
};

use crate::rng::{fresh_seed, SEED_MAX};

const CATEGORY: &str = "primitive";

/// A constant: its `value` param, passed to its one output. The param check has already coerced
/// the value to the declared type, so execution only copies it.
pub struct Primitive {
    schema: NodeSchema,
}

impl Primitive {
    fn new(type_name: &str, ty: PortType, param: ParamDef, doc: &str) -> Self {
        Primitive {
            schema: NodeSchema::new(type_name, type_name, CATEGORY)
                .doc(doc)
                .param(param)
                .output("value", ty, "The value of the `value` param."),
        }
    }

    pub fn int() -> Self {
        Self::new(
            "Int",
            PortType::Int,
            ParamDef::int("value", 0, i64::MIN, i64::MAX, "The integer to output."),
            "A constant integer, to feed one value into several nodes' params.",
        )
    }

    pub fn float() -> Self {
        Self::new(
            "Float",
            PortType::Float,
            ParamDef::float(
                "value",
                0.0,
                f64::MIN,
                f64::MAX,
                0.01,
                "The number to output (finite).",
            ),
            "A constant number, to feed one value into several nodes' params.",
        )
    }

    pub fn bool() -> Self {
        Self::new(
            "Bool",
            PortType::Bool,
            ParamDef::bool("value", false, "The flag to output."),
            "A constant true/false flag.",
        )
    }

    pub fn string() -> Self {
        Self::new(
            "String",
            PortType::String,
            ParamDef::text("value", "", "The text to output; may span several lines."),
            "A constant text, such as a prompt shared by several nodes.",
        )
    }
}

impl NodeDef for Primitive {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let value = ctx
            .params
            .get("value")
            .cloned()
            .ok_or_else(|| NodeError::failed("param 'value' is not declared"))?;
        Ok(vec![value])
    }
}

/// How `Seed` turns its `seed` param into its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeedControl {
    Fixed,
    Increment,
    Randomize,
}

impl SeedControl {
    const OPTIONS: [&'static str; 3] = ["fixed", "increment", "randomize"];

    fn from_params(params: &Params) -> Result<Self, NodeError> {
        match params.str("control")? {
            "fixed" => Ok(SeedControl::Fixed),
            "increment" => Ok(SeedControl::Increment),
            "randomize" => Ok(SeedControl::Randomize),
            other => Err(NodeError::failed(format!(
                "param 'control': {other:?} is not one of {}",
                Self::OPTIONS.join(", ")
            ))),
        }
    }
}

/// A seed for samplers and noise: fixed, stepped by one every run, or random every run.
pub struct Seed {
    schema: NodeSchema,
}

impl Default for Seed {
    fn default() -> Self {
        Self::new()
    }
}

impl Seed {
    pub fn new() -> Self {
        let doc = format!(
            "A seed for samplers and noise. `fixed` outputs `seed`; `increment` outputs seed + the \
             engine's run index (0 on the first run, wrapping past {SEED_MAX}), so every run gets \
             the next seed; `randomize` outputs a fresh random seed in 0..={SEED_MAX} on every \
             run. A randomized seed is executed every run, but the engine keys its output by \
             content, so nodes downstream still hit the cache whenever the value repeats."
        );
        Seed {
            schema: NodeSchema::new("Seed", "Seed", CATEGORY)
                .doc(&doc)
                .param(ParamDef::int(
                    "seed",
                    0,
                    0,
                    SEED_MAX,
                    "The seed (0 to 2^53-1, the largest integer JSON tools keep exactly).",
                ))
                .param(
                    ParamDef::choice(
                        "control",
                        &SeedControl::OPTIONS,
                        "fixed",
                        "fixed: always `seed`; increment: `seed` + run index; randomize: a new \
                         random seed each run. A constant only, because it decides whether the \
                         node is cached before anything runs.",
                    )
                    .constant(),
                )
                .output("seed", PortType::Int, "The seed for this run."),
        }
    }
}

/// `seed + run_index`, wrapping within `0..=SEED_MAX`.
fn incremented(seed: i64, run_index: u64) -> i64 {
    let modulus = SEED_MAX as u64 + 1;
    ((seed as u64 % modulus + run_index % modulus) % modulus) as i64
}

impl NodeDef for Seed {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        match SeedControl::from_params(params) {
            Ok(SeedControl::Fixed) => Freshness::Pure,
            Ok(SeedControl::Increment) => {
                Freshness::Fingerprint(env.run_index.to_le_bytes().into())
            }
            // An unknown mode fails in execute; never serve it from the cache meanwhile.
            Ok(SeedControl::Randomize) | Err(_) => Freshness::Always,
        }
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let seed = ctx.params.int("seed")?;
        let out = match SeedControl::from_params(&ctx.params)? {
            SeedControl::Fixed => seed,
            SeedControl::Increment => incremented(seed, ctx.env.run_index),
            SeedControl::Randomize => fresh_seed(),
        };
        Ok(vec![Value::Int(out)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_wraps_within_the_seed_range() {
        assert_eq!(incremented(5, 3), 8);
        assert_eq!(incremented(SEED_MAX, 1), 0);
        assert_eq!(
            incremented(SEED_MAX, u64::MAX),
            incremented(SEED_MAX, u64::MAX)
        );
        assert!((0..=SEED_MAX).contains(&incremented(SEED_MAX - 1, u64::MAX)));
    }
}
