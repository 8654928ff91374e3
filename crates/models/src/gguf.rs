//! Reading GGUF files (llama.cpp's format, as ComfyUI-GGUF and llama.cpp write them).
//!
//! The file is memory-mapped and its header parsed here rather than by candle's `gguf_file`, so
//! that a tensor of a type candle cannot compute with (IQ4_XS, ...) is reported by name and type
//! when the model asks for it, instead of failing the whole file, and so that every count, length,
//! shape and offset in the header is checked against the file's size before it is used: a
//! truncated or corrupt file is an [`Error::Gguf`] naming the file, never a panic or a huge
//! allocation.
//!
//! Layout (GGUF v2/v3, little-endian): magic `GGUF`, version, tensor count, metadata count, the
//! metadata key/value pairs, one info per tensor (name, dims innermost first, ggml type, offset),
//! padding to `general.alignment` (32 by default), then the tensor data. Dims are reversed here,
//! so shapes read like PyTorch's (`(out, in)` for a linear weight).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};

use crate::qlinear::QLinear;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::weights::FileBytes;

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_DIMS: usize = 4;

/// Whether the file starts with the GGUF magic (any read error: no).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

/// A metadata value. Arrays other than short integer lists (shapes) are skipped, since the only
/// long ones are the tokenizer's vocabulary, which we read from `tokenizer.json` instead.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Ints(Vec<i128>),
    /// An array we did not keep, with its length.
    Skipped(u64),
}

impl MetaValue {
    pub fn as_usize(&self) -> Option<usize> {
        match self {
            Self::Int(v) => usize::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            Self::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A ggml tensor type, known or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// llama.cpp's name of the type.
    pub fn name(self) -> Cow<'static, str> {
        let name = match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            other => return Cow::Owned(format!("type id {other}")),
        };
        Cow::Borrowed(name)
    }

    /// The candle type we compute with, for the types candle's quantized kernels handle (the
    /// storage-only Q8_1 / Q8_K and the IQ/TQ/MXFP types are not among them).
    pub fn candle(self) -> Option<GgmlDType> {
        Some(match self.0 {
            0 => GgmlDType::F32,
            1 => GgmlDType::F16,
            30 => GgmlDType::BF16,
            2 => GgmlDType::Q4_0,
            3 => GgmlDType::Q4_1,
            6 => GgmlDType::Q5_0,
            7 => GgmlDType::Q5_1,
            8 => GgmlDType::Q8_0,
            10 => GgmlDType::Q2K,
            11 => GgmlDType::Q3K,
            12 => GgmlDType::Q4K,
            13 => GgmlDType::Q5K,
            14 => GgmlDType::Q6K,
            _ => return None,
        })
    }

    /// F32, F16 or BF16: stored as plain floats.
    pub fn is_float(self) -> bool {
        matches!(self.0, 0 | 1 | 30)
    }
}

/// The types we can read, for error messages.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// PyTorch order (outermost first).
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

/// A memory-mapped GGUF file with a validated header.
pub struct GgufFile {
    path: PathBuf,
    contents: FileBytes,
    data_start: usize,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, GgufTensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Bounds-checked little-endian reads over the header.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("header ends early (at byte {})", self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items, each at least `min_item_bytes` long, that must fit in what is left.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_item_bytes) <= self.remaining());
        fits.ok_or_else(|| format!("{what} count {n} does not fit in the file"))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.count("string length", 1)?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn scalar(&mut self, ty: u32) -> std::result::Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::Int(self.u8()?.into()),
            1 => MetaValue::Int((self.u8()? as i8).into()),
            2 => MetaValue::Int(self.u16()?.into()),
            3 => MetaValue::Int((self.u16()? as i16).into()),
            4 => MetaValue::Int(self.u32()?.into()),
            5 => MetaValue::Int((self.u32()? as i32).into()),
            6 => MetaValue::Float(f32::from_bits(self.u32()?).into()),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::Str(self.string()?),
            10 => MetaValue::Int(self.u64()?.into()),
            11 => MetaValue::Int((self.u64()? as i64).into()),
            12 => MetaValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }

    fn value(&mut self, ty: u32) -> std::result::Result<MetaValue, String> {
        if ty != 9 {
            return self.scalar(ty);
        }
        let elem_ty = self.u32()?;
        let n = self.count("array", 1)?;
        if elem_ty == 9 {
            return Err("nested metadata arrays are not supported".into());
        }
        let mut ints = Vec::new();
        for _ in 0..n {
            match self.scalar(elem_ty)? {
                MetaValue::Int(v) if n <= 8 => ints.push(v),
                _ => {}
            }
        }
        if n <= 8 && ints.len() as u64 == n as u64 {
            Ok(MetaValue::Ints(ints))
        } else {
            Ok(MetaValue::Skipped(n as u64))
        }
    }
}

