//! Loading weights from safetensors files: memory-mapped, validated, renamed.
//!
//! [`WeightFiles`] maps one or several safetensors files (a single-file checkpoint or a sharded
//! diffusers folder) and checks every header once, when the file is opened: the `safetensors` crate
//! verifies that the header is well-formed, that each tensor's byte range matches its dtype and
//! shape, that the ranges tile the data section and that the data section ends exactly at the end of
//! the file. A truncated file or a header that lies about sizes or offsets is therefore rejected
//! before any tensor is read, with an error naming the file.
//!
//! The models are written against one internal tensor layout each. [`MappedBackend`] is a candle
//! `VarBuilder` backend that resolves an internal name to the tensor(s) of the file's own layout
//! ([`Source`]): the same name, a concatenation (diffusers' separate q/k/v into a fused qkv), a swap
//! of the two row halves (diffusers' (scale, shift) into BFL's (shift, scale)), or a reshape
//! (diffusers' linear layers where BFL has 1x1 convolutions). Every tensor's shape is checked
//! against the one the model asks for, and a mismatch names the tensor, both shapes and the file.
//!
//! Quantized layers are recognised as ComfyUI's loaders recognise them (`comfy/ops.py`
//! `_load_quantized_module`, `comfy/utils.py` `convert_old_quants`), in any of its three
//! descriptions: a `<layer>.comfy_quant` uint8 tensor holding JSON such as
//! `{"format": "float8_e4m3fn"}`; the header metadata `_quantization_metadata`
//! (`{"format_version": "1.0", "layers": {"<layer>": {"format": ...}}}`), which takes precedence;
//! or the older `<prefix>scaled_fp8` marker, which makes every `<layer>.scale_weight` layer
//! float8_e4m3fn. An fp8 layer's weight is `fp8 value * <layer>.weight_scale` (or `scale_weight`),
//! one f32 value per tensor (or per row); `input_scale`, the activation scale of fp8 matmuls, is
//! not used: Veetance multiplies in the compute dtype, as ComfyUI does where fp8 matmuls are off.
//! A layer in another format (nvfp4, mxfp8, int8, ...) is refused by name when it is loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use safetensors::tensor::TensorInfo;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::qlinear::{LinearFormat, QLinear, WeightBuilder};

/// A model file's bytes: memory-mapped from disk, or held in memory (files read from bytes, as
/// the fuzz targets and tests do).
pub(crate) enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps a file read-only.
    pub(crate) fn map(path: &Path) -> Result<Self> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        #[expect(
            unsafe_code,
            reason = "memory-mapping is how multi-GB checkpoints load without a copy; the mapping is \
                      read-only and every header is validated against the mapped length before use"
        )]
        // SAFETY: the map is read-only. Like every mmap-based loader (candle's included), we rely on
        // the file not being truncated by another process while it is mapped.
        let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io_err)?;
        Ok(FileBytes::Mapped(mmap))
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// One memory-mapped, header-validated safetensors file.
struct SafetensorsFile {
    path: PathBuf,
    contents: FileBytes,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
    /// The header's `__metadata__` (string to string).
    header_metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    fn open(path: &Path) -> Result<Self> {
        Self::read(path, FileBytes::map(path)?)
    }

    /// Validates the header of a file's bytes; `path` names it in errors.
    fn read(path: &Path, contents: FileBytes) -> Result<Self> {
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&contents[..])
            .map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        let header_metadata = metadata.metadata().clone().unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            contents,
            data_start: 8 + header_len,
            tensors,
            header_metadata,
        })
    }

    /// The stored bytes of a tensor.
    fn bytes(&self, name: &str, info: &TensorInfo) -> Result<&[u8]> {
        let (start, end) = info.data_offsets;
        self.contents
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| Error::Safetensors {
                path: self.path.clone(),
                reason: format!("tensor `{name}` lies outside the file"),
            })
    }

    fn load(&self, name: &str, info: &TensorInfo, device: &Device) -> Result<Tensor> {
        // read_metadata checked that all ranges lie inside the data section; `get` keeps even a
        // logic error here from reading out of bounds.
        let bytes = self.bytes(name, info)?;
        if let Some(t) = parallel_host_load(info, bytes, device)? {
            return Ok(t);
        }
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), bytes)
            .map_err(|e| Error::Safetensors {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        view.load(device).map_err(|_| Error::UnsupportedDtype {
            name: name.to_string(),
            path: self.path.clone(),
            dtype: format!("{:?}", info.dtype),
        })
    }
}

