//! cuDNN's fused attention (`SDPA_FWD`) and convolutions through its backend graph API, with
//! libcudnn opened at run time, never linked: a machine without cuDNN (or with a cuDNN that has no
//! engine for a shape) runs our own kernels instead.
//!
//! `VEETANCE_CUDNN`: unset → `libcudnn.so.9` (then `libcudnn.so`) from the loader's search path;
//! `0` or `off` → never load it; anything else → the path of the library to load.
//!
//! An operation is described once per shape (tensor descriptors, the operation, its graph), cuDNN's
//! heuristics (mode A) rank engine configurations, and the first one that finalizes into an
//! execution plan with a workspace of at most [`WORKSPACE_CAP`] is kept for that shape and stream.
//! A shape without a plan is remembered too, so that it falls back at once the next time.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaDevice, DType, Result};

type Status = i32;
type Handle = *mut c_void;
type Desc = *mut c_void;

// Values of cudnn_backend.h / cudnn_graph.h (cuDNN 9).
const DESC_POINTWISE: u32 = 0;
const DESC_CONVOLUTION: u32 = 1;
const DESC_ENGINECFG: u32 = 3;
const DESC_ENGINEHEUR: u32 = 4;
const DESC_EXECUTION_PLAN: u32 = 5;
const DESC_OP_CONV_FWD: u32 = 10;
const DESC_OP_POINTWISE: u32 = 13;
const DESC_OPERATIONGRAPH: u32 = 15;
const DESC_VARIANT_PACK: u32 = 16;
const DESC_TENSOR: u32 = 17;
const DESC_MATMUL: u32 = 18;
const DESC_OP_MATMUL: u32 = 19;
const DESC_REDUCTION: u32 = 21;
const DESC_OP_REDUCTION: u32 = 22;
const DESC_OP_SDPA_FWD: u32 = 41;

const T_HANDLE: u32 = 0;
const T_DATA_TYPE: u32 = 1;
const T_BOOLEAN: u32 = 2;
const T_INT64: u32 = 3;
const T_FLOAT: u32 = 4;
const T_VOID_PTR: u32 = 6;
const T_CONVOLUTION_MODE: u32 = 7;
const T_HEUR_MODE: u32 = 8;
const T_POINTWISE_MODE: u32 = 14;
const T_REDUCTION_OPERATOR: u32 = 18;
const T_DESCRIPTOR: u32 = 15;

const A_POINTWISE_MODE: u32 = 0;
const A_POINTWISE_MATH_PREC: u32 = 1;
const A_CONV_COMP_TYPE: u32 = 100;
const A_CONV_MODE: u32 = 101;
const A_CONV_DILATIONS: u32 = 102;
const A_CONV_FILTER_STRIDES: u32 = 103;
const A_CONV_POST_PADDINGS: u32 = 104;
const A_CONV_PRE_PADDINGS: u32 = 105;
const A_CONV_SPATIAL_DIMS: u32 = 106;
const A_HEUR_MODE: u32 = 200;
const A_HEUR_GRAPH: u32 = 201;
const A_HEUR_RESULTS: u32 = 202;
const A_PLAN_HANDLE: u32 = 400;
const A_PLAN_ENGINE_CONFIG: u32 = 401;
const A_PLAN_WORKSPACE_SIZE: u32 = 402;
const A_CONV_FWD_ALPHA: u32 = 700;
const A_CONV_FWD_BETA: u32 = 701;
const A_CONV_FWD_CONV_DESC: u32 = 702;
const A_CONV_FWD_W: u32 = 703;
const A_CONV_FWD_X: u32 = 704;
const A_CONV_FWD_Y: u32 = 705;
const A_PW_DESC: u32 = 750;
const A_PW_X: u32 = 751;
const A_PW_B: u32 = 752;
const A_PW_Y: u32 = 753;
const A_PW_ALPHA1: u32 = 754;
const A_PW_ALPHA2: u32 = 755;
const A_GRAPH_HANDLE: u32 = 800;
const A_GRAPH_OPS: u32 = 801;
const A_TENSOR_BYTE_ALIGNMENT: u32 = 900;
const A_TENSOR_DATA_TYPE: u32 = 901;
const A_TENSOR_DIMENSIONS: u32 = 902;
const A_TENSOR_STRIDES: u32 = 903;
const A_TENSOR_UNIQUE_ID: u32 = 906;
const A_TENSOR_IS_VIRTUAL: u32 = 907;
const A_TENSOR_IS_BY_VALUE: u32 = 908;
const A_VP_UNIQUE_IDS: u32 = 1000;
const A_MATMUL_COMP_TYPE: u32 = 1500;
const A_OP_MATMUL_A: u32 = 1520;
const A_OP_MATMUL_B: u32 = 1521;
const A_OP_MATMUL_C: u32 = 1522;
const A_OP_MATMUL_DESC: u32 = 1523;
const A_REDUCTION_OPERATOR: u32 = 1600;
const A_REDUCTION_COMP_TYPE: u32 = 1601;
const A_REDUCTION_DETERMINISTIC: u32 = 1602;
const A_OP_REDUCTION_X: u32 = 1610;
const A_OP_REDUCTION_Y: u32 = 1611;
const A_OP_REDUCTION_DESC: u32 = 1612;
const A_VP_DATA_POINTERS: u32 = 1001;
const A_VP_WORKSPACE: u32 = 1003;
const A_SDPA_Q: u32 = 2800;
const A_SDPA_K: u32 = 2801;
const A_SDPA_V: u32 = 2802;
const A_SDPA_O: u32 = 2803;
const A_SDPA_SCALE: u32 = 2805;

const DATA_FLOAT: u32 = 0;
const DATA_HALF: u32 = 2;
const DATA_BFLOAT16: u32 = 9;
const DATA_FP8_E4M3: u32 = 12;
const CROSS_CORRELATION: u32 = 1;
const POINTWISE_ADD: u32 = 0;
const POINTWISE_MUL: u32 = 1;
const POINTWISE_DIV: u32 = 6;
const POINTWISE_SUB: u32 = 9;
const POINTWISE_EXP: u32 = 13;
const POINTWISE_LOG: u32 = 15;
const REDUCE_ADD: u32 = 0;
const REDUCE_MAX: u32 = 3;
const REDUCE_AMAX: u32 = 4;
const HEUR_MODE_A: u32 = 3;