impl GgufFile {
    /// Maps the file and validates its header: every tensor's byte range (from its type and
    /// shape) must lie inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::read(path, FileBytes::map(path)?)
    }

    /// A GGUF file read from bytes held in memory; `name` stands for the file in errors. The
    /// header is validated as [`GgufFile::open`] validates it.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::read(Path::new(name), FileBytes::Owned(bytes))
    }

    fn read(path: &Path, contents: FileBytes) -> Result<Self> {
        let (metadata, tensors, data_start) =
            Self::parse(&contents[..]).map_err(|reason| Error::Gguf {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            contents,
            data_start,
            metadata,
            tensors,
        })
    }

    #[expect(
        clippy::type_complexity,
        reason = "private helper returning the three parts of the header"
    )]
    fn parse(
        bytes: &[u8],
    ) -> std::result::Result<
        (
            HashMap<String, MetaValue>,
            HashMap<String, GgufTensorInfo>,
            usize,
        ),
        String,
    > {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err("not a GGUF file (no GGUF magic)".into());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!(
                "GGUF version {version} is not supported (2 and 3 are); re-convert the file with a \
                 current llama.cpp or ComfyUI-GGUF"
            ));
        }
        // A tensor info is at least 8 (name length) + 4 + 4 + 8 bytes; a key/value at least 8 + 4.
        let n_tensors = r.count("tensor", 24)?;
        let n_kv = r.count("metadata", 12)?;
        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty).map_err(|e| format!("metadata `{key}`: {e}"))?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_usize()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| format!("general.alignment {v:?} is not a power of two"))?,
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(format!("tensor `{name}` has {n_dims} dimensions"));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = r.u64()?;
                shape.push(
                    usize::try_from(d).map_err(|_| format!("tensor `{name}`: dim {d} too big"))?,
                );
            }
            shape.reverse();
            let ggml_type = GgmlType(r.u32()?);
            let offset = r.u64()?;
            infos.push((name, shape, ggml_type, offset));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let data_len = bytes.len().saturating_sub(data_start);
        let mut tensors = HashMap::with_capacity(infos.len());
        for (name, shape, ggml_type, offset) in infos {
            // Only types we can size are range-checked here; the others fail when asked for.
            if let Some(ty) = ggml_type.candle() {
                let size = byte_size(&shape, ty)
                    .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
                let end = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(size));
                if end.is_none_or(|e| e > data_len) {
                    return Err(format!(
                        "tensor `{name}` ({}, shape {shape:?}) lies outside the file (truncated?)",
                        ggml_type.name()
                    ));
                }
            }
            tensors.insert(
                name,
                GgufTensorInfo {
                    shape,
                    ggml_type,
                    offset,
                },
            );
        }
        Ok((metadata, tensors, data_start))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// `general.architecture`, e.g. `flux` or `qwen3`.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata
            .get("general.architecture")
            .and_then(MetaValue::as_str)
    }

    /// A tensor's logical shape: ComfyUI-GGUF stores some tensors flattened to rows of 256 and
    /// records the real shape as `comfy.gguf.orig_shape.<name>`.
    pub fn logical_shape(&self, name: &str) -> Option<Vec<usize>> {
        let info = self.tensors.get(name)?;
        match self.metadata.get(&format!("comfy.gguf.orig_shape.{name}")) {
            Some(MetaValue::Ints(dims)) => dims.iter().map(|&d| usize::try_from(d).ok()).collect(),
            _ => Some(info.shape.clone()),
        }
    }

    /// Whether the stored shape differs from the logical one (see [`Self::logical_shape`]).
    pub fn is_reshaped(&self, name: &str) -> bool {
        self.tensors
            .get(name)
            .is_some_and(|i| Some(&i.shape) != self.logical_shape(name).as_ref())
    }

    fn info(&self, name: &str) -> Result<(&GgufTensorInfo, GgmlDType)> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            files: self.path.display().to_string(),
        })?;
        let ty = info
            .ggml_type
            .candle()
            .ok_or_else(|| Error::UnsupportedDtype {
                name: name.to_string(),
                path: self.path.clone(),
                dtype: format!(
                    "GGUF type {} (supported: {SUPPORTED_TYPES}); re-quantize the file to one of \
                     these, e.g. Q4_K or Q8_0",
                    info.ggml_type.name()
                ),
            })?;
        Ok((info, ty))
    }

    fn bytes(&self, name: &str, info: &GgufTensorInfo, ty: GgmlDType) -> Result<&[u8]> {
        let corrupt = |reason: String| Error::Gguf {
            path: self.path.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let size = byte_size(&info.shape, ty).ok_or_else(|| corrupt("shape overflows".into()))?;
        let start = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_start))
            .ok_or_else(|| corrupt("offset overflows".into()))?;
        let bytes = start
            .checked_add(size)
            .and_then(|end| self.contents.get(start..end))
            .ok_or_else(|| corrupt("lies outside the file".into()))?;
        // Block structs hold f16/f32 fields; GGUF aligns data to 32 bytes and the map is
        // page-aligned, so this only fails for a corrupt offset.
        if bytes.as_ptr() as usize % 4 != 0 {
            return Err(corrupt("data is not aligned (corrupt offset)".into()));
        }
        Ok(bytes)
    }

    /// The stored ggml type of a tensor.
    pub fn ggml_type(&self, name: &str) -> Option<GgmlType> {
        self.tensors.get(name).map(|i| i.ggml_type)
    }

    /// A quantized tensor on `device`, in its stored type (block-quantized types stay quantized).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let (info, ty) = self.info(name)?;
        if matches!(ty, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            // candle's CUDA quantized storage has no BF16; float tensors go through `tensor`.
            let t = self.tensor(name, DType::F32, &Device::Cpu)?;
            return Ok(QTensor::quantize_onto(&t, GgmlDType::F32, device)?);
        }
        if info.shape.last().is_none_or(|&k| k % ty.block_size() != 0) {
            return Err(Error::Gguf {
                path: self.path.clone(),
                reason: format!(
                    "tensor `{name}`: rows of {:?} are not whole {:?} blocks of {}",
                    info.shape,
                    ty,
                    ty.block_size()
                ),
            });
        }
        let bytes = self.bytes(name, info, ty)?;
        let storage = QStorage::from_data(Cow::Borrowed(bytes), device, ty)?;
        Ok(QTensor::new(storage, info.shape.as_slice())?)
    }

    /// A block-quantized 2-D weight as a linear layer on `device` computing in `dtype`: raw
    /// blocks our CUDA kernels dequantize per matmul where they can, else a candle `QTensor`
    /// (see [`QLinear::gguf_blocks`]).
    pub fn quantized_linear(&self, name: &str, dtype: DType, device: &Device) -> Result<QLinear> {
        let (info, ty) = self.info(name)?;
        match *info.shape.as_slice() {
            [rows, cols]
                if cols % ty.block_size() == 0
                    && !matches!(ty, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) =>
            {
                let bytes = self.bytes(name, info, ty)?;
                Ok(QLinear::gguf_blocks(
                    bytes,
                    ty,
                    (rows, cols),
                    dtype,
                    device,
                )?)
            }
            // A float tensor, or not a matrix of whole blocks (`qtensor` says what is wrong).
            _ => Ok(QLinear::ggml(self.qtensor(name, device)?)),
        }
    }

    /// A tensor dequantized to `dtype` on `device`, in its logical shape.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (info, ty) = self.info(name)?;
        let bytes = self.bytes(name, info, ty)?;
        let t = match ty {
            GgmlDType::F32 => Tensor::from_raw_buffer(bytes, DType::F32, &info.shape, device)?,
            GgmlDType::F16 => Tensor::from_raw_buffer(bytes, DType::F16, &info.shape, device)?,
            GgmlDType::BF16 => Tensor::from_raw_buffer(bytes, DType::BF16, &info.shape, device)?,
            _ => {
                // Dequantize on the CPU straight from the map (no device copy of the blocks).
                let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, ty)?;
                QTensor::new(storage, info.shape.as_slice())?.dequantize(device)?
            }
        };
        let t = match self.logical_shape(name) {
            Some(shape) if shape != info.shape => {
                // Checked: the recorded shape is the file's word, and may overflow.
                let count = checked_elems(&shape);
                if count != Some(t.elem_count()) {
                    return Err(Error::Gguf {
                        path: self.path.clone(),
                        reason: format!(
                            "tensor `{name}`: comfy.gguf.orig_shape {shape:?} does not match the \
                             stored {:?}",
                            info.shape
                        ),
                    });
                }
                t.reshape(shape)?
            }
            _ => t,
        };
        Ok(t.to_dtype(dtype)?)
    }

    /// Bytes the tensors take in the file (their stored size).
    pub fn stored_bytes(&self, name: &str) -> Option<usize> {
        let info = self.tensors.get(name)?;
        byte_size(&info.shape, info.ggml_type.candle()?)
    }
}