/// Tensors of at least this many bytes load into host memory with several threads.
const PARALLEL_LOAD_MIN: usize = 16 << 20;

/// A large tensor loaded into host memory by several threads copying from the mapped file (one
/// thread reads a page-cached file at about 1.5 GB/s, page faults included); `None` for other
/// devices, small tensors and dtypes candle's own loader converts.
fn parallel_host_load(info: &TensorInfo, bytes: &[u8], device: &Device) -> Result<Option<Tensor>> {
    // Little-endian hosts only: the file's bytes are the elements' bytes.
    if !device.is_cpu() || bytes.len() < PARALLEL_LOAD_MIN || cfg!(target_endian = "big") {
        return Ok(None);
    }
    let Ok(dtype) = DType::try_from(info.dtype) else {
        return Ok(None);
    };
    let shape = candle_core::Shape::from(info.shape.clone());
    if shape.elem_count() * dtype.size_in_bytes() != bytes.len() {
        return Ok(None);
    }
    // A dtype `host_tensor` does not build (fp6, fp4) takes candle's loader instead.
    Ok(crate::placement::host_tensor(dtype, &shape, |dst| {
        crate::placement::parallel_copy(dst, bytes);
        Ok(())
    })
    .ok())
}

/// The format ComfyUI's float8 e4m3 layers name (`comfy/quant_ops.py` `QUANT_ALGOS`).
pub const FP8_E4M3_FORMAT: &str = "float8_e4m3fn";

/// A layer's quantization as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerQuant {
    /// ComfyUI's format name: `float8_e4m3fn`, `nvfp4`, `mxfp8`, `int8_tensorwise`, ...
    pub format: String,
    /// Where the description came from.
    pub described_by: QuantSource,
}

/// Which of ComfyUI's descriptions of quantized layers a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantSource {
    /// A `<layer>.comfy_quant` uint8 tensor of JSON.
    ComfyQuantTensor,
    /// The header metadata `_quantization_metadata`.
    HeaderMetadata,
    /// The older `scaled_fp8` marker with `<layer>.scale_weight`.
    ScaledFp8Marker,
}

/// A set of safetensors files read as one checkpoint.
pub struct WeightFiles {
    files: Vec<SafetensorsFile>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
    /// Layer name (a weight's name without `.weight`) -> its quantization, for the layers the
    /// files describe as quantized.
    quant: HashMap<String, LayerQuant>,
}

/// ComfyUI's description of one quantized layer: JSON with a `format` field.
fn parse_layer_conf(json: &serde_json::Value) -> Option<String> {
    json.get("format")?.as_str().map(str::to_string)
}