/// The largest workspace a plan may ask for (1.5 GiB); configurations that want more are skipped.
/// The 1024² VAE decode's largest convolution (256→256 at 1024², after the upsample) asks for
/// 1.07 GB, its layout transforms. With the upsampled input and the result, that stays below one
/// im2col chunk of our own path ([`crate::CONV_COL_LIMIT`] elements), which is what the VAE's
/// memory estimate counts.
pub const WORKSPACE_CAP: usize = 3 << 29;
/// How many of the heuristics' configurations are tried, best first.
const CONFIGS_TRIED: usize = 16;

struct Api {
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    set_stream: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    last_error: Option<unsafe extern "C" fn(*mut c_char, usize)>,
    create_desc: unsafe extern "C" fn(u32, *mut Desc) -> Status,
    destroy_desc: unsafe extern "C" fn(Desc) -> Status,
    finalize: unsafe extern "C" fn(Desc) -> Status,
    set_attr: unsafe extern "C" fn(Desc, u32, u32, i64, *const c_void) -> Status,
    get_attr: unsafe extern "C" fn(Desc, u32, u32, i64, *mut i64, *mut c_void) -> Status,
    execute: unsafe extern "C" fn(Handle, Desc, Desc) -> Status,
    version: usize,
    from: String,
    _lib: libloading::Library,
}

/// The loaded library, or why there is none.
fn api() -> std::result::Result<&'static Api, &'static str> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| e.as_str())
}

fn load() -> std::result::Result<Api, String> {
    let setting = std::env::var("VEETANCE_CUDNN").unwrap_or_default();
    let candidates: Vec<String> = match setting.trim() {
        "" => vec!["libcudnn.so.9".into(), "libcudnn.so".into()],
        "0" | "off" | "false" => return Err("turned off by VEETANCE_CUDNN".into()),
        path => vec![path.to_string()],
    };
    let mut why = Vec::new();
    for name in &candidates {
        // SAFETY: loading libcudnn runs its initialisers, which have no preconditions.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return bind(lib, name).map_err(|e| format!("{name}: {e}")),
            Err(e) => why.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "no cuDNN library could be opened ({})",
        why.join("; ")
    ))
}

fn bind(lib: libloading::Library, from: &str) -> std::result::Result<Api, String> {
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol has the signature of cudnn_graph.h's declaration, which the
            // field's type spells out.
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("symbol {}: {e}", $name))?
        };
    }
    let get_version: unsafe extern "C" fn() -> usize = sym!("cudnnGetVersion");
    // SAFETY: no arguments, no preconditions.
    let version = unsafe { get_version() };
    if version < 90000 {
        return Err(format!(
            "cuDNN {version} is older than 9.0, which the graph API here needs"
        ));
    }
    let last_error = unsafe { lib.get(b"cudnnGetLastErrorString\0") }
        .ok()
        .map(|s| *s);
    Ok(Api {
        create: sym!("cudnnCreate"),
        set_stream: sym!("cudnnSetStream"),
        error_string: sym!("cudnnGetErrorString"),
        last_error,
        create_desc: sym!("cudnnBackendCreateDescriptor"),
        destroy_desc: sym!("cudnnBackendDestroyDescriptor"),
        finalize: sym!("cudnnBackendFinalize"),
        set_attr: sym!("cudnnBackendSetAttribute"),
        get_attr: sym!("cudnnBackendGetAttribute"),
        execute: sym!("cudnnBackendExecute"),
        version,
        from: from.to_string(),
        _lib: lib,
    })
}

/// Whether cuDNN is loaded, with its version and file, or why not (for logs and benches).
pub fn describe() -> String {
    match api() {
        Ok(a) => format!(
            "cuDNN {}.{}.{} ({})",
            a.version / 10000,
            (a.version / 100) % 100,
            a.version % 100,
            a.from
        ),
        Err(e) => format!("cuDNN not in use: {e}"),
    }
}

