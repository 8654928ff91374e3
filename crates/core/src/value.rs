//! Port types and the values that flow along links.
//!
//! Small values (numbers, strings, choices) and images live here as plain data. Everything
//! heavier or model-specific (latents, conditioning, model handles) travels as an [`Object`]:
//! a type tag plus a shared, type-erased [`Payload`] that reports its own memory use. This keeps
//! the core free of any tensor library; the node crates wrap their candle tensors in payloads.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The type of a port or param. Two ports can be linked only if their types are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PortType {
    Int,
    Float,
    Bool,
    String,
    /// One of a fixed list of named options; carried as a string.
    Choice,
    Image,
    Latent,
    Conditioning,
    Model,
    TextEncoder,
    Vae,
    /// A noise source (ComfyUI's NOISE: `RandomNoise`'s seed, or none).
    Noise,
    /// A guider: model, conditionings and guidance scale (ComfyUI's GUIDER).
    Guider,
    /// A step rule chosen by name (ComfyUI's SAMPLER: `KSamplerSelect`).
    Sampler,
    /// A noise schedule as a list of sigmas (ComfyUI's SIGMAS).
    Sigmas,
    /// A batch of single-channel masks in [0, 1] (ComfyUI's MASK): [`Mask`].
    Mask,
}

impl PortType {
    pub const ALL: [PortType; 16] = [
        PortType::Int,
        PortType::Float,
        PortType::Bool,
        PortType::String,
        PortType::Choice,
        PortType::Image,
        PortType::Latent,
        PortType::Conditioning,
        PortType::Model,
        PortType::TextEncoder,
        PortType::Vae,
        PortType::Noise,
        PortType::Guider,
        PortType::Sampler,
        PortType::Sigmas,
        PortType::Mask,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PortType::Int => "Int",
            PortType::Float => "Float",
            PortType::Bool => "Bool",
            PortType::String => "String",
            PortType::Choice => "Choice",
            PortType::Image => "Image",
            PortType::Latent => "Latent",
            PortType::Conditioning => "Conditioning",
            PortType::Model => "Model",
            PortType::TextEncoder => "TextEncoder",
            PortType::Vae => "Vae",
            PortType::Noise => "Noise",
            PortType::Guider => "Guider",
            PortType::Sampler => "Sampler",
            PortType::Sigmas => "Sigmas",
            PortType::Mask => "Mask",
        }
    }

    /// Whether a param of this type can be written as a constant in a workflow file.
    pub fn is_scalar(self) -> bool {
        matches!(
            self,
            PortType::Int | PortType::Float | PortType::Bool | PortType::String | PortType::Choice
        )
    }

    /// Whether an output of type `self` may feed an input of type `to`. A choice is a string
    /// with a closed set of values, so a String output may feed a Choice param (the value is
    /// checked when the node runs) and a Choice output may feed a String input.
    pub fn can_feed(self, to: PortType) -> bool {
        self == to
            || matches!(
                (self, to),
                (PortType::String, PortType::Choice) | (PortType::Choice, PortType::String)
            )
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes a value holds, by memory tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemBytes {
    /// Bytes in accelerator memory (VRAM).
    pub device: u64,
    /// Bytes in host memory (RAM).
    pub host: u64,
}

impl MemBytes {
    pub const ZERO: MemBytes = MemBytes { device: 0, host: 0 };

    pub fn host(bytes: u64) -> Self {
        MemBytes {
            device: 0,
            host: bytes,
        }
    }

    pub fn device(bytes: u64) -> Self {
        MemBytes {
            device: bytes,
            host: 0,
        }
    }

    pub fn total(self) -> u64 {
        self.device + self.host
    }
}

impl std::ops::Add for MemBytes {
    type Output = MemBytes;
    fn add(self, rhs: MemBytes) -> MemBytes {
        MemBytes {
            device: self.device + rhs.device,
            host: self.host + rhs.host,
        }
    }
}

impl std::ops::AddAssign for MemBytes {
    fn add_assign(&mut self, rhs: MemBytes) {
        *self = *self + rhs;
    }
}

impl std::ops::SubAssign for MemBytes {
    fn sub_assign(&mut self, rhs: MemBytes) {
        self.device = self.device.saturating_sub(rhs.device);
        self.host = self.host.saturating_sub(rhs.host);
    }
}

/// A heavy or model-specific value owned by a node crate (a latent tensor, a conditioning,
/// a model handle...). Implementors report the memory they hold so the cache can budget it.
pub trait Payload: Any + Send + Sync + fmt::Debug {
    /// Bytes held on the device and in host memory. Shared memory (weights shared by several
    /// handles) should be reported by every holder; the cache counts what it holds.
    fn mem_bytes(&self) -> MemBytes;

    /// A hash of the content, if cheap to compute. Used to key the outputs of nodes that are
    /// re-run every time, so that an unchanged output still lets its descendants hit the cache.
    fn content_hash(&self) -> Option<[u8; 32]> {
        None
    }

    /// This value with its device memory moved to host memory: the cache's offload tier.
    /// `None` when it cannot move (the cache drops it instead and recomputes it when needed).
    /// The moved value must remember its home device, for [`Payload::to_device`].
    fn to_host(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        None
    }

    /// A host-resident value moved back to its home device, bit-identical to what was offloaded.
    /// `None` when it is already there or cannot move.
    fn to_device(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        None
    }

    /// Host bytes a node using this value would bring onto the device if it had the room: the
    /// weights of a model whose home is a GPU but which sits in host memory because it did not
    /// fit when it was loaded. Before such a node first runs (its peak not yet measured), the
    /// engine makes this much room by moving other values down a tier, so the node can place
    /// the weights rather than stream them. Values the cache itself offloaded are counted
    /// already; 0 by default.
    fn device_wanted(&self) -> u64 {
        0
    }

    /// Whether the nodes that take this value can use it from host memory, bringing its parts
    /// onto the device in turn (a model whose blocks stream). The engine may then leave it in,
    /// or move it to, host memory when the device room is short, rather than moving it back in
    /// whole before the node runs. False by default: values are on the device when used.
    fn streams_from_host(&self) -> bool {
        false
    }

    /// An id of the memory this value's bytes live in, when other values may share it (several
    /// model handles over one set of weights: the loader's and the patch nodes'). The cache
    /// counts a storage's bytes once and moves the values sharing it down a tier together (one
    /// moves, the others [`Payload::rebase`] onto it). A moved value has a new storage. `None`
    /// by default: the value's bytes are its own.
    fn storage_id(&self) -> Option<usize> {
        None
    }

    /// This value over `moved`'s storage, where `moved` is a value that shared this one's
    /// storage and was just moved to another tier; `None` when it cannot (the cache then moves
    /// this value on its own).
    fn rebase(&self, _moved: &dyn Payload) -> Option<Arc<dyn Payload>> {
        None
    }

    fn as_any(&self) -> &dyn Any;
}

/// A typed, shared payload.
#[derive(Clone, Debug)]
pub struct Object {
    pub ty: PortType,
    pub payload: Arc<dyn Payload>,
}

impl Object {
    pub fn new(ty: PortType, payload: impl Payload) -> Self {
        Object {
            ty,
            payload: Arc::new(payload),
        }
    }

    /// The payload as its concrete type, if it is one.
    pub fn downcast<T: Payload>(&self) -> Option<&T> {
        self.payload.as_any().downcast_ref::<T>()
    }
}

/// A batch of single-channel masks in host memory (ComfyUI's MASK): `batch × height × width` f32
/// values in [0, 1], row-major. 1 marks what may change (what is painted over), 0 what is kept.
/// Carried as [`Value::Object`] of type [`PortType::Mask`]; see [`Mask::into_value`].
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub batch: u32,
    pub height: u32,
    pub width: u32,
    pub data: Arc<[f32]>,
}