/// The quantized layers of one file, as ComfyUI's loaders find them.
fn quant_layers(file: &SafetensorsFile) -> Result<HashMap<String, LayerQuant>> {
    let bad = |reason: String| Error::Safetensors {
        path: file.path.clone(),
        reason,
    };
    let mut layers = HashMap::new();
    for (name, info) in &file.tensors {
        let Some(layer) = name.strip_suffix(".comfy_quant") else {
            continue;
        };
        let what = || format!("tensor `{name}` is not ComfyUI's quantization JSON");
        let conf: serde_json::Value = serde_json::from_slice(file.bytes(name, info)?)
            .map_err(|e| bad(format!("{}: {e}", what())))?;
        let format = parse_layer_conf(&conf)
            .ok_or_else(|| bad(format!("{}: it has no \"format\"", what())))?;
        layers.insert(
            layer.to_string(),
            LayerQuant {
                format,
                described_by: QuantSource::ComfyQuantTensor,
            },
        );
    }
    if let Some(text) = file.header_metadata.get("_quantization_metadata") {
        let what = "the header metadata `_quantization_metadata`";
        let conf: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("{what} is not JSON: {e}")))?;
        let described = conf
            .get("layers")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| bad(format!("{what} has no \"layers\" object")))?;
        for (layer, layer_conf) in described {
            let format = parse_layer_conf(layer_conf)
                .ok_or_else(|| bad(format!("{what}: layer `{layer}` has no \"format\"")))?;
            layers.insert(
                layer.clone(),
                LayerQuant {
                    format,
                    described_by: QuantSource::HeaderMetadata,
                },
            );
        }
    } else {
        // `<prefix>scaled_fp8`: every `<prefix>...<layer>.scale_weight` is a float8_e4m3fn layer.
        let prefixes: Vec<&str> = file
            .tensors
            .keys()
            .filter_map(|n| n.strip_suffix("scaled_fp8"))
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .collect();
        for prefix in prefixes {
            for name in file.tensors.keys() {
                if let Some(layer) = name
                    .strip_suffix(".scale_weight")
                    .filter(|l| l.starts_with(prefix))
                {
                    layers
                        .entry(layer.to_string())
                        .or_insert_with(|| LayerQuant {
                            format: FP8_E4M3_FORMAT.into(),
                            described_by: QuantSource::ScaledFp8Marker,
                        });
                }
            }
        }
    }
    Ok(layers)
}

impl std::fmt::Debug for WeightFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFiles")
            .field(
                "files",
                &self.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl WeightFiles {
    /// Maps the given files. A tensor that appears in several files is taken from the last one.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::InvalidInput("no safetensors file given".into()));
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            files.push(SafetensorsFile::open(path)?);
        }
        Self::from_files(files)
    }

    /// A checkpoint read from the bytes of one safetensors file, held in memory; `name` stands
    /// for the file in errors. The header is validated as [`WeightFiles::open`] validates it.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::from_files(vec![SafetensorsFile::read(
            Path::new(name),
            FileBytes::Owned(bytes),
        )?])
    }

    fn from_files(files: Vec<SafetensorsFile>) -> Result<Self> {
        let mut index = HashMap::new();
        let mut quant = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.tensors.keys() {
                index.insert(name.clone(), i);
            }
            quant.extend(quant_layers(file)?);
        }
        Ok(Self {
            files,
            index,
            quant,
        })
    }

    /// Maps a single `.safetensors` file, or every `.safetensors` file of a folder (a sharded
    /// diffusers component such as `transformer/`), in name order.
    pub fn open_path(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Self::open(&[path.to_path_buf()]);
        }
        let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "folder holds no .safetensors file",
                ),
            });
        }
        Self::open(&paths)
    }

    /// Whether any file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        let file = &self.files[*self.index.get(name)?];
        file.tensors.get(name).map(|i| i.shape.as_slice())
    }

    /// The stored dtype of a tensor.
    pub fn stored_dtype(&self, name: &str) -> Option<safetensors::Dtype> {
        let file = &self.files[*self.index.get(name)?];
        file.tensors.get(name).map(|i| i.dtype)
    }

    /// The scale stored beside an fp8 weight (`<layer>.scale_weight` in ComfyUI's scaled-fp8
    /// files, `<layer>.weight_scale` in its newer quantized format), if any.
    pub fn fp8_scale_name(&self, weight: &str) -> Option<String> {
        let layer = weight.strip_suffix(".weight")?;
        [
            format!("{layer}.scale_weight"),
            format!("{layer}.weight_scale"),
        ]
        .into_iter()
        .find(|n| self.contains(n))
    }

    /// The quantization the files describe for the layer of this weight (`<layer>.weight`).
    pub fn layer_quant(&self, weight: &str) -> Option<&LayerQuant> {
        self.quant.get(weight.strip_suffix(".weight")?)
    }

    /// How many layers the files describe as quantized (any format).
    pub fn quantized_layer_count(&self) -> usize {
        self.quant.len()
    }

    /// Checks a weight against its layer's described quantization: only float8_e4m3fn is read,
    /// and its weight must be stored in fp8 e4m3.
    fn check_quant(&self, name: &str, file: &SafetensorsFile, info: &TensorInfo) -> Result<()> {
        let Some(quant) = self.layer_quant(name) else {
            return Ok(());
        };
        let layer = name.strip_suffix(".weight").unwrap_or(name);
        if quant.format != FP8_E4M3_FORMAT {
            return Err(Error::UnsupportedQuantization {
                layer: layer.to_string(),
                path: file.path.clone(),
                format: quant.format.clone(),
            });
        }
        if info.dtype != safetensors::Dtype::F8_E4M3 {
            return Err(Error::Safetensors {
                path: file.path.clone(),
                reason: format!(
                    "layer `{layer}` is described as {FP8_E4M3_FORMAT} but its weight is stored \
                     as {:?}",
                    info.dtype
                ),
            });
        }
        Ok(())
    }

    /// All tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The first file's path (used to name the checkpoint in errors).
    pub fn path(&self) -> &Path {
        &self.files[0].path
    }

    /// The files, for error messages.
    pub fn describe(&self) -> String {
        match self.files.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!(
                "{} files in {}",
                many.len(),
                many[0]
                    .path
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }

    /// Loads one tensor on `device` in `dtype`, checking its shape when one is expected.
    pub fn load(
        &self,
        name: &str,
        expected: Option<&[usize]>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let file = self
            .index
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                files: self.describe(),
            })?;
        let info = &file.tensors[name];
        if let Some(expected) = expected {
            if expected != info.shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    name: name.to_string(),
                    path: file.path.clone(),
                    expected: expected.to_vec(),
                    found: info.shape.clone(),
                });
            }
        }
        self.check_quant(name, file, info)?;
        let tensor = file.load(name, info, device)?;
        if info.dtype == safetensors::Dtype::F8_E4M3 {
            if let Some(scale) = self.fp8_scale_name(name) {
                let scale = self.load(&scale, None, DType::F32, device)?;
                let w = tensor.to_dtype(DType::F32)?;
                let w = crate::qlinear::apply_row_scale(&w, &scale).map_err(|reason| {
                    Error::InvalidInput(format!(
                        "tensor `{name}` in {}: {reason}",
                        file.path.display()
                    ))
                })?;
                return Ok(w.to_dtype(dtype)?);
            }
        }
        Ok(tensor.to_dtype(dtype)?)
    }
}