fn check(api: &Api, status: Status, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: cuDNN returns a static NUL-terminated string for any status.
    let name = unsafe { CStr::from_ptr((api.error_string)(status)) }
        .to_string_lossy()
        .into_owned();
    let mut detail = String::new();
    if let Some(last) = api.last_error {
        let mut buf = [0 as c_char; 512];
        // SAFETY: the buffer's size is passed; cuDNN writes a NUL-terminated message into it.
        unsafe { last(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: NUL-terminated by cuDNN (the buffer starts zeroed).
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
        if !msg.is_empty() {
            detail = format!(": {msg}");
        }
    }
    bail!("cuDNN {what}: {name} ({status}){detail}")
}

/// A backend descriptor, destroyed on drop.
struct D {
    api: &'static Api,
    raw: Desc,
}

impl D {
    fn new(api: &'static Api, kind: u32) -> Result<D> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` receives a new descriptor of a valid kind.
        check(
            api,
            unsafe { (api.create_desc)(kind, &mut raw) },
            "create descriptor",
        )?;
        Ok(D { api, raw })
    }
    fn set(&self, name: u32, ty: u32, n: usize, p: *const c_void, what: &str) -> Result<()> {
        // SAFETY: `p` points at `n` elements of the C type `ty` names (the callers below).
        let s = unsafe { (self.api.set_attr)(self.raw, name, ty, n as i64, p) };
        check(self.api, s, what)
    }
    fn i64s(&self, name: u32, v: &[i64], what: &str) -> Result<()> {
        self.set(name, T_INT64, v.len(), v.as_ptr().cast(), what)
    }
    /// One value of the C type `ty` names (`T` must be that type: u32 for enums, f32, bool,
    /// a handle or a pointer).
    fn scalar<T>(&self, name: u32, ty: u32, v: &T, what: &str) -> Result<()> {
        self.set(name, ty, 1, (v as *const T).cast(), what)
    }
    fn descs(&self, name: u32, v: &[&D], what: &str) -> Result<()> {
        let raws: Vec<Desc> = v.iter().map(|d| d.raw).collect();
        self.set(name, T_DESCRIPTOR, raws.len(), raws.as_ptr().cast(), what)
    }
    fn finalize(&self, what: &str) -> Result<()> {
        // SAFETY: a descriptor of ours whose attributes are set.
        check(self.api, unsafe { (self.api.finalize)(self.raw) }, what)
    }
}

impl Drop for D {
    fn drop(&mut self) {
        // SAFETY: created by `create_desc`, destroyed once.
        unsafe { (self.api.destroy_desc)(self.raw) };
    }
}

fn data_type(dtype: DType) -> Result<u32> {
    Ok(match dtype {
        DType::BF16 => DATA_BFLOAT16,
        DType::F16 => DATA_HALF,
        DType::F32 => DATA_FLOAT,
        d => bail!("cuDNN paths take bf16, f16 or f32, not {d:?}"),
    })
}

fn tensor(api: &'static Api, uid: i64, dt: u32, dims: &[i64], strides: &[i64]) -> Result<D> {
    tensor_with(api, uid, dt, dims, strides, false)
}

/// A tensor descriptor; `by_value`: a host scalar passed in the variant pack (the scale).
fn tensor_with(
    api: &'static Api,
    uid: i64,
    dt: u32,
    dims: &[i64],
    strides: &[i64],
    by_value: bool,
) -> Result<D> {
    let t = D::new(api, DESC_TENSOR)?;
    t.scalar(A_TENSOR_DATA_TYPE, T_DATA_TYPE, &dt, "tensor data type")?;
    t.i64s(A_TENSOR_DIMENSIONS, dims, "tensor dimensions")?;
    t.i64s(A_TENSOR_STRIDES, strides, "tensor strides")?;
    t.i64s(A_TENSOR_UNIQUE_ID, &[uid], "tensor id")?;
    // Device buffers are 256-byte aligned and every offset we pass keeps 16; a host scalar is 4.
    let align = if by_value { 4 } else { 16 };
    t.i64s(A_TENSOR_BYTE_ALIGNMENT, &[align], "tensor alignment")?;
    if by_value {
        t.scalar(
            A_TENSOR_IS_BY_VALUE,
            T_BOOLEAN,
            &by_value,
            "tensor by value",
        )?;
    }
    t.finalize("tensor")?;
    Ok(t)
}

/// A virtual (never stored) f32 tensor between two operations of one graph.
fn virtual_tensor(api: &'static Api, uid: i64, dims: &[i64], strides: &[i64]) -> Result<D> {
    virtual_typed(api, uid, DATA_FLOAT, dims, strides)
}

/// A virtual tensor of data type `dt`.
fn virtual_typed(api: &'static Api, uid: i64, dt: u32, dims: &[i64], strides: &[i64]) -> Result<D> {
    let t = D::new(api, DESC_TENSOR)?;
    t.scalar(A_TENSOR_DATA_TYPE, T_DATA_TYPE, &dt, "tensor data type")?;
    t.i64s(A_TENSOR_DIMENSIONS, dims, "tensor dimensions")?;
    t.i64s(A_TENSOR_STRIDES, strides, "tensor strides")?;
    t.i64s(A_TENSOR_UNIQUE_ID, &[uid], "tensor id")?;
    t.i64s(A_TENSOR_BYTE_ALIGNMENT, &[16], "tensor alignment")?;
    t.scalar(A_TENSOR_IS_VIRTUAL, T_BOOLEAN, &true, "tensor virtual")?;
    t.finalize("virtual tensor")?;
    Ok(t)
}

/// `y = x + b` (b broadcast where its dims are 1), in f32, the alphas left at cuDNN's default
/// (the channels-last VAE graphs were measured this way).
fn add_op(api: &'static Api, x: &D, b: &D, y: &D) -> Result<(D, D)> {
    let [pw, op] = pointwise_with(api, POINTWISE_ADD, x, Some(b), y, false)?;
    Ok((pw, op))
}

/// An execution plan for one shape, and the descriptors it was made from.
struct Plan {
    plan: D,
    workspace: usize,
    _keep: Vec<D>,
}

// SAFETY: descriptors are only used under `STATES`' mutex.
unsafe impl Send for Plan {}

fn plan_for(api: &'static Api, handle: Handle, ops: &[&D]) -> Result<Plan> {
    let graph = D::new(api, DESC_OPERATIONGRAPH)?;
    graph.scalar(A_GRAPH_HANDLE, T_HANDLE, &handle, "graph handle")?;
    graph.descs(A_GRAPH_OPS, ops, "graph operations")?;
    graph.finalize("operation graph")?;
    let heur = D::new(api, DESC_ENGINEHEUR)?;
    heur.descs(A_HEUR_GRAPH, &[&graph], "heuristics graph")?;
    heur.scalar(A_HEUR_MODE, T_HEUR_MODE, &HEUR_MODE_A, "heuristics mode")?;
    heur.finalize("heuristics")?;
    let cfgs = (0..CONFIGS_TRIED)
        .map(|_| D::new(api, DESC_ENGINECFG))
        .collect::<Result<Vec<_>>>()?;
    let mut raws: Vec<Desc> = cfgs.iter().map(|d| d.raw).collect();
    let mut found = 0i64;
    // SAFETY: `raws` holds CONFIGS_TRIED engine-config descriptors for cuDNN to fill.
    let s = unsafe {
        (api.get_attr)(
            heur.raw,
            A_HEUR_RESULTS,
            T_DESCRIPTOR,
            raws.len() as i64,
            &mut found,
            raws.as_mut_ptr().cast(),
        )
    };
    check(api, s, "heuristics results")?;
    let mut tried = Vec::new();
    for cfg in cfgs.into_iter().take(found.max(0) as usize) {
        let plan = D::new(api, DESC_EXECUTION_PLAN)?;
        plan.scalar(A_PLAN_HANDLE, T_HANDLE, &handle, "plan handle")?;
        plan.descs(A_PLAN_ENGINE_CONFIG, &[&cfg], "plan engine config")?;
        if let Err(e) = plan.finalize("execution plan") {
            tried.push(e.to_string());
            continue;
        }
        let (mut n, mut ws) = (0i64, 0i64);
        // SAFETY: one int64 out.
        let s = unsafe {
            (api.get_attr)(
                plan.raw,
                A_PLAN_WORKSPACE_SIZE,
                T_INT64,
                1,
                &mut n,
                (&mut ws as *mut i64).cast(),
            )
        };
        check(api, s, "plan workspace size")?;
        if ws as usize > WORKSPACE_CAP {
            tried.push(format!("workspace {ws} bytes"));
            continue;
        }
        return Ok(Plan {
            plan,
            workspace: ws.max(0) as usize,
            _keep: vec![graph, heur, cfg],
        });
    }
    bail!(
        "cuDNN has no engine for this graph ({found} configurations; {})",
        tried.join("; ")
    )
}

/// What a plan is for: the operation and every size its descriptors hold. Hashed on every call,
/// so it is plain data, not text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// dtype, (b, h, lq, lk, d), the output's row length.
    Sdpa(DType, [i64; 5], i64),
    /// FP8 (e4m3) q, k, v and o, (b, h, lq, lk, d); o is `(b, lq, h·d)` contiguous.
    SdpaFp8([i64; 5]),
    /// dtype, x (n, c, h, w), w (k, r, s), stride, padding.
    Conv(DType, [i64; 4], [i64; 3], i64, i64),
    /// The same, channels-last, with the bias and residual adds fused when the flags say so.
    ConvNhwc(DType, [i64; 4], [i64; 3], i64, i64, bool, bool),
}

/// A handle and workspace for one stream, and the plans made on it (`None`: that shape has no
/// plan and runs our kernels).
struct State {
    handle: Handle,
    workspace: Option<CudaSlice<u8>>,
    plans: HashMap<Key, Option<Plan>>,
    /// Whether a shape without a plan was reported (once a stream, on stderr).
    reported_failure: bool,
}

// SAFETY: the handle and plans are only used under `STATES`' mutex, on their own stream.
unsafe impl Send for State {}

static STATES: OnceLock<Mutex<HashMap<usize, State>>> = OnceLock::new();

/// Runs the plan `key` (built by `build` the first time) with `ptrs` bound to `uids`. Returns
/// `Ok(false)`, having run nothing, when cuDNN is absent or has no plan for this shape.
fn run(
    dev: &CudaDevice,
    key: Key,
    build: impl FnOnce(&'static Api, Handle) -> Result<Plan>,
    uids: &[i64],
    ptrs: &[*mut c_void],
) -> Result<bool> {
    plan_then(dev, key, build, Some((uids, ptrs)))
}

/// Whether cuDNN has a plan for `key` (building it the first time), running nothing.
fn prepare(
    dev: &CudaDevice,
    key: Key,
    build: impl FnOnce(&'static Api, Handle) -> Result<Plan>,
) -> Result<bool> {
    plan_then(dev, key, build, None)
}

/// [`run`] when `pack` is given, else [`prepare`].
fn plan_then(
    dev: &CudaDevice,
    key: Key,
    build: impl FnOnce(&'static Api, Handle) -> Result<Plan>,
    pack: Option<(&[i64], &[*mut c_void])>,
) -> Result<bool> {
    let Ok(api) = api() else {
        return Ok(false);
    };
    let stream = dev.cuda_stream();
    let mut map = STATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let state = match map.entry(stream.cu_stream() as usize) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(slot) => {
            stream.context().bind_to_thread().w()?;
            let mut handle = std::ptr::null_mut();
            // SAFETY: a new handle on the current context.
            check(api, unsafe { (api.create)(&mut handle) }, "create handle")?;
            // SAFETY: the stream outlives the handle (both live for the process).
            check(
                api,
                unsafe { (api.set_stream)(handle, stream.cu_stream().cast()) },
                "set stream",
            )?;
            slot.insert(State {
                handle,
                workspace: None,
                plans: HashMap::new(),
                reported_failure: false,
            })
        }
    };
    let State {
        handle,
        workspace,
        plans,
        reported_failure,
    } = state;
    let plan = plans.entry(key).or_insert_with(|| {
        let built = stream
            .context()
            .bind_to_thread()
            .w()
            .and_then(|()| build(api, *handle));
        built
            .map_err(|e| {
                if !*reported_failure {
                    eprintln!(
                        "veetance: cuDNN has no plan for {key:?} ({e}); it runs another way \
                         (unfused, or our own kernels)"
                    );
                    *reported_failure = true;
                }
            })
            .ok()
    });
    let Some(plan) = plan.as_ref() else {
        return Ok(false);
    };
    let Some((uids, ptrs)) = pack else {
        return Ok(true);
    };
    if plan.workspace > workspace.as_ref().map_or(0, |w| w.len()) {
        *workspace = None;
        // SAFETY: scratch memory cuDNN may use as it likes.
        *workspace = Some(unsafe { dev.alloc::<u8>(plan.workspace) }?);
    }
    execute(api, *handle, plan, workspace.as_ref(), &stream, uids, ptrs)?;
    Ok(true)
}

/// Runs `plan` once with `ptrs` bound to `uids` (a variant pack a call: the pointers change).
fn execute(
    api: &'static Api,
    handle: Handle,
    plan: &Plan,
    workspace: Option<&CudaSlice<u8>>,
    stream: &std::sync::Arc<CudaStream>,
    uids: &[i64],
    ptrs: &[*mut c_void],
) -> Result<()> {
    let (ws_ptr, _guard) = match workspace {
        Some(w) if plan.workspace > 0 => {
            let (p, g) = w.device_ptr(stream);
            (p as *mut c_void, Some(g))
        }
        _ => (std::ptr::null_mut(), None),
    };
    let vp = D::new(api, DESC_VARIANT_PACK)?;
    vp.i64s(A_VP_UNIQUE_IDS, uids, "variant pack ids")?;
    vp.set(
        A_VP_DATA_POINTERS,
        T_VOID_PTR,
        ptrs.len(),
        ptrs.as_ptr().cast(),
        "variant pack pointers",
    )?;
    vp.scalar(
        A_VP_WORKSPACE,
        T_VOID_PTR,
        &ws_ptr,
        "variant pack workspace",
    )?;
    vp.finalize("variant pack")?;
    // SAFETY: the plan's tensors are bound to live device buffers of the shapes it was built for.
    let s = unsafe { (api.execute)(handle, plan.plan.raw, vp.raw) };
    check(api, s, "execute")
}

/// Whether every device pointer keeps the 16-byte alignment the tensor descriptors state.
fn aligned(ptrs: &[*mut c_void]) -> bool {
    ptrs.iter().all(|p| (*p as usize) % 16 == 0)
}

/// A 2-D cross-correlation descriptor: dilation 1, f32 accumulation, `stride` and `pad` on both
/// axes (the NCHW and NHWC convolutions share it; the layout is in their tensors' strides).
fn conv_descriptor(api: &'static Api, stride: i64, pad: i64) -> Result<D> {
    let conv = D::new(api, DESC_CONVOLUTION)?;
    conv.scalar(
        A_CONV_COMP_TYPE,
        T_DATA_TYPE,
        &DATA_FLOAT,
        "conv compute type",
    )?;
    conv.scalar(
        A_CONV_MODE,
        T_CONVOLUTION_MODE,
        &CROSS_CORRELATION,
        "conv mode",
    )?;
    conv.i64s(A_CONV_SPATIAL_DIMS, &[2], "conv spatial dims")?;
    conv.i64s(A_CONV_DILATIONS, &[1, 1], "conv dilations")?;
    conv.i64s(A_CONV_FILTER_STRIDES, &[stride, stride], "conv strides")?;
    conv.i64s(A_CONV_PRE_PADDINGS, &[pad, pad], "conv pre-padding")?;
    conv.i64s(A_CONV_POST_PADDINGS, &[pad, pad], "conv post-padding")?;
    conv.finalize("convolution")?;
    Ok(conv)
}

/// `softmax(scale · q kᵀ) v` for `q: (b, h, lq, d)`, `k`, `v: (b, h, lk, d)`, each contiguous,
/// written to `o` as `(b, lq, h·d)` rows of `o_row` elements. Pointers are device addresses of
/// `dtype` elements. Returns `Ok(false)` when cuDNN cannot run it (nothing was written).
#[allow(clippy::too_many_arguments)]
pub fn sdpa(
    dev: &CudaDevice,
    dtype: DType,
    (b, h, lq, lk, d): (usize, usize, usize, usize, usize),
    o_row: usize,
    scale: f32,
    ptrs: [*mut c_void; 4],
) -> Result<bool> {
    if !aligned(&ptrs) {
        return Ok(false);
    }
    let dt = data_type(dtype)?;
    let [b, h, lq, lk, d, o_row] = [b, h, lq, lk, d, o_row].map(|v| v as i64);
    let key = Key::Sdpa(dtype, [b, h, lq, lk, d], o_row);
    let build = move |api: &'static Api, handle: Handle| -> Result<Plan> {
        let q = tensor(api, 1, dt, &[b, h, lq, d], &[h * lq * d, lq * d, d, 1])?;
        let k = tensor(api, 2, dt, &[b, h, lk, d], &[h * lk * d, lk * d, d, 1])?;
        let v = tensor(api, 3, dt, &[b, h, lk, d], &[h * lk * d, lk * d, d, 1])?;
        let o = tensor(api, 4, dt, &[b, h, lq, d], &[lq * o_row, d, o_row, 1])?;
        let s = tensor_with(api, 5, DATA_FLOAT, &[1, 1, 1, 1], &[1, 1, 1, 1], true)?;
        let op = D::new(api, DESC_OP_SDPA_FWD)?;
        op.descs(A_SDPA_Q, &[&q], "sdpa q")?;
        op.descs(A_SDPA_K, &[&k], "sdpa k")?;
        op.descs(A_SDPA_V, &[&v], "sdpa v")?;
        op.descs(A_SDPA_O, &[&o], "sdpa o")?;
        op.descs(A_SDPA_SCALE, &[&s], "sdpa scale")?;
        op.finalize("sdpa operation")?;
        let mut plan = plan_for(api, handle, &[&op])?;
        plan._keep.extend([q, k, v, o, s, op]);
        Ok(plan)
    };
    let mut scale = scale;
    let ptrs = [
        ptrs[0],
        ptrs[1],
        ptrs[2],
        ptrs[3],
        (&mut scale as *mut f32).cast(),
    ];
    run(dev, key, build, &[1, 2, 3, 4, 5], &ptrs)
}

/// A pointwise operation `y = mode(x[, b])` in f32 with alpha1 = alpha2 = 1 stated, as cuDNN's
/// frontend states them for its fused attention graphs (the FP8 attention was measured so).
fn pointwise(api: &'static Api, mode: u32, x: &D, b: Option<&D>, y: &D) -> Result<[D; 2]> {
    pointwise_with(api, mode, x, b, y, true)
}

/// [`pointwise`], the alphas stated (`true`) or left at cuDNN's default of 1.
fn pointwise_with(
    api: &'static Api,
    mode: u32,
    x: &D,
    b: Option<&D>,
    y: &D,
    state_alphas: bool,
) -> Result<[D; 2]> {
    let pw = D::new(api, DESC_POINTWISE)?;
    pw.scalar(A_POINTWISE_MODE, T_POINTWISE_MODE, &mode, "pointwise mode")?;
    pw.scalar(
        A_POINTWISE_MATH_PREC,
        T_DATA_TYPE,
        &DATA_FLOAT,
        "pointwise precision",
    )?;
    pw.finalize("pointwise descriptor")?;
    let op = D::new(api, DESC_OP_POINTWISE)?;
    op.descs(A_PW_DESC, &[&pw], "pointwise descriptor")?;
    op.descs(A_PW_X, &[x], "pointwise x")?;
    op.descs(A_PW_Y, &[y], "pointwise y")?;
    if let Some(b) = b {
        op.descs(A_PW_B, &[b], "pointwise b")?;
    }
    if state_alphas {
        op.scalar(A_PW_ALPHA1, T_FLOAT, &1f32, "pointwise alpha1")?;
        op.scalar(A_PW_ALPHA2, T_FLOAT, &1f32, "pointwise alpha2")?;
    }
    op.finalize("pointwise operation")?;
    Ok([pw, op])
}

/// A reduction `y = op(x)` over the dims where `y` has 1, in f32.
fn reduction(api: &'static Api, op_kind: u32, x: &D, y: &D) -> Result<[D; 2]> {
    let r = D::new(api, DESC_REDUCTION)?;
    r.scalar(
        A_REDUCTION_COMP_TYPE,
        T_DATA_TYPE,
        &DATA_FLOAT,
        "reduction precision",
    )?;
    r.scalar(
        A_REDUCTION_OPERATOR,
        T_REDUCTION_OPERATOR,
        &op_kind,
        "reduction operator",
    )?;
    r.scalar(
        A_REDUCTION_DETERMINISTIC,
        T_BOOLEAN,
        &false,
        "reduction determinism",
    )?;
    r.finalize("reduction descriptor")?;
    let op = D::new(api, DESC_OP_REDUCTION)?;
    op.descs(A_OP_REDUCTION_DESC, &[&r], "reduction descriptor")?;
    op.descs(A_OP_REDUCTION_X, &[x], "reduction x")?;
    op.descs(A_OP_REDUCTION_Y, &[y], "reduction y")?;
    op.finalize("reduction operation")?;
    Ok([r, op])
}

/// A batched matmul `c = a · b` with f32 accumulation.
fn matmul(api: &'static Api, a: &D, b: &D, c: &D) -> Result<[D; 2]> {
    let m = D::new(api, DESC_MATMUL)?;
    m.scalar(
        A_MATMUL_COMP_TYPE,
        T_DATA_TYPE,
        &DATA_FLOAT,
        "matmul precision",
    )?;
    m.finalize("matmul descriptor")?;
    let op = D::new(api, DESC_OP_MATMUL)?;
    op.descs(A_OP_MATMUL_A, &[a], "matmul a")?;
    op.descs(A_OP_MATMUL_B, &[b], "matmul b")?;
    op.descs(A_OP_MATMUL_C, &[c], "matmul c")?;
    op.descs(A_OP_MATMUL_DESC, &[&m], "matmul descriptor")?;
    op.finalize("matmul operation")?;
    Ok([m, op])
}

/// How many scalars [`sdpa_fp8`] reads and writes in its caller's f32 buffer, slot `i` at float
/// `4 i` (16-byte aligned), in this order (cuda/quant.cu's `FP8_ATTN_*`): descale q, k, v, s;
/// scale s, o; amax s, o (the last two written).
pub const FP8_SDPA_SLOTS: usize = 8;

/// Whether cuDNN can run [`sdpa_fp8`] for this shape on `dev` (the plan is built and kept the
/// first time); nothing runs.
pub fn sdpa_fp8_ready(
    dev: &CudaDevice,
    shape: (usize, usize, usize, usize, usize),
) -> Result<bool> {
    let (key, build) = sdpa_fp8_plan(shape);
    prepare(dev, key, build)
}

/// cuDNN's FP8 attention on Hopper: `o = softmax(scale · q kᵀ) v` for e4m3 `q: (b, h, lq, d)`,
/// `k`, `v: (b, h, lk, d)` (contiguous, each with one scale a tensor), written as e4m3
/// `o: (b, lq, h·d)` contiguous. `scalars` points at f32 slots 4 apart: descale q, k, v, s; scale
/// s, o; amax s, o written back ([`FP8_SDPA_SLOTS`] of them). The graph is the one cuDNN's frontend
/// builds for `sdpa_fp8` (matmul, scalings, softmax as max/sub/exp/sum/div, P scaled to e4m3,
/// matmul, scalings, amaxes), which cuDNN 9 runs as one fused kernel. Returns `Ok(false)` when
/// cuDNN cannot run it (nothing ran).
pub fn sdpa_fp8(
    dev: &CudaDevice,
    shape: (usize, usize, usize, usize, usize),
    scale: f32,
    [q, k, v, o]: [*mut c_void; 4],
    scalars: *mut c_void,
) -> Result<bool> {
    let slot = |i: usize| -> *mut c_void {
        // SAFETY: the caller's buffer holds 4 · FP8_SDPA_SLOTS floats.
        unsafe { scalars.cast::<f32>().add(4 * i).cast() }
    };
    let mut ptrs = vec![q, k, v, o];
    ptrs.extend((0..FP8_SDPA_SLOTS).map(slot));
    if !aligned(&ptrs) {
        return Ok(false);
    }
    let mut scale = scale;
    ptrs.push((&mut scale as *mut f32).cast());
    let (key, build) = sdpa_fp8_plan(shape);
    run(
        dev,
        key,
        build,
        &[1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 5],
        &ptrs,
    )
}

/// The key and builder of [`sdpa_fp8`]'s plan.
#[allow(clippy::type_complexity)]
fn sdpa_fp8_plan(
    (b, h, lq, lk, d): (usize, usize, usize, usize, usize),
) -> (Key, impl FnOnce(&'static Api, Handle) -> Result<Plan>) {
    let [b, h, lq, lk, d] = [b, h, lq, lk, d].map(|v| v as i64);
    let key = Key::SdpaFp8([b, h, lq, lk, d]);
    let build = move |api: &'static Api, handle: Handle| -> Result<Plan> {
        let f8 = DATA_FP8_E4M3;
        let one = [1i64, 1, 1, 1];
        let q = tensor(api, 1, f8, &[b, h, lq, d], &[h * lq * d, lq * d, d, 1])?;
        // kᵀ as a view of the contiguous (b, h, lk, d) keys.
        let kt = tensor(api, 2, f8, &[b, h, d, lk], &[h * lk * d, lk * d, 1, d])?;
        let v = tensor(api, 3, f8, &[b, h, lk, d], &[h * lk * d, lk * d, d, 1])?;
        let o = tensor(api, 4, f8, &[b, h, lq, d], &[lq * h * d, d, h * d, 1])?;
        let attn_scale = tensor_with(api, 5, DATA_FLOAT, &one, &one, true)?;
        let sc = (6..14)
            .map(|uid| tensor(api, uid, DATA_FLOAT, &one, &one))
            .collect::<Result<Vec<_>>>()?;
        let [dq, dk, dv, ds, ss, so, amax_s, amax_o] = [0, 1, 2, 3, 4, 5, 6, 7].map(|i| &sc[i]);
        let scores = [b, h, lq, lk];
        let scores_st = [h * lq * lk, lq * lk, lk, 1];
        let rows = [b, h, lq, 1];
        let rows_st = [h * lq, lq, 1, 1];
        let out_st = [h * lq * d, lq * d, d, 1];
        let mut uid = 20;
        let mut virt = |dt: u32, dims: &[i64], st: &[i64]| {
            uid += 1;
            virtual_typed(api, uid, dt, dims, st)
        };
        let s0 = virt(DATA_FLOAT, &scores, &scores_st)?;
        let s1 = virt(DATA_FLOAT, &scores, &scores_st)?;
        let s2 = virt(DATA_FLOAT, &scores, &scores_st)?;
        let s3 = virt(DATA_FLOAT, &scores, &scores_st)?;
        let row_max = virt(DATA_FLOAT, &rows, &rows_st)?;
        let shifted = virt(DATA_FLOAT, &scores, &scores_st)?;
        let exps = virt(DATA_FLOAT, &scores, &scores_st)?;
        let sum_exp = virt(DATA_FLOAT, &rows, &rows_st)?;
        let log_sum = virt(DATA_FLOAT, &rows, &rows_st)?;
        let stats = virt(DATA_FLOAT, &rows, &rows_st)?;
        let probs = virt(DATA_FLOAT, &scores, &scores_st)?;
        let probs8 = virt(f8, &scores, &scores_st)?;
        let o0 = virt(DATA_FLOAT, &[b, h, lq, d], &out_st)?;
        let o1 = virt(DATA_FLOAT, &[b, h, lq, d], &out_st)?;
        let o2 = virt(DATA_FLOAT, &[b, h, lq, d], &out_st)?;
        let ops = [
            matmul(api, &q, &kt, &s0)?,
            pointwise(api, POINTWISE_MUL, &s0, Some(&attn_scale), &s1)?,
            pointwise(api, POINTWISE_MUL, &s1, Some(dq), &s2)?,
            pointwise(api, POINTWISE_MUL, &s2, Some(dk), &s3)?,
            reduction(api, REDUCE_MAX, &s3, &row_max)?,
            pointwise(api, POINTWISE_SUB, &s3, Some(&row_max), &shifted)?,
            pointwise(api, POINTWISE_EXP, &shifted, None, &exps)?,
            reduction(api, REDUCE_ADD, &exps, &sum_exp)?,
            pointwise(api, POINTWISE_LOG, &sum_exp, None, &log_sum)?,
            pointwise(api, POINTWISE_ADD, &row_max, Some(&log_sum), &stats)?,
            pointwise(api, POINTWISE_DIV, &exps, Some(&sum_exp), &probs)?,
            reduction(api, REDUCE_AMAX, &probs, amax_s)?,
            pointwise(api, POINTWISE_MUL, &probs, Some(ss), &probs8)?,
            matmul(api, &probs8, &v, &o0)?,
            pointwise(api, POINTWISE_MUL, &o0, Some(ds), &o1)?,
            pointwise(api, POINTWISE_MUL, &o1, Some(dv), &o2)?,
            pointwise(api, POINTWISE_MUL, &o2, Some(so), &o)?,
            reduction(api, REDUCE_AMAX, &o2, amax_o)?,
        ];
        let op_refs: Vec<&D> = ops.iter().map(|[_, op]| op).collect();
        let mut plan = plan_for(api, handle, &op_refs)?;
        plan._keep.extend([q, kt, v, o, attn_scale]);
        plan._keep.extend(sc);
        plan._keep.extend([
            s0, s1, s2, s3, row_max, shifted, exps, sum_exp, log_sum, stats, probs, probs8, o0, o1,
            o2,
        ]);
        plan._keep.extend(ops.into_iter().flatten());
        Ok(plan)
    };
    (key, build)
}

/// A 2-D cross-correlation `y = conv(x, w)` over NCHW `x: (n, c, h, w)`, `w: (k, c, r, s)`,
/// `y: (n, k, p, q)`, all contiguous `dtype`, f32 accumulation. Returns `Ok(false)` when cuDNN
/// cannot run it.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    dev: &CudaDevice,
    dtype: DType,
    (n, c, h, w): (usize, usize, usize, usize),
    (k, r, s): (usize, usize, usize),
    (p, q): (usize, usize),
    stride: usize,
    pad: usize,
    ptrs: [*mut c_void; 3],
) -> Result<bool> {
    if !aligned(&ptrs) {
        return Ok(false);
    }
    let dt = data_type(dtype)?;
    let [n, c, h, w, k, r, s, p, q, stride, pad] =
        [n, c, h, w, k, r, s, p, q, stride, pad].map(|v| v as i64);
    let key = Key::Conv(dtype, [n, c, h, w], [k, r, s], stride, pad);
    let build = move |api: &'static Api, handle: Handle| -> Result<Plan> {
        let x = tensor(api, 1, dt, &[n, c, h, w], &[c * h * w, h * w, w, 1])?;
        let wt = tensor(api, 2, dt, &[k, c, r, s], &[c * r * s, r * s, s, 1])?;
        let y = tensor(api, 3, dt, &[n, k, p, q], &[k * p * q, p * q, q, 1])?;
        let conv = conv_descriptor(api, stride, pad)?;
        let op = D::new(api, DESC_OP_CONV_FWD)?;
        op.descs(A_CONV_FWD_X, &[&x], "conv x")?;
        op.descs(A_CONV_FWD_W, &[&wt], "conv w")?;
        op.descs(A_CONV_FWD_Y, &[&y], "conv y")?;
        op.descs(A_CONV_FWD_CONV_DESC, &[&conv], "conv descriptor")?;
        op.scalar(A_CONV_FWD_ALPHA, T_FLOAT, &1.0f32, "conv alpha")?;
        op.scalar(A_CONV_FWD_BETA, T_FLOAT, &0.0f32, "conv beta")?;
        op.finalize("conv operation")?;
        let mut plan = plan_for(api, handle, &[&op])?;
        plan._keep.extend([x, wt, y, conv, op]);
        Ok(plan)
    };
    run(dev, key, build, &[1, 2, 3], &ptrs)
}

