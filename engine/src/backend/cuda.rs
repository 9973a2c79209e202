//! The CUDA backend: every op of the Backend set as a hand-written CUDA kernel
//! (kernels/cuda/*.cu), shipped as PTX (kernels/ptx/*.ptx, built by scripts/build-ptx.py and
//! embedded here) that the driver JIT-compiles for the GPU at hand, so a user needs the
//! NVIDIA driver and no toolkit. cudarc loads the driver library at run time: a build with
//! this backend runs everywhere, and `new` says why there is no GPU instead of panicking.
//!
//! Weights are uploaded once as raw GGUF blocks and dequantized in registers. Everything
//! runs in order on one stream; the host waits only when it reads (logits or their top k).
//! Per-batch metadata (token ids, rope tables, slots, block tables) is uploaded once per
//! forward pass: each upload remembers what it holds and is skipped when the next layer
//! asks for the same.
//!
//! Numerics follow the CPU backend's formulas, not its bits: 8-bit activation codes per 32
//! values for quantized matvecs (a warp's lanes sum blocks in another order), f32
//! activations for the tiled prefill matmul, f32 RMSNorm sums, the device's exp and tanh.

use super::{Activation, AttnBatch, AttnParams, Backend, PrepareStats, RopeParams, WeightUse};
use crate::error::EngineError;
use crate::kv_cache::BLOCK_SIZE;
use crate::sampler::TopLogits;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use ferrite_kernels::quant::QuantType;
use ferrite_loader::GgufFile;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The PTX files: (module name, text).
pub const PTX: &[(&str, &str)] = &[
    ("matmul", include_str!("../../../kernels/ptx/matmul.ptx")),
    ("ops", include_str!("../../../kernels/ptx/ops.ptx")),
    ("attention", include_str!("../../../kernels/ptx/attention.ptx")),
    ("sample", include_str!("../../../kernels/ptx/sample.ptx")),
];

/// Weight formats with kernels, and the suffix of their kernel names.
const WEIGHT_TYPES: &[(QuantType, &str)] = &[
    (QuantType::F32, "f32"),
    (QuantType::F16, "f16"),
    (QuantType::BF16, "bf16"),
    (QuantType::Q4_0, "q4_0"),
    (QuantType::Q4_1, "q4_1"),
    (QuantType::Q5_0, "q5_0"),
    (QuantType::Q8_0, "q8_0"),
    (QuantType::Q4_K, "q4_k"),
    (QuantType::Q6_K, "q6_k"),
];

/// Untyped kernels: (module, entry).
const ENTRIES: &[(&str, &str)] = &[
    ("matmul", "quantize_q8"),
    ("ops", "rms_norm"),
    ("ops", "rope"),
    ("ops", "gated_act"),
    ("ops", "add"),
    ("ops", "scale"),
    ("ops", "add_bias"),
    ("ops", "get_rows"),
    ("ops", "kv_store"),
    ("attention", "attention"),
    ("sample", "top_k"),
];

/// Batches of at most this many rows take the warp-per-row matvec kernels (weights read
/// once per 8 rows); larger ones the shared-memory tiled matmul.
pub const MATVEC_MAX_ROWS: usize = 32;
/// Output rows per block of the matvec kernels (one warp each).
const MMV_WARPS: u32 = 4;
/// The tiled matmul's output tile (rows and tokens).
const TILE: u32 = 64;
/// Keys and query heads of the attention kernel: largest head size.
pub const MAX_HEAD_DIM: usize = 256;

fn unavailable(why: impl Into<String>) -> EngineError {
    EngineError::BackendUnavailable { name: "cuda".into(), why: why.into() }
}

/// Index of `ty` in `WEIGHT_TYPES` (and in `CudaBackend::mats`).
fn kernel_for(ty: QuantType) -> Option<usize> {
    WEIGHT_TYPES.iter().position(|(t, _)| *t == ty)
}

/// The matrix kernels of one weight format.
#[derive(Debug)]
struct MatFns {
    /// Matvec for 1 and for up to 8 tokens per warp.
    mmv1: CudaFunction,
    mmv8: CudaFunction,
    /// Tiled prefill matmul.
    mm: CudaFunction,
    embed: CudaFunction,
}