/// Where tensors come from: safetensors files or a GGUF file.
pub trait TensorStore: Send + Sync {
    /// One tensor in `dtype` on `device`, checking its shape when one is expected.
    fn load(
        &self,
        name: &str,
        expected: Option<&[usize]>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor>;

    fn contains(&self, name: &str) -> bool;

    /// The file (the first one) for error messages.
    fn path(&self) -> &Path;

    /// A linear weight `(out, in)` kept in its stored low-precision form (GGUF blocks, fp8), or
    /// `None` when it should be loaded dense in the compute dtype.
    fn stored_linear(
        &self,
        _name: &str,
        _shape: (usize, usize),
        _dtype: DType,
        _device: &Device,
    ) -> Result<Option<QLinear>> {
        Ok(None)
    }
}

impl TensorStore for WeightFiles {
    fn load(
        &self,
        name: &str,
        expected: Option<&[usize]>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        WeightFiles::load(self, name, expected, dtype, device)
    }

    fn contains(&self, name: &str) -> bool {
        WeightFiles::contains(self, name)
    }

    fn path(&self) -> &Path {
        WeightFiles::path(self)
    }

    fn stored_linear(
        &self,
        name: &str,
        (out, inp): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Option<QLinear>> {
        let Some(file) = self.index.get(name).map(|&i| &self.files[i]) else {
            return Ok(None);
        };
        self.check_quant(name, file, &file.tensors[name])?;
        if self.stored_dtype(name) != Some(safetensors::Dtype::F8_E4M3) {
            return Ok(None);
        }
        let weight = file.load(name, &file.tensors[name], device)?;
        if weight.dims() != [out, inp] {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                path: file.path.clone(),
                expected: vec![out, inp],
                found: weight.dims().to_vec(),
            });
        }
        let scale = match self.fp8_scale_name(name) {
            Some(s) => Some(self.load(&s, None, DType::F32, device)?),
            None => None,
        };
        QLinear::fp8(weight, scale, dtype)
            .map(Some)
            .map_err(|reason| {
                Error::InvalidInput(format!(
                    "tensor `{name}` in {}: {reason}",
                    file.path.display()
                ))
            })
    }
}