/// Elements of a tensor of this shape; `None` when the product overflows, or when the dims
/// other than zero do (a zero dim makes the tensor empty, but the strides candle computes from
/// the other dims would still overflow).
fn checked_elems(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))?;
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Bytes of a tensor of this shape and type (`None` on overflow or a partial block).
fn byte_size(shape: &[usize], ty: GgmlDType) -> Option<usize> {
    let elems = checked_elems(shape)?;
    if elems % ty.block_size() != 0 {
        return None;
    }
    (elems / ty.block_size()).checked_mul(ty.type_size())
}

/// The type ComfyUI-GGUF's converter gives a tensor of a diffusion model quantized to `q`: 1-D and
/// tiny tensors F32; the input/output projections and rows that are not whole blocks F16; the
/// rest `q`. The quantize example and the tests write files with it.
pub fn comfy_flux_type(name: &str, shape: &[usize], q: GgmlDType) -> GgmlDType {
    let n: usize = shape.iter().product();
    if shape.len() == 1 || n <= 1024 {
        GgmlDType::F32
    } else if ["img_in.", "txt_in.", "time_in.", "final_layer."]
        .iter()
        .any(|p| name.contains(p))
        || shape.last().is_some_and(|k| k % q.block_size() != 0)
    {
        GgmlDType::F16
    } else {
        q
    }
}

/// llama.cpp's choice for a language model's tensor quantized to `q`: norms F32, matrices `q`,
/// rows that are not whole blocks F16.
pub fn llama_cpp_type(shape: &[usize], q: GgmlDType) -> GgmlDType {
    if shape.len() == 1 {
        GgmlDType::F32
    } else if shape.last().is_some_and(|k| k % q.block_size() != 0) {
        GgmlDType::F16
    } else {
        q
    }
}