/// An activation buffer: `len` f32 on the device.
#[derive(Debug)]
pub struct CudaBuf {
    data: CudaSlice<f32>,
    len: usize,
}

/// An uploaded weight.
#[derive(Debug)]
pub enum CudaWeight {
    /// A matrix as raw GGUF blocks, `row_bytes` per row.
    Matrix { ty: QuantType, kernels: usize, n_in: usize, n_out: usize, row_bytes: usize, data: CudaSlice<u8> },
    /// A vector (norm weight, bias) as f32.
    Vector { data: CudaSlice<f32>, len: usize },
}

/// The KV cache: per layer, keys and values as f16 bits, `[slot][kv head · dim]`.
#[derive(Debug)]
pub struct CudaKv {
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    kw: usize,
    vw: usize,
}

/// A device buffer of small per-batch data that remembers what it holds, so a layer that
/// asks for the same data as the previous one uploads nothing.
#[derive(Debug, Default)]
struct Upload<T: cudarc::driver::DeviceRepr> {
    buf: Option<CudaSlice<T>>,
    held: Vec<T>,
}

/// Scratch buffers reused across ops.
#[derive(Debug, Default)]
struct Scratch {
    /// Activation codes and (d, d·Σcodes) per 32 values for quantized matvecs.
    xq: Option<CudaSlice<i8>>,
    xd: Option<CudaSlice<f32>>,
    ids: Upload<u32>,
    rows: Upload<u32>,
    slots: Upload<u32>,
    /// Rope (cos, sin) tables per parameter set, with the positions they hold.
    ropes: Vec<(RopeParams, Vec<u32>, Upload<f32>)>,
    positions: Upload<u32>,
    table_of_row: Upload<u32>,
    tables: Upload<u32>,
    table_off: Upload<u32>,
    top_ids: Option<CudaSlice<u32>>,
    top_vals: Option<CudaSlice<f32>>,
    top_counts: Option<CudaSlice<u32>>,
    top_lse: Option<CudaSlice<f32>>,
    /// Host side of reads.
    host_u32: Vec<u32>,
    host_f32: Vec<f32>,
    host_cs: Vec<f32>,
    host_cos: Vec<f32>,
    host_sin: Vec<f32>,
    host_tables: Vec<u32>,
    host_off: Vec<u32>,
}

/// The CUDA device, its loaded kernels and scratch buffers.
#[derive(Debug)]
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    device: String,
    capability: (i32, i32),
    /// Untyped kernels by entry name.
    ops: HashMap<&'static str, CudaFunction>,
    /// Matrix kernels per weight format, in `WEIGHT_TYPES` order.
    mats: Vec<MatFns>,
    /// Kept alive with the functions.
    _modules: Vec<Arc<CudaModule>>,
    scratch: Mutex<Scratch>,
    prepared: Mutex<PrepareStats>,
}