impl TensorStore for GgufFile {
    fn load(
        &self,
        name: &str,
        expected: Option<&[usize]>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if let (Some(expected), Some(found)) = (expected, self.logical_shape(name)) {
            if expected != found.as_slice() {
                return Err(Error::ShapeMismatch {
                    name: name.to_string(),
                    path: self.path().to_path_buf(),
                    expected: expected.to_vec(),
                    found,
                });
            }
        }
        self.tensor(name, dtype, device)
    }

    fn contains(&self, name: &str) -> bool {
        GgufFile::contains(self, name)
    }

    fn path(&self) -> &Path {
        GgufFile::path(self)
    }

    fn stored_linear(
        &self,
        name: &str,
        (out, inp): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Option<QLinear>> {
        let Some(ty) = self.ggml_type(name) else {
            return Ok(None);
        };
        // Float tensors and ComfyUI-GGUF's flattened ones are loaded dense.
        if ty.is_float() || self.is_reshaped(name) {
            return Ok(None);
        }
        if let Some(found) = self.logical_shape(name) {
            if found != [out, inp] {
                return Err(Error::ShapeMismatch {
                    name: name.to_string(),
                    path: self.path().to_path_buf(),
                    expected: vec![out, inp],
                    found,
                });
            }
        }
        Ok(Some(self.quantized_linear(name, dtype, device)?))
    }
}

/// Where an internal tensor comes from in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One stored tensor (possibly under another name).
    Name(String),
    /// Stored tensors concatenated along dim 0, each an equal share of the expected rows.
    Concat(Vec<String>),
    /// A stored tensor whose two row halves come in the other order.
    SwapHalves(String),
    /// A stored tensor with the same elements in another shape (a linear weight read as a 1x1 conv).
    Reshape(String),
}

type NameMap = dyn Fn(&str) -> Source + Send + Sync;

/// A candle `VarBuilder` backend over [`WeightFiles`] with a name map and shape checks.
///
/// candle's `VarBuilder` only carries `candle_core::Error`, which cannot hold our structured error;
/// so the backend keeps the first structured error it meets, and [`build_model`] returns that one.
#[derive(Clone)]
pub struct MappedBackend {
    files: Arc<dyn TensorStore>,
    map: Arc<NameMap>,
    first_error: Arc<Mutex<Option<Error>>>,
    /// Every tensor handed to the model, by internal name, when the caller asked for the list.
    recorded: Option<Arc<Mutex<TensorList>>>,
}

impl MappedBackend {
    fn remember(&self, name: &str, tensor: &Tensor) {
        if let Some(list) = &self.recorded {
            if let Ok(mut list) = list.lock() {
                list.push((name.to_string(), tensor.clone()));
            }
        }
    }

    fn resolve(
        &self,
        name: &str,
        shape: Option<&[usize]>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        match (self.map)(name) {
            Source::Name(stored) => self.files.load(&stored, shape, dtype, dev),
            Source::Concat(parts) => {
                let part_shape = match shape {
                    Some([rows, rest @ ..]) if rows % parts.len() == 0 => {
                        let mut s = vec![rows / parts.len()];
                        s.extend_from_slice(rest);
                        Some(s)
                    }
                    _ => None,
                };
                let tensors = parts
                    .iter()
                    .map(|p| self.files.load(p, part_shape.as_deref(), dtype, dev))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&tensors, 0)?)
            }
            Source::SwapHalves(stored) => {
                let t = self.files.load(&stored, shape, dtype, dev)?;
                let halves = t.chunk(2, 0)?;
                Ok(Tensor::cat(&[&halves[1], &halves[0]], 0)?)
            }
            Source::Reshape(stored) => {
                let t = self.files.load(&stored, None, dtype, dev)?;
                match shape {
                    Some(s) if t.elem_count() == s.iter().product::<usize>() => Ok(t.reshape(s)?),
                    Some(s) => Err(Error::ShapeMismatch {
                        name: stored.clone(),
                        path: self.files.path().to_path_buf(),
                        expected: s.to_vec(),
                        found: t.dims().to_vec(),
                    }),
                    None => Ok(t),
                }
            }
        }
    }

    /// A linear weight in its stored low-precision form, if the store keeps it so (only for
    /// tensors stored under one name; concatenated or rearranged ones load dense).
    pub fn stored_linear(
        &self,
        name: &str,
        shape: (usize, usize),
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Option<QLinear>> {
        match (self.map)(name) {
            Source::Name(stored) if self.files.contains(&stored) => self
                .files
                .stored_linear(&stored, shape, dtype, dev)
                .map_err(|e| self.record(e)),
            _ => Ok(None),
        }
    }

    fn record(&self, err: Error) -> candle_core::Error {
        let msg = err.to_string();
        if let Ok(mut slot) = self.first_error.lock() {
            slot.get_or_insert(err);
        }
        candle_core::Error::Msg(msg)
    }
}