/// Whether cuDNN is loaded (so that [`conv2d_nhwc`] can run at all).
pub fn loaded() -> bool {
    api().is_ok()
}

/// Whether the channels-last convolution fuses its bias and residual adds into cuDNN's graph
/// (`VEETANCE_CUDNN_FUSE=0` turns that off, to compare).
fn fuse_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("VEETANCE_CUDNN_FUSE").as_deref(),
            Ok("0") | Ok("off")
        )
    })
}

/// A channels-last 2-D cross-correlation: `x: (n, h, w, c)`, `w: (k, r, s, c)`, `y: (n, p, q, k)`,
/// all contiguous `dtype`, f32 accumulation, and, when given, `+ bias[k]` and `+ res (n, p, q, k)`
/// in the same pass (cuDNN's runtime fusion). `ptrs`: x, w, y, then bias and res (null when
/// absent). Returns `Ok(None)` when cuDNN cannot run it, `Ok(Some(fused))` when it ran: `fused`
/// false means only the convolution ran (into y) and the caller adds bias and residual.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_nhwc(
    dev: &CudaDevice,
    dtype: DType,
    (n, c, h, w): (usize, usize, usize, usize),
    (k, r, s): (usize, usize, usize),
    (p, q): (usize, usize),
    stride: usize,
    pad: usize,
    ptrs: [*mut c_void; 5],
) -> Result<Option<bool>> {
    let (has_bias, has_res) = (!ptrs[3].is_null(), !ptrs[4].is_null());
    if !aligned(&ptrs[..3])
        || (has_bias && !aligned(&ptrs[3..4]))
        || (has_res && !aligned(&ptrs[4..]))
    {
        return Ok(None);
    }
    let dt = data_type(dtype)?;
    let [n, c, h, w, k, r, s, p, q, stride, pad] =
        [n, c, h, w, k, r, s, p, q, stride, pad].map(|v| v as i64);
    let graph = move |bias: bool, res: bool| {
        move |api: &'static Api, handle: Handle| -> Result<Plan> {
            let x = tensor(api, 1, dt, &[n, c, h, w], &[h * w * c, 1, w * c, c])?;
            let wt = tensor(api, 2, dt, &[k, c, r, s], &[r * s * c, 1, s * c, c])?;
            let y_dims = [n, k, p, q];
            let y_strides = [p * q * k, 1, q * k, k];
            let conv = conv_descriptor(api, stride, pad)?;
            let mut keep = Vec::new();
            // The convolution writes y itself, or a virtual f32 tensor the adds read.
            let conv_out = if bias || res {
                virtual_tensor(api, 10, &y_dims, &y_strides)?
            } else {
                tensor(api, 3, dt, &y_dims, &y_strides)?
            };
            let op = D::new(api, DESC_OP_CONV_FWD)?;
            op.descs(A_CONV_FWD_X, &[&x], "conv x")?;
            op.descs(A_CONV_FWD_W, &[&wt], "conv w")?;
            op.descs(A_CONV_FWD_Y, &[&conv_out], "conv y")?;
            op.descs(A_CONV_FWD_CONV_DESC, &[&conv], "conv descriptor")?;
            op.scalar(A_CONV_FWD_ALPHA, T_FLOAT, &1.0f32, "conv alpha")?;
            op.scalar(A_CONV_FWD_BETA, T_FLOAT, &0.0f32, "conv beta")?;
            op.finalize("conv operation")?;
            let mut ops = vec![op];
            let mut last = conv_out;
            if bias {
                let bt = tensor(api, 4, dt, &[1, k, 1, 1], &[k, 1, k, k])?;
                let out = if res {
                    virtual_tensor(api, 11, &y_dims, &y_strides)?
                } else {
                    tensor(api, 3, dt, &y_dims, &y_strides)?
                };
                let (pw, add) = add_op(api, &last, &bt, &out)?;
                ops.push(add);
                keep.extend([pw, bt, std::mem::replace(&mut last, out)]);
            }
            if res {
                let rt = tensor(api, 5, dt, &y_dims, &y_strides)?;
                let out = tensor(api, 3, dt, &y_dims, &y_strides)?;
                let (pw, add) = add_op(api, &last, &rt, &out)?;
                ops.push(add);
                keep.extend([pw, rt, std::mem::replace(&mut last, out)]);
            }
            let op_refs: Vec<&D> = ops.iter().collect();
            let mut plan = plan_for(api, handle, &op_refs)?;
            plan._keep.extend([x, wt, conv, last]);
            plan._keep.extend(keep);
            plan._keep.extend(ops);
            Ok(plan)
        }
    };
    let (ids, pp): (Vec<i64>, Vec<*mut c_void>) = [(1, ptrs[0]), (2, ptrs[1]), (3, ptrs[2])]
        .into_iter()
        .chain(has_bias.then_some((4, ptrs[3])))
        .chain(has_res.then_some((5, ptrs[4])))
        .unzip();
    if (has_bias || has_res) && fuse_enabled() {
        let key = Key::ConvNhwc(
            dtype,
            [n, c, h, w],
            [k, r, s],
            stride,
            pad,
            has_bias,
            has_res,
        );
        if run(dev, key, graph(has_bias, has_res), &ids, &pp)? {
            return Ok(Some(true));
        }
    }
    let key = Key::ConvNhwc(dtype, [n, c, h, w], [k, r, s], stride, pad, false, false);
    Ok(run(dev, key, graph(false, false), &ids[..3], &pp[..3])?.then_some(false))
}