/// Grid size for a grid-stride kernel over `n` items, 256 threads a block.
fn stride_cfg(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Panics with the failing op: a CUDA error after the context is up (a fault, a lost
/// device) leaves the context unusable, and the Backend ops have no error path.
fn ok<T>(r: Result<T, cudarc::driver::DriverError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("CUDA error in {what}: {e}"))
}

impl CudaBackend {
    /// Opens GPU 0 and loads the kernels. Fails with a clear reason when the driver library
    /// is missing, there is no device, or the driver cannot JIT-compile the PTX.
    pub fn new() -> Result<Self, EngineError> {
        // SAFETY: only probes whether the driver library can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable("the NVIDIA driver library (libcuda.so) was not found"));
        }
        let n = CudaContext::device_count().map_err(|e| unavailable(format!("CUDA driver: {e}")))?;
        if n < 1 {
            return Err(unavailable("the CUDA driver reports no device"));
        }
        let ctx = CudaContext::new(0).map_err(|e| unavailable(format!("GPU 0: {e}")))?;
        // SAFETY: one stream does all the work, so cross-stream tracking is not needed;
        // buffers made from here on skip its per-launch events.
        unsafe { ctx.disable_event_tracking() };
        let device = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let capability = ctx.compute_capability().map_err(|e| unavailable(format!("{device}: {e}")))?;
        if capability < (7, 5) {
            return Err(unavailable(format!(
                "{device} has compute capability {}.{}; the kernels need 7.5 or newer",
                capability.0, capability.1
            )));
        }
        let stream = ctx.default_stream();
        let mut modules = Vec::new();
        for &(name, text) in PTX {
            let m = ctx.load_module(Ptx::from_src(text)).map_err(|e| {
                unavailable(format!(
                    "{device}: loading kernels/{name}.ptx failed ({e}); is the driver older than CUDA 12.0 (R525)?"
                ))
            })?;
            modules.push(m);
        }
        let module_of = |n: &str| &modules[PTX.iter().position(|(m, _)| *m == n).expect("known module")];
        let load = |module: &str, name: &str| {
            module_of(module).load_function(name).map_err(|e| unavailable(format!("kernel {name}: {e}")))
        };
        let mut ops = HashMap::new();
        for &(m, e) in ENTRIES {
            ops.insert(e, load(m, e)?);
        }
        let mats = WEIGHT_TYPES
            .iter()
            .map(|&(_, sfx)| {
                Ok(MatFns {
                    mmv1: load("matmul", &format!("mmv1_{sfx}"))?,
                    mmv8: load("matmul", &format!("mmv8_{sfx}"))?,
                    mm: load("matmul", &format!("mm_{sfx}"))?,
                    embed: load("matmul", &format!("embed_{sfx}"))?,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(CudaBackend {
            stream,
            device,
            capability,
            ops,
            mats,
            _modules: modules,
            scratch: Mutex::new(Scratch::default()),
            prepared: Mutex::new(PrepareStats::default()),
        })
    }

    /// The GPU's name and compute capability.
    pub fn device(&self) -> String {
        format!("{} (compute {}.{})", self.device, self.capability.0, self.capability.1)
    }

    fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uploads `data` into `up` unless it already holds it; returns its device pointer.
    fn upload<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + PartialEq + Clone>(
        &self,
        up: &mut Upload<T>,
        data: &[T],
    ) -> u64 {
        let fits = up.buf.as_ref().is_some_and(|b| b.len() >= data.len().max(1));
        if !fits {
            up.buf = Some(ok(self.stream.alloc_zeros::<T>(data.len().max(1).next_power_of_two()), "alloc"));
        } else if up.held == data {
            return self.ptr(up.buf.as_ref().expect("allocated"));
        }
        let buf = up.buf.as_mut().expect("allocated");
        if !data.is_empty() {
            ok(self.stream.memcpy_htod(data, &mut buf.slice_mut(0..data.len())), "upload");
        }
        up.held.clear();
        up.held.extend_from_slice(data);
        self.ptr(up.buf.as_ref().expect("allocated"))
    }

    /// The raw device address of a buffer (kernels take plain pointers, so one buffer may
    /// be passed as both input and output).
    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }

    /// A grown scratch buffer of at least `len` elements.
    fn grow<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        slot: &mut Option<CudaSlice<T>>,
        len: usize,
    ) -> u64 {
        if slot.as_ref().is_none_or(|b| b.len() < len.max(1)) {
            *slot = Some(ok(self.stream.alloc_zeros::<T>(len.max(1).next_power_of_two()), "alloc"));
        }
        self.ptr(slot.as_ref().expect("allocated"))
    }

    /// Launches the untyped kernel `name` (one of `ENTRIES`).
    fn launch(&self, name: &'static str, cfg: LaunchConfig, args: &[&dyn Arg]) {
        let f = self.ops.get(name).unwrap_or_else(|| panic!("kernel {name} is not in ENTRIES"));
        self.launch_fn(f, name, cfg, args);
    }

    fn launch_fn(&self, f: &CudaFunction, name: &str, cfg: LaunchConfig, args: &[&dyn Arg]) {
        let mut b = self.stream.launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: every kernel is launched with the argument list its extern "C" signature
        // in kernels/cuda declares, pointers into live buffers of the sizes the op checked.
        ok(unsafe { b.launch(cfg) }.map(|_| ()), name);
    }

    /// Waits for the stream (reads need it; also surfaces asynchronous faults).
    fn sync(&self) {
        ok(self.stream.synchronize(), "synchronize");
    }
}

/// A kernel argument of one of the types the kernels take.
trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

macro_rules! args {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
        }
    )*};
}
args!(u64, i32, f32);

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Weight = CudaWeight;
    type Kv = CudaKv;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device_name(&self) -> String {
        self.device()
    }

    fn weight(&self, file: &Arc<GgufFile>, name: &str, _usage: WeightUse) -> Result<CudaWeight, EngineError> {
        let t0 = std::time::Instant::now();
        let (view, ty, n_in, n_out) =
            match super::read_tensor(file, name, "CUDA", |t| kernel_for(t).is_some())? {
                super::Tensor::Vector(v) => {
                    let data =
                        self.stream.clone_htod(&v).map_err(|e| unavailable(format!("upload {name}: {e}")))?;
                    return Ok(CudaWeight::Vector { data, len: v.len() });
                }
                super::Tensor::Matrix { view, ty, n_in, n_out } => (view, ty, n_in, n_out),
            };
        let kernels = kernel_for(ty).expect("read_tensor checked it");
        let data =
            self.stream.clone_htod(view.data).map_err(|e| unavailable(format!("upload {name}: {e}")))?;
        let mut st = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        st.matrices += 1;
        st.bytes += view.data.len();
        st.seconds += t0.elapsed().as_secs_f64();
        st.variant = Some("cuda");
        Ok(CudaWeight::Matrix { ty, kernels, n_in, n_out, row_bytes: view.data.len() / n_out, data })
    }

    fn prepare_stats(&self) -> PrepareStats {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn alloc(&self, len: usize) -> CudaBuf {
        CudaBuf { data: ok(self.stream.alloc_zeros::<f32>(len.max(1)), "alloc"), len }
    }

    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        n_head_kv: usize,
        head_dim: usize,
        head_dim_v: usize,
    ) -> Result<CudaKv, EngineError> {
        if head_dim > MAX_HEAD_DIM || head_dim_v > MAX_HEAD_DIM {
            return Err(unavailable(format!(
                "head size {head_dim}/{head_dim_v} is over the kernels' {MAX_HEAD_DIM}"
            )));
        }
        let (kw, vw) = (n_head_kv * head_dim, n_head_kv * head_dim_v);
        let len = |w: usize| {
            n_slots.checked_mul(w).ok_or_else(|| EngineError::Invalid("KV cache size overflows".into()))
        };
        let (kl, vl) = (len(kw)?, len(vw)?);
        let mut k = Vec::with_capacity(n_layers);
        let mut v = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            let oom = |e| unavailable(format!("KV cache of {} MiB: {e}", ((kl + vl) * 2 * n_layers) >> 20));
            k.push(self.stream.alloc_zeros::<u16>(kl.max(1)).map_err(oom)?);
            v.push(self.stream.alloc_zeros::<u16>(vl.max(1)).map_err(oom)?);
        }
        Ok(CudaKv { k, v, kw, vw })
    }

    fn write(&self, buf: &mut CudaBuf, data: &[f32]) {
        if buf.data.len() < data.len() {
            buf.data = ok(self.stream.alloc_zeros::<f32>(data.len()), "alloc");
            buf.len = data.len();
        }
        if !data.is_empty() {
            ok(self.stream.memcpy_htod(data, &mut buf.data.slice_mut(0..data.len())), "write");
        }
    }

    fn read(&self, buf: &CudaBuf, len: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize(len, 0.0);
        if len > 0 {
            ok(self.stream.memcpy_dtoh(&buf.data.slice(0..len), &mut out[..]), "read");
        }
        self.sync();
    }

    fn top_k(&self, x: &CudaBuf, n_rows: usize, width: usize, k: usize, out: &mut Vec<TopLogits>) {
        out.clear();
        if n_rows == 0 || width == 0 {
            return;
        }
        let k = k.min(width);
        let mut s = self.scratch();
        let s = &mut *s;
        let ids = self.grow(&mut s.top_ids, n_rows * k);
        let vals = self.grow(&mut s.top_vals, n_rows * k);
        let counts = self.grow(&mut s.top_counts, n_rows);
        let lse = self.grow(&mut s.top_lse, n_rows);
        let cfg =
            LaunchConfig { grid_dim: (n_rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch(
            "top_k",
            cfg,
            &[&self.ptr(&x.data), &(width as i32), &(k as i32), &ids, &vals, &counts, &lse],
        );
        let Scratch { top_ids, top_vals, top_counts, top_lse, host_u32, host_f32, .. } = s;
        let (ids, vals) = (top_ids.as_ref().expect("grown"), top_vals.as_ref().expect("grown"));
        let (counts, lse) = (top_counts.as_ref().expect("grown"), top_lse.as_ref().expect("grown"));
        host_u32.resize(n_rows * k + n_rows, 0);
        host_f32.resize(n_rows * k + n_rows, 0.0);
        let (hi, hc) = host_u32.split_at_mut(n_rows * k);
        let (hv, hl) = host_f32.split_at_mut(n_rows * k);
        if k > 0 {
            ok(self.stream.memcpy_dtoh(&ids.slice(0..n_rows * k), hi), "read top ids");
            ok(self.stream.memcpy_dtoh(&vals.slice(0..n_rows * k), hv), "read top values");
        }
        ok(self.stream.memcpy_dtoh(&counts.slice(0..n_rows), hc), "read top counts");
        ok(self.stream.memcpy_dtoh(&lse.slice(0..n_rows), hl), "read lse");
        self.sync();
        for r in 0..n_rows {
            let c = (hc[r] as usize).min(k);
            let top = (0..c).map(|i| (hi[r * k + i], hv[r * k + i])).collect();
            out.push(TopLogits { top, lse: hl[r] });
        }
    }

    fn embed(
        &self,
        table: &CudaWeight,
        ids: &[u32],
        scale: f32,
        out: &mut CudaBuf,
    ) -> Result<(), EngineError> {
        let CudaWeight::Matrix { kernels, n_in, n_out, row_bytes, data, .. } = table else {
            return Err(EngineError::Invalid("embedding table is not a matrix".into()));
        };
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= *n_out) {
            return Err(EngineError::BadToken { id: bad, n_vocab: *n_out });
        }
        if ids.is_empty() {
            return Ok(());
        }
        let mut s = self.scratch();
        let idp = self.upload(&mut s.ids, ids);
        self.launch_fn(
            &self.mats[*kernels].embed,
            "embed",
            stride_cfg(ids.len() * n_in),
            &[
                &self.ptr(data),
                &(*row_bytes as u64),
                &idp,
                &self.ptr(&out.data),
                &(*n_in as i32),
                &(ids.len() as i32),
                &scale,
            ],
        );
        Ok(())
    }

    fn matmul(&self, w: &CudaWeight, x: &CudaBuf, n: usize, out: &mut CudaBuf) {
        let CudaWeight::Matrix { ty, kernels, n_in, n_out, row_bytes, data } = w else {
            panic!("a vector used as a matrix");
        };
        if n == 0 {
            return;
        }
        let (n_in, n_out) = (*n_in, *n_out);
        let fns = &self.mats[*kernels];
        let (wp, rb, xp, yp) = (self.ptr(data), *row_bytes as u64, self.ptr(&x.data), self.ptr(&out.data));
        let dims = [&(n_in as i32) as &dyn Arg, &(n_out as i32), &(n as i32)];
        if n > MATVEC_MAX_ROWS {
            let cfg = LaunchConfig {
                grid_dim: ((n_out as u32).div_ceil(TILE), (n as u32).div_ceil(TILE), 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            self.launch_fn(&fns.mm, "mm", cfg, &[&wp, &rb, &xp, &yp, dims[0], dims[1], dims[2]]);
            return;
        }
        let nt = if n == 1 { 1 } else { 8 };
        let cfg = LaunchConfig {
            grid_dim: ((n_out as u32).div_ceil(MMV_WARPS), (n as u32).div_ceil(nt), 1),
            block_dim: (32, MMV_WARPS, 1),
            shared_mem_bytes: 0,
        };
        let mmv = if nt == 1 { &fns.mmv1 } else { &fns.mmv8 };
        if matches!(ty, QuantType::F32 | QuantType::F16 | QuantType::BF16) {
            self.launch_fn(mmv, "mmv", cfg, &[&wp, &rb, &xp, &yp, dims[0], dims[1], dims[2]]);
            return;
        }
        let blocks = n * n_in / 32;
        let mut s = self.scratch();
        let s = &mut *s;
        let qp = self.grow(&mut s.xq, n * n_in);
        let dp = self.grow(&mut s.xd, 2 * blocks);
        let qcfg = LaunchConfig {
            grid_dim: (blocks.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch("quantize_q8", qcfg, &[&xp, &qp, &dp, &(blocks as u64)]);
        self.launch_fn(mmv, "mmv", cfg, &[&wp, &rb, &qp, &dp, &yp, dims[0], dims[1], dims[2]]);
    }

    fn add_bias(&self, x: &mut CudaBuf, bias: &CudaWeight, n: usize) {
        let CudaWeight::Vector { data, len } = bias else { panic!("a matrix used as a bias") };
        let total = n * len;
        self.launch(
            "add_bias",
            stride_cfg(total),
            &[&self.ptr(&x.data), &self.ptr(data), &(total as u64), &(*len as i32)],
        );
    }

    fn rms_norm(&self, x: &mut CudaBuf, weight: &CudaWeight, n_rows: usize, width: usize, eps: f32) {
        let p = self.ptr(&x.data);
        self.norm(p, weight, n_rows, width, eps, p);
    }

    fn rms_norm_to(
        &self,
        x: &CudaBuf,
        weight: &CudaWeight,
        n_rows: usize,
        width: usize,
        eps: f32,
        out: &mut CudaBuf,
    ) {
        self.norm(self.ptr(&x.data), weight, n_rows, width, eps, self.ptr(&out.data));
    }

    fn rope(&self, x: &mut CudaBuf, positions: &[u32], n_heads: usize, head_dim: usize, p: &RopeParams) {
        let half = p.n_dims / 2;
        if positions.is_empty() || half == 0 {
            return;
        }
        let mut s = self.scratch();
        let s = &mut *s;
        // One table per parameter set (a model has one or two), rewritten in place when the
        // batch's positions change: the first layer of a forward pass uploads, the rest reuse.
        let at = match s.ropes.iter().position(|(rp, ..)| rp == p) {
            Some(i) => i,
            None => {
                s.ropes.push((*p, Vec::new(), Upload::default()));
                s.ropes.len() - 1
            }
        };
        if s.ropes[at].1 != positions {
            let Scratch { ropes, host_cs, host_cos, host_sin, .. } = s;
            host_cs.clear();
            for &pos in positions {
                super::cpu::rope_cache(pos, p, host_cos, host_sin);
                host_cs.extend(host_cos.iter().zip(host_sin.iter()).flat_map(|(&c, &s)| [c, s]));
            }
            let (_, held, table) = &mut ropes[at];
            self.upload(table, host_cs);
            held.clear();
            held.extend_from_slice(positions);
        }
        let cs = self.ptr(s.ropes[at].2.buf.as_ref().expect("uploaded"));
        let total = positions.len() * n_heads * half;
        self.launch(
            "rope",
            stride_cfg(total),
            &[
                &self.ptr(&x.data),
                &cs,
                &(positions.len() as i32),
                &(n_heads as i32),
                &(head_dim as i32),
                &(half as i32),
                &i32::from(p.neox),
            ],
        );
    }

    fn kv_store(&self, kv: &mut CudaKv, layer: usize, k: &CudaBuf, v: &CudaBuf, slots: &[u32]) {
        if slots.is_empty() {
            return;
        }
        let mut s = self.scratch();
        let sp = self.upload(&mut s.slots, slots);
        let (kw, vw) = (kv.kw, kv.vw);
        self.launch(
            "kv_store",
            stride_cfg(slots.len() * kw.max(vw)),
            &[
                &self.ptr(&kv.k[layer]),
                &self.ptr(&kv.v[layer]),
                &self.ptr(&k.data),
                &self.ptr(&v.data),
                &sp,
                &(slots.len() as i32),
                &(kw as i32),
                &(vw as i32),
            ],
        );
    }

    fn attention(
        &self,
        q: &CudaBuf,
        kv: &CudaKv,
        layer: usize,
        batch: &AttnBatch,
        p: &AttnParams,
        out: &mut CudaBuf,
    ) {
        let n = batch.positions.len();
        if n == 0 {
            return;
        }
        let mut s = self.scratch();
        let s = &mut *s;
        let pos = self.upload(&mut s.positions, &batch.positions);
        let tor = self.upload(&mut s.table_of_row, &batch.table_of_row);
        // The block tables back to back, and where each starts (host vectors reused).
        let (mut flat, mut off) = (std::mem::take(&mut s.host_tables), std::mem::take(&mut s.host_off));
        flat.clear();
        off.clear();
        for t in &batch.tables {
            off.push(flat.len() as u32);
            flat.extend_from_slice(t);
        }
        let tables = self.upload(&mut s.tables, &flat);
        let offs = self.upload(&mut s.table_off, &off);
        (s.host_tables, s.host_off) = (flat, off);
        let cfg = LaunchConfig {
            grid_dim: (p.n_head as u32, n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            "attention",
            cfg,
            &[
                &self.ptr(&q.data),
                &self.ptr(&kv.k[layer]),
                &self.ptr(&kv.v[layer]),
                &pos,
                &tor,
                &tables,
                &offs,
                &self.ptr(&out.data),
                &(p.n_head as i32),
                &(p.n_head_kv as i32),
                &(p.head_dim as i32),
                &(p.head_dim_v as i32),
                &p.scale,
                &(p.window.unwrap_or(0) as i32),
                &i32::from(p.f16_accum),
                &(BLOCK_SIZE as i32),
            ],
        );
    }

    fn gated_act(&self, gate: &mut CudaBuf, up: &CudaBuf, len: usize, act: Activation) {
        let a = match act {
            Activation::Silu => 0i32,
            Activation::GeluTanh => 1,
        };
        self.launch(
            "gated_act",
            stride_cfg(len),
            &[&self.ptr(&gate.data), &self.ptr(&up.data), &(len as u64), &a],
        );
    }

    fn add(&self, x: &mut CudaBuf, y: &CudaBuf, len: usize) {
        self.launch("add", stride_cfg(len), &[&self.ptr(&x.data), &self.ptr(&y.data), &(len as u64)]);
    }

    fn scale(&self, x: &mut CudaBuf, len: usize, s: f32) {
        self.launch("scale", stride_cfg(len), &[&self.ptr(&x.data), &s, &(len as u64)]);
    }

    fn get_rows(&self, x: &CudaBuf, rows: &[u32], width: usize, out: &mut CudaBuf) {
        if rows.is_empty() {
            return;
        }
        let mut s = self.scratch();
        let rp = self.upload(&mut s.rows, rows);
        let total = rows.len() * width;
        self.launch(
            "get_rows",
            stride_cfg(total),
            &[&self.ptr(&x.data), &rp, &self.ptr(&out.data), &(total as u64), &(width as i32)],
        );
    }
}

impl CudaBackend {
    fn norm(&self, x: u64, weight: &CudaWeight, n_rows: usize, width: usize, eps: f32, out: u64) {
        let CudaWeight::Vector { data, .. } = weight else { panic!("a matrix used as a norm weight") };
        if n_rows == 0 {
            return;
        }
        let cfg =
            LaunchConfig { grid_dim: (n_rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch("rms_norm", cfg, &[&x, &self.ptr(data), &out, &(width as i32), &eps]);
    }
}