impl candle_nn::var_builder::SimpleBackend for MappedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self
            .resolve(name, Some(s.dims()), dtype, dev)
            .map_err(|e| self.record(e))?;
        self.remember(name, &t);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .resolve(name, None, dtype, dev)
            .map_err(|e| self.record(e))?;
        self.remember(name, &t);
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match (self.map)(name) {
            Source::Name(n) | Source::SwapHalves(n) | Source::Reshape(n) => self.files.contains(&n),
            Source::Concat(parts) => parts.iter().all(|p| self.files.contains(p)),
        }
    }
}

/// Builds a model through a [`MappedBackend`]: `build` receives a `VarBuilder` whose names are the
/// model's internal names; `map` says where each one is stored. Returns the structured loading error
/// (missing tensor, shape mismatch, ...) when there is one, else candle's.
pub fn build_model<T>(
    files: Arc<WeightFiles>,
    map: impl Fn(&str) -> Source + Send + Sync + 'static,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    build_with_store(files, map, dtype, device, None, |backend| {
        build(VarBuilder::from_backend(
            Box::new(backend),
            dtype,
            device.clone(),
        ))
    })
}

/// [`build_model`] for models whose linear layers are [`QLinear`]s: `build` receives a
/// [`WeightBuilder`] over any [`TensorStore`] (safetensors or GGUF); with `linears` =
/// [`LinearFormat::Fp8E4M3`], dense linear weights are converted to fp8 at load.
pub fn build_quantizable<T>(
    files: Arc<dyn TensorStore>,
    map: impl Fn(&str) -> Source + Send + Sync + 'static,
    dtype: DType,
    device: &Device,
    linears: LinearFormat,
    build: impl FnOnce(WeightBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    build_with_store(files, map, dtype, device, None, |backend| {
        build(WeightBuilder::new(backend, dtype, device, linears))
    })
}

/// The tensors a model was built from, by internal name, in the order the model asked for them
/// (the same `Tensor`s the model holds: no copy).
pub type TensorList = Vec<(String, Tensor)>;

/// [`build_model`] that also returns every tensor the model asked for. A model whose layers are
/// not ours to walk (candle's VAE decoder) is moved to another device by rebuilding it from this
/// list; tests use it to count what a load produced.
pub fn build_model_recorded<T>(
    files: Arc<WeightFiles>,
    map: impl Fn(&str) -> Source + Send + Sync + 'static,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<(T, TensorList)> {
    let list = Arc::new(Mutex::new(Vec::new()));
    let model = build_with_store(files, map, dtype, device, Some(list.clone()), |backend| {
        build(VarBuilder::from_backend(
            Box::new(backend),
            dtype,
            device.clone(),
        ))
    })?;
    let list = list
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    Ok((model, list))
}

fn build_with_store<T>(
    files: Arc<dyn TensorStore>,
    map: impl Fn(&str) -> Source + Send + Sync + 'static,
    _dtype: DType,
    _device: &Device,
    recorded: Option<Arc<Mutex<TensorList>>>,
    build: impl FnOnce(MappedBackend) -> candle_core::Result<T>,
) -> Result<T> {
    let first_error = Arc::new(Mutex::new(None));
    let backend = MappedBackend {
        files,
        map: Arc::new(map),
        first_error: first_error.clone(),
        recorded,
    };
    build(backend).map_err(|e| {
        first_error
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .unwrap_or(Error::Candle(e))
    })
}

/// Names and shapes of a checkpoint's tensors, whatever its format.
pub trait TensorIndex {
    fn tensor_names(&self) -> Vec<&str>;
    /// The logical shape (PyTorch order).
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The file or files, for messages.
    fn describe_files(&self) -> String;
    /// The (first) file's path, for errors.
    fn first_path(&self) -> &Path;
}

impl TensorIndex for WeightFiles {
    fn tensor_names(&self) -> Vec<&str> {
        self.names().collect()
    }

    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shape(name).map(<[usize]>::to_vec)
    }

    fn describe_files(&self) -> String {
        self.describe()
    }

    fn first_path(&self) -> &Path {
        self.path()
    }
}