impl Mask {
    /// Builds a mask, checking that `data` has exactly `batch*height*width` values.
    pub fn new(batch: u32, height: u32, width: u32, data: Vec<f32>) -> Result<Self, String> {
        let expected = batch as usize * height as usize * width as usize;
        if data.len() != expected {
            return Err(format!(
                "mask data has {} values, expected {batch}×{height}×{width} = {expected}",
                data.len()
            ));
        }
        if batch == 0 || height == 0 || width == 0 {
            return Err(format!(
                "a mask batch cannot be empty ({batch}×{height}×{width})"
            ));
        }
        Ok(Mask {
            batch,
            height,
            width,
            data: data.into(),
        })
    }

    /// Number of values in one mask of the batch.
    pub fn frame_len(&self) -> usize {
        self.height as usize * self.width as usize
    }

    /// The values of mask `index` of the batch.
    pub fn frame(&self, index: u32) -> &[f32] {
        let n = self.frame_len();
        &self.data[index as usize * n..(index as usize + 1) * n]
    }

    /// This mask as a port value.
    pub fn into_value(self) -> Value {
        Value::Object(Object::new(PortType::Mask, self))
    }
}

impl Payload for Mask {
    fn mem_bytes(&self) -> MemBytes {
        MemBytes::host(std::mem::size_of_val(&*self.data) as u64)
    }

