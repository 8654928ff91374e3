//! Every linear layer of the FLUX.2 transformer by its BFL name, for LoRA patches.
//!
//! A child module of `model` (declared there with `#[path]`), like `stream.rs`, so that it sees the
//! layers' private fields. The names are the checkpoint's without `.weight`
//! (`double_blocks.0.img_attn.qkv`, `single_blocks.3.linear1`, `final_layer.linear`).

use crate::qlinear::QLinear;

use super::{Flux2Transformer, Mlp, MlpEmbedder, Modulation, SelfAttention};

type CResult<T> = candle_core::Result<T>;

/// `f(name, layer)`: `Some(new)` replaces the layer, `None` keeps it (shared, not copied).
pub type LinearFn<'a> = &'a mut dyn FnMut(&str, &QLinear) -> CResult<Option<QLinear>>;

fn visit(name: &str, l: &mut QLinear, f: LinearFn<'_>) -> CResult<()> {
    if let Some(new) = f(name, l)? {
        *l = new;
    }
    Ok(())
}

impl Modulation {
    fn visit(&mut self, name: &str, f: LinearFn<'_>) -> CResult<()> {
        visit(&format!("{name}.lin"), &mut self.lin, f)
    }
}

impl Mlp {
    fn visit(&mut self, name: &str, f: LinearFn<'_>) -> CResult<()> {
        visit(&format!("{name}.0"), &mut self.lin_in, f)?;
        visit(&format!("{name}.2"), &mut self.lin_out, f)
    }
}

impl SelfAttention {
    fn visit(&mut self, name: &str, f: LinearFn<'_>) -> CResult<()> {
        visit(&format!("{name}.qkv"), &mut self.qkv, f)?;
        visit(&format!("{name}.proj"), &mut self.proj, f)
    }
}

impl MlpEmbedder {
    fn visit(&mut self, name: &str, f: LinearFn<'_>) -> CResult<()> {
        visit(&format!("{name}.in_layer"), &mut self.in_layer, f)?;
        visit(&format!("{name}.out_layer"), &mut self.out_layer, f)
    }
}

impl Flux2Transformer {
    /// A copy of this model whose linear layers are `f(name, layer)` where that gives one; every
    /// other tensor is shared with `self` (candle tensors are reference-counted), so the copy
    /// costs only the layers replaced.
    pub fn map_linears(&self, f: LinearFn<'_>) -> CResult<Self> {
        let mut m = self.clone();
        visit("img_in", &mut m.img_in, f)?;
        visit("txt_in", &mut m.txt_in, f)?;
        m.time_in.visit("time_in", f)?;
        m.double_stream_modulation_img
            .visit("double_stream_modulation_img", f)?;
        m.double_stream_modulation_txt
            .visit("double_stream_modulation_txt", f)?;
        m.single_stream_modulation
            .visit("single_stream_modulation", f)?;
        for (i, b) in m.double_blocks.iter_mut().enumerate() {
            b.img_attn
                .visit(&format!("double_blocks.{i}.img_attn"), f)?;
            b.txt_attn
                .visit(&format!("double_blocks.{i}.txt_attn"), f)?;
            b.img_mlp.visit(&format!("double_blocks.{i}.img_mlp"), f)?;
            b.txt_mlp.visit(&format!("double_blocks.{i}.txt_mlp"), f)?;
        }
        for (i, b) in m.single_blocks.iter_mut().enumerate() {
            visit(&format!("single_blocks.{i}.linear1"), &mut b.linear1, f)?;
            visit(&format!("single_blocks.{i}.linear2"), &mut b.linear2, f)?;
        }
        visit("final_layer.adaLN_modulation.1", &mut m.final_adaln, f)?;
        visit("final_layer.linear", &mut m.final_linear, f)?;
        // The host stage stays shared: blocks streamed from host memory are the same host tensors,
        // already page-locked by the base model's runs (the small LoRA factors it locks live as
        // long as the base model).
        Ok(m)
    }
}