impl TensorIndex for GgufFile {
    fn tensor_names(&self) -> Vec<&str> {
        self.names().collect()
    }

    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.logical_shape(name)
    }

    fn describe_files(&self) -> String {
        self.path().display().to_string()
    }

    fn first_path(&self) -> &Path {
        self.path()
    }
}

/// A guess at what a checkpoint is, from its tensor names, for "wrong model" errors.
pub fn guess_model_kind(files: &dyn TensorIndex) -> String {
    let names = files.tensor_names();
    let has = |n: &str| names.contains(&n);
    let any_prefix = |p: &str| names.iter().any(|n| n.starts_with(p));
    if has("double_blocks.0.img_mod.lin.weight") {
        "a FLUX.1 transformer".into()
    } else if has("double_blocks.0.img_attn.qkv.weight") {
        "a FLUX.2 transformer (BFL layout)".into()
    } else if has("transformer_blocks.0.attn.to_q.weight")
        && has("single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight")
    {
        "a FLUX.2 transformer (diffusers layout)".into()
    } else if has("transformer_blocks.0.norm1.linear.weight") {
        "a FLUX.1 transformer (diffusers layout)".into()
    } else if has("decoder.conv_in.weight") || has("encoder.conv_in.weight") {
        "a VAE".into()
    } else if any_prefix("model.layers.") || any_prefix("layers.0.") || any_prefix("blk.0.") {
        "a language model (text encoder)".into()
    } else if any_prefix("model.diffusion_model.") {
        "a ComfyUI/stable-diffusion checkpoint".into()
    } else if any_prefix("text_model.") {
        "a CLIP text encoder".into()
    } else {
        let mut names: Vec<&str> = names.into_iter().take(3).collect();
        names.sort_unstable();
        format!("an unknown model (tensors such as {names:?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor large enough for the threaded host load comes back with candle's own loader's
    /// bits, in every dtype the threaded path takes.
    #[test]
    fn threaded_host_load_matches_candles_loader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        // Over the threshold in bf16, not a multiple of the threads' parts.
        let n = (PARALLEL_LOAD_MIN / 2 + 12_345) / 5 * 5;
        let base = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .affine(1e-3, -7.0)
            .unwrap()
            .reshape((n / 5, 5))
            .unwrap();
        let tensors: HashMap<String, Tensor> = [
            ("bf16", base.to_dtype(DType::BF16).unwrap()),
            ("f32", base.clone()),
            (
                "small",
                base.narrow(0, 0, 10).unwrap().contiguous().unwrap(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let files = WeightFiles::open(std::slice::from_ref(&path)).unwrap();
        let reference = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        for (name, dtype) in [
            ("bf16", DType::BF16),
            ("f32", DType::F32),
            ("small", DType::F32),
        ] {
            let got = files.load(name, None, dtype, &Device::Cpu).unwrap();
            let want = &reference[name];
            assert_eq!(got.dims(), want.dims(), "{name}");
            let as_f32 = |t: &Tensor| {
                t.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            assert!(as_f32(&got) == as_f32(want), "{name} differs");
        }
    }
}