    fn content_hash(&self) -> Option<[u8; 32]> {
        let mut h = blake3::Hasher::new();
        h.update(b"mask");
        for d in [self.batch, self.height, self.width] {
            h.update(&d.to_le_bytes());
        }
        for v in self.data.iter() {
            h.update(&v.to_le_bytes());
        }
        Some(*h.finalize().as_bytes())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A batch of images in host memory: `batch × height × width × channels` f32 values in [0, 1],
/// row-major, channels interleaved (RGB or RGBA).
///
/// `meta` carries text that travels with the pixels (the prompt, seed and steps that made them,
/// say), in order; image operations pass it on and `SaveImage` writes it into the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub batch: u32,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub data: Arc<[f32]>,
    pub meta: Arc<[(String, String)]>,
}

impl Image {
    /// Builds an image, checking that `data` has exactly `batch*height*width*channels` values.
    pub fn new(
        batch: u32,
        height: u32,
        width: u32,
        channels: u32,
        data: Vec<f32>,
    ) -> Result<Self, String> {
        let expected = batch as usize * height as usize * width as usize * channels as usize;
        if data.len() != expected {
            return Err(format!(
                "image data has {} values, expected {batch}×{height}×{width}×{channels} = {expected}",
                data.len()
            ));
        }
        if !(channels == 3 || channels == 4) {
            return Err(format!("images have 3 or 4 channels, not {channels}"));
        }
        if batch == 0 || height == 0 || width == 0 {
            return Err(format!(
                "an image batch cannot be empty ({batch}×{height}×{width})"
            ));
        }
        Ok(Image {
            batch,
            height,
            width,
            channels,
            data: data.into(),
            meta: Arc::new([]),
        })
    }

    /// The same image with `meta` as its text metadata.
    pub fn with_meta(mut self, meta: Vec<(String, String)>) -> Self {
        self.meta = meta.into();
        self
    }

    /// Number of f32 values in one image of the batch.
    pub fn frame_len(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    /// The values of image `index` of the batch.
    pub fn frame(&self, index: u32) -> &[f32] {
        let n = self.frame_len();
        &self.data[index as usize * n..(index as usize + 1) * n]
    }

    pub fn mem_bytes(&self) -> MemBytes {
        let meta: usize = self.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
        MemBytes::host((std::mem::size_of_val(&*self.data) + meta) as u64)
    }

    /// 8-bit values of image `index` (rounded, clamped).
    pub fn frame_u8(&self, index: u32) -> Vec<u8> {
        self.frame(index)
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }
}

/// A value flowing along a link or stored in a param.
#[derive(Clone, Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    String(Arc<str>),
    Choice(Arc<str>),
    Image(Image),
    Object(Object),
}

impl Value {
    pub fn port_type(&self) -> PortType {
        match self {
            Value::Int(_) => PortType::Int,
            Value::Float(_) => PortType::Float,
            Value::Bool(_) => PortType::Bool,
            Value::String(_) => PortType::String,
            Value::Choice(_) => PortType::Choice,
            Value::Image(_) => PortType::Image,
            Value::Object(o) => o.ty,
        }
    }

    pub fn string(s: impl Into<Arc<str>>) -> Value {
        Value::String(s.into())
    }

    pub fn choice(s: impl Into<Arc<str>>) -> Value {
        Value::Choice(s.into())
    }

    pub fn mem_bytes(&self) -> MemBytes {
        match self {
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => MemBytes::ZERO,
            Value::String(s) | Value::Choice(s) => MemBytes::host(s.len() as u64),
            Value::Image(img) => img.mem_bytes(),
            Value::Object(o) => o.payload.mem_bytes(),
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A float, also from an int (params typed Float accept integer literals).
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The text of a String or Choice value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Choice(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_image(&self) -> Option<&Image> {
        match self {
            Value::Image(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Feeds a canonical encoding of the value into `h`. Scalars and images are hashed by
    /// content; objects by their payload's content hash when it has one. Returns false when the
    /// value cannot be hashed by content (an object without a content hash).
    pub fn hash_content(&self, h: &mut blake3::Hasher) -> bool {
        self.encode_content(h)
    }

    /// Appends the bytes [`Value::hash_content`] would hash to `out`, so that a key can be built
    /// in one buffer and hashed at once (cheaper than many small hasher updates).
    pub(crate) fn write_content(&self, out: &mut Vec<u8>) -> bool {
        self.encode_content(out)
    }

    fn encode_content(&self, h: &mut impl ByteSink) -> bool {
        match self {
            Value::Int(v) => {
                h.update(&[1]);
                h.update(&v.to_le_bytes());
            }
            Value::Float(v) => {
                h.update(&[2]);
                // -0.0 and 0.0 are the same parameter.
                let v = if *v == 0.0 { 0.0 } else { *v };
                h.update(&v.to_bits().to_le_bytes());
            }
            Value::Bool(v) => {
                h.update(&[3, *v as u8]);
            }
            Value::String(s) => {
                h.update(&[4]);
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            Value::Choice(s) => {
                // A choice hashes like the string it carries, so a String linked into a Choice
                // param keys the same as the constant.
                h.update(&[4]);
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            Value::Image(img) => {
                h.update(&[6]);
                for d in [img.batch, img.height, img.width, img.channels] {
                    h.update(&d.to_le_bytes());
                }
                for v in img.data.iter() {
                    h.update(&v.to_bits().to_le_bytes());
                }
                h.update(&(img.meta.len() as u64).to_le_bytes());
                for (k, v) in img.meta.iter() {
                    for text in [k, v] {
                        h.update(&(text.len() as u64).to_le_bytes());
                        h.update(text.as_bytes());
                    }
                }
            }
            Value::Object(o) => match o.payload.content_hash() {
                Some(c) => {
                    h.update(&[7]);
                    h.update(o.ty.name().as_bytes());
                    h.update(&c);
                }
                None => return false,
            },
        }
        true
    }

    /// Equality for scalar values (used to compare params and to test round trips).
    pub fn scalar_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) | (Value::Choice(a), Value::Choice(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) | Value::Choice(s) => write!(f, "{s:?}"),
            Value::Image(i) => write!(
                f,
                "Image({}×{}×{}×{})",
                i.batch, i.height, i.width, i.channels
            ),
            Value::Object(o) => write!(f, "{}(…)", o.ty),
        }
    }
}

/// Where [`Value`]'s canonical encoding goes: a hasher, or a buffer hashed later.
trait ByteSink {
    fn update(&mut self, bytes: &[u8]);
}

impl ByteSink for blake3::Hasher {
    fn update(&mut self, bytes: &[u8]) {
        blake3::Hasher::update(self, bytes);
    }
}

impl ByteSink for Vec<u8> {
    fn update(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_encoding_hashes_like_the_streaming_one() {
        let image = Image::new(1, 1, 1, 3, vec![0.1, 0.2, 0.3]).unwrap();
        for value in [
            Value::Int(-7),
            Value::Float(-0.0),
            Value::Bool(true),
            Value::string("euler"),
            Value::choice("euler"),
            Value::Image(image),
        ] {
            let mut h = blake3::Hasher::new();
            assert!(value.hash_content(&mut h));
            let mut buf = Vec::new();
            assert!(value.write_content(&mut buf));
            assert_eq!(h.finalize(), blake3::hash(&buf), "{value}");
        }
    }
}
