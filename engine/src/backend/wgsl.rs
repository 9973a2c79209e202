//! The WGSL backend: every op of the Backend set as a compute shader (shaders/*.wgsl) run
//! through wgpu on Vulkan, Metal or DX12.
//!
//! Commands are recorded into one encoder and submitted only when the host needs data
//! (`read`, `write`, `top_k`) or the parameter arena is full, so a forward pass is one
//! submission with one readback: its logits, or for a sampler that needs no more, each
//! row's top k and log-sum-exp (`sample.wgsl`). Small per-op data — parameters, token ids, positions,
//! slots, block tables, rope tables — goes into a host-side arena that is uploaded just
//! before the submission, each op reading its own aligned slice. Weights are uploaded once
//! as raw GGUF blocks and dequantized in registers; matrices larger than the adapter's
//! biggest storage binding are split by rows.
//!
//! Numerics reproduce the CPU backend's bits: activations for quantized weights become the
//! same 8-bit codes, integer block sums are exact, every sum runs in the CPU kernel's order
//! (q·k in the order of the attention kernel the host CPU runs), fused multiply-adds are
//! the device's `fma` where it rounds once and an integer emulation where it does not
//! (llvmpipe), RMSNorm sums in f64 where the adapter has it, exp is the CPU's (ggml's
//! polynomial in SiLU and tiled attention, glibc's `expf` in f64 elsewhere in attention),
//! the KV cache holds f16-rounded values (as f16 where the adapter's f16 conversions
//! prove exact, [`Caps::f16`]), sampling's reductions are exact (subgroup max/min where
//! the adapter has subgroups), rope uses the CPU's cos/sin, attention walks the
//! same runs of keys in the same f32 or f16 mode and splits where the CPU splits. What
//! still differs: ranges past `ATTN_PART_KEYS` keys (split here, not on the CPU), GELU's
//! tanh, RMSNorm's sum without f64, and hardware whose division or square root is not
//! correctly rounded (Vulkan allows a few ulp).

use super::{Activation, AttnBatch, AttnParams, Backend, PrepareStats, RopeParams, WeightUse};
use crate::error::EngineError;
use crate::kv_cache::BLOCK_SIZE;
use crate::sampler::TopLogits;
use ferrite_kernels::quant::QuantType;
use ferrite_loader::GgufFile;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const EXACT: &str = include_str!("../../../shaders/exact.wgsl");
const EXACT_F64: &str = include_str!("../../../shaders/exact_f64.wgsl");
const EXACT_F32: &str = include_str!("../../../shaders/exact_f32.wgsl");
const HALF_BITS: &str = include_str!("../../../shaders/half_bits.wgsl");
const HALF_NATIVE: &str = include_str!("../../../shaders/half_native.wgsl");
const GROUP_TREE: &str = include_str!("../../../shaders/group_tree.wgsl");
const GROUP_SUBGROUP: &str = include_str!("../../../shaders/group_subgroup.wgsl");
const MATMUL_DIRECT: &str = include_str!("../../../shaders/matmul_direct.wgsl");
const MATMUL_TILED: &str = include_str!("../../../shaders/matmul_tiled.wgsl");

/// The kernel files: (name, source). Each is compiled after `common.wgsl` and the preludes
/// that fit the adapter ([`shader_source`]).
pub const SHADERS: &[(&str, &str)] = &[
    ("matmul", include_str!("../../../shaders/matmul.wgsl")),
    // matmul.wgsl again, with matmul_tiled.wgsl's staged entry points and loads.
    ("matmul_tiled", include_str!("../../../shaders/matmul.wgsl")),
    ("quantize", include_str!("../../../shaders/quantize.wgsl")),
    ("ops", include_str!("../../../shaders/ops.wgsl")),
    ("kv", include_str!("../../../shaders/kv.wgsl")),
    ("attention", include_str!("../../../shaders/attention.wgsl")),
    ("sample", include_str!("../../../shaders/sample.wgsl")),
];

/// What an adapter offers the kernels, each used only where it keeps the CPU backend's
/// bits: an `fma` that rounds once (Mesa's llvmpipe multiplies and adds), f64, f16 with
/// exact conversions (the KV cache then holds f16), and subgroup operations (for the
/// exact reductions of sampling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub fused_fma: bool,
    pub f64: bool,
    pub f16: bool,
    pub subgroups: bool,
}

impl Caps {
    /// Every combination (the shader tests validate each).
    pub fn all() -> impl Iterator<Item = Caps> {
        (0..16u8).map(|b| Caps {
            fused_fma: b & 1 != 0,
            f64: b & 2 != 0,
            f16: b & 4 != 0,
            subgroups: b & 8 != 0,
        })
    }
}

/// How [`WgpuBackend::with_options`] opens the adapter.
#[derive(Clone, Copy, Debug)]
pub struct WgpuOptions {
    /// Largest storage binding in bytes (at most the adapter's).
    pub max_binding: u64,
    /// Use f16 where the adapter offers it with exact conversions.
    pub f16: bool,
    /// Use subgroup operations where the adapter offers them.
    pub subgroups: bool,
    /// Use f64 where the adapter offers it (exact RMSNorm sums, glibc's `expf`); off, the
    /// float-pair path of adapters without it (Metal) runs.
    pub f64: bool,
    /// Run batches of [`TILED_MIN_TOKENS`] or more through the staged matmul
    /// (matmul_tiled.wgsl); `None`: on hardware adapters only. On llvmpipe, which runs
    /// workgroups on CPU cores and pays for every barrier, it takes 1.8× the direct kernel's
    /// time for a 53-token SmolLM2 prompt.
    pub tiled: Option<bool>,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions { max_binding: u64::MAX, f16: true, subgroups: true, f64: true, tiled: None }
    }
}

/// The full source of kernel file `name` as a device with `caps` compiles it: the
/// extensions it enables, the shared helpers, the exact-arithmetic prelude for its f64
/// support, `fma_exact` bound to the device's `fma` where that rounds once (else to the
/// integer emulation), f16 reads and the KV cache type, for sampling its workgroup
/// reduction, and for the matmuls their loads (direct, or from the staged tiles).
pub fn shader_source(name: &str, body: &str, caps: Caps) -> String {
    let wide = if caps.f64 { EXACT_F64 } else { EXACT_F32 };
    let fma = if caps.fused_fma { "fma" } else { "fma_soft" };
    let (half, f16) = if caps.f16 { (HALF_NATIVE, "enable f16;\n") } else { (HALF_BITS, "") };
    // Subgroup operations need no `enable` in naga (it rejects the directive); the
    // device feature gates them.
    let extra = match (name, caps.subgroups) {
        ("sample", true) => GROUP_SUBGROUP,
        ("sample", false) => GROUP_TREE,
        ("matmul", _) => MATMUL_DIRECT,
        ("matmul_tiled", _) => MATMUL_TILED,
        _ => "",
    };
    format!(
        "{f16}{COMMON}\n{half}\n{EXACT}\n{wide}\nfn fma_exact(a: f32, b: f32, c: f32) -> f32 {{\n    return {fma}(a, b, c);\n}}\n\n{extra}\n{body}"
    )
}

/// Invocations per workgroup of every kernel.
const WG: u64 = 64;
/// Workgroups per dispatch dimension (WebGPU's minimum maximum).
const MAX_GROUPS: u64 = 65535;
/// Bytes of the per-submission parameter arena.
const ARENA_BYTES: u64 = 16 << 20;
/// Parameter words of a dispatch at most.
const MAX_PARAMS: usize = 16;

/// Weight types `matmul.wgsl` reads (its `QTYPE` is the ggml type id), and for those whose
/// matmul multiplies 8-bit activation codes, the quantize.wgsl entry that makes them.
const WEIGHT_TYPES: &[(QuantType, Option<&str>)] = &[
    (QuantType::F32, None),
    (QuantType::F16, None),
    (QuantType::Q4_0, Some("quantize_q8")),
    (QuantType::Q4_1, Some("quantize_q8")),
    (QuantType::Q5_0, Some("quantize_q8")),
    (QuantType::Q8_0, Some("quantize_q8")),
    (QuantType::Q4_K, Some("quantize_q8k")),
    (QuantType::Q6_K, Some("quantize_q8k")),
];

/// Whether `ty` has kernels, and if so the activation quantizer its matmul uses.
fn weight_kind(ty: QuantType) -> Option<Option<&'static str>> {
    WEIGHT_TYPES.iter().find(|(t, _)| *t == ty).map(|&(_, q)| q)
}

/// Whether weights of type `ty` have a four-token kernel (`mm_float_tokens` for the float
/// types, `mm_quant_tokens` for the 32-value block types).
fn has_tokens_kernel(ty: QuantType) -> bool {
    weight_kind(ty) == Some(None) || ty.block_elems() == 32
}

/// An activation buffer: `len` f32 on the device.
#[derive(Debug)]
pub struct WgpuBuf {
    buf: wgpu::Buffer,
    len: usize,
}

/// Rows `row0..row0 + rows` of a matrix in one device buffer.
#[derive(Debug)]
pub struct Part {
    buf: wgpu::Buffer,
    row0: usize,
    rows: usize,
}

/// An uploaded weight.
#[derive(Debug)]
pub enum WgpuWeight {
    /// A matrix as raw GGUF blocks, split by rows to fit the binding limit.
    Matrix { ty: QuantType, n_in: usize, n_out: usize, parts: Vec<Part> },
    /// A vector (norm weight, bias) as f32.
    Vector { buf: wgpu::Buffer, len: usize },
}

/// The KV cache: per layer, keys and values as `[slot][kv head · dim]` in kv.wgsl's `kv_t`:
/// f16 where the adapter has exact f16 ([`Caps::f16`]), else f32 holding f16-rounded values.
#[derive(Debug)]
pub struct WgpuKv {
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
    kw: usize,
    vw: usize,
}

/// One compiled entry point.
#[derive(Debug)]
struct Pipe {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// What is recorded but not yet submitted.
#[derive(Debug)]
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    /// Host side of the arena: parameter and index words for the recorded ops.
    arena: Vec<u32>,
    arena_buf: wgpu::Buffer,
    /// Rope tables already in the arena this submission: (params, positions) → offset.
    ropes: Vec<(RopeParams, Vec<u32>, u64, u64)>,
    /// Attention metadata already in the arena: (positions, tables) → offset.
    attn_meta: Option<AttnMeta>,
    /// Activation codes and scales for quantized matmuls (grown as needed).
    xq: Option<(wgpu::Buffer, u64)>,
    xd: Option<(wgpu::Buffer, u64)>,
    /// Attention's per-part softmax states (grown as needed).
    attn_parts: Option<(wgpu::Buffer, u64)>,
    /// Rows' top-k results for the sampler (grown as needed).
    top: Option<(wgpu::Buffer, u64)>,
    /// Mappable buffer for `read` (grown as needed, reused every token).
    readback: Option<(wgpu::Buffer, u64)>,
}

/// An attention batch already in the arena: its positions, tables and rows, and where.
type AttnMeta = (Vec<u32>, Vec<Vec<u32>>, Vec<u32>, u64, u64);

/// A buffer binding: a whole device buffer or a slice of the arena.
enum Res<'a> {
    Buf(&'a wgpu::Buffer),
    Arena(u64, u64),
}

/// The wgpu device, its compiled kernels and the recording state.
#[derive(Debug)]
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// Entry points by (name, weight type id; 0 for untyped kernels).
    pipes: HashMap<(&'static str, u32), Pipe>,
    pending: Mutex<Pending>,
    /// Largest storage binding, bytes.
    max_binding: u64,
    /// Storage binding offset alignment, bytes.
    align: u64,
    /// How the kernels get the CPU's roundings on this adapter.
    caps: Caps,
    /// Whether batches run the staged matmul ([`WgpuOptions::tiled`]).
    tiled: bool,
    prepared: Mutex<PrepareStats>,
}

/// Entry points compiled once per weight type in `WEIGHT_TYPES`: (file, entry).
const TYPED_ENTRIES: &[(&str, &str)] = &[
    ("matmul", "mm_float"),
    ("matmul", "mm_quant"),
    ("matmul", "mm_float_tokens"),
    ("matmul", "mm_quant_tokens"),
    ("matmul", "embed"),
    ("matmul_tiled", "mm_float_tiled"),
    ("matmul_tiled", "mm_quant_tiled"),
];

/// Tokens from which a matmul may run the staged kernels (matmul_tiled.wgsl), whose
/// workgroups take 8 tokens; fewer run one output per invocation.
pub const TILED_MIN_TOKENS: usize = 8;
/// Tokens per invocation of `mm_float_tokens` and `mm_quant_tokens` (matmul_direct.wgsl),
/// which batches of that many or more take on backends without the staged kernels (float
/// weights and the 32-value block types).
const BLOCK_TOKENS: usize = 4;
/// Rows and tokens of a staged workgroup's tile (matmul_tiled.wgsl's TR and TT).
const TILE: u64 = 8;

/// The other entry points: (file, entry).
const ENTRIES: &[(&str, &str)] = &[
    ("quantize", "quantize_q8"),
    ("quantize", "quantize_q8k"),
    ("ops", "rms_norm"),
    ("ops", "rms_norm_to"),
    ("ops", "rope"),
    ("ops", "gated_act"),
    ("ops", "add"),
    ("ops", "scale"),
    ("ops", "add_bias"),
    ("ops", "get_rows"),
    ("kv", "kv_store"),
    ("attention", "attention"),
    ("attention", "attention_merge"),
    ("sample", "top_k"),
];

/// Keys one attention part covers at most: longer ranges split into more parts, merged
/// after. Keeps every invocation's loops short (software drivers cut a loop at 65535
/// iterations) and gives long decode steps more workgroups.
pub const ATTN_PART_KEYS: usize = 4096;

/// Parts a row's keys `keys` split into (as `part_range` in attention.wgsl): the CPU's
/// split-KV halves where it splits (`split`: a single-row f16 batch), each cut into as many
/// equal pieces as keep them within the cap.
fn attn_parts(keys: std::ops::Range<usize>, split: bool) -> usize {
    let (first, end) = (keys.start, keys.end);
    let (halves, longest) = match super::cpu::split_point(split, end) {
        Some(mid) => {
            let mid = mid.clamp(first, end);
            (2, (mid - first).max(end - mid))
        }
        None => (1, end - first),
    };
    let mut k = 1;
    while longest.div_ceil(k) > ATTN_PART_KEYS {
        k *= 2;
    }
    halves * k
}

/// Whether the device's WGSL `fma` rounds once, as the CPU's does: one dispatch on inputs
/// where a fused and an unfused result differ. (Vulkan lets `fma` be a multiply and an
/// add; Mesa's llvmpipe does that.)
fn fma_is_fused(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<bool, EngineError> {
    const N: usize = 64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut abc = Vec::with_capacity(3 * N);
    for _ in 0..N {
        let (a, b) = (next() * 300.0, next() * 0.37);
        abc.extend([a, b, -(a * b) + next() * 1e-3]);
    }
    let src = "@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    y[i] = fma(x[3u * i], x[3u * i + 1u], x[3u * i + 2u]);
}";
    let got = run_probe(device, queue, "fma probe", src, bytemuck::cast_slice(&abc), N, N)?;
    Ok(got.iter().zip(abc.chunks_exact(3)).all(|(&g, x)| g == x[0].mul_add(x[1], x[2]).to_bits()))
}

/// Whether the adapter's f16 conversions give every one of the 65,536 f16 bit patterns its
/// exact value (NaN as some NaN), each the way the kernels use it: weight halves through
/// `unpack2x16float` (half_native.wgsl), f32 → f16 stores into a storage `array<f16>` (the
/// KV store) and f16 → f32 loads from one (attention). Some hardware flushes f16
/// subnormals, which would change the bits of weights and cached keys. The host judges the
/// results: a shader compiler may assume there are no NaNs.
fn f16_is_exact(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<bool, EngineError> {
    const N: usize = 1 << 16;
    let value = |h: u16| half::f16::from_bits(h).to_f32();
    let same =
        |got: f32, h: u16| if value(h).is_nan() { got.is_nan() } else { got.to_bits() == value(h).to_bits() };
    let head = "@group(0) @binding(0) var<storage, read> x: array<IN>;
@group(0) @binding(1) var<storage, read_write> y: array<OUT>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 64u * 256u;
";
    let shader = |input: &str, output: &str, body: &str| {
        let soft = HALF_BITS.replace("fn f16_to_f32", "fn f16_bits_to_f32").replace("alias kv_t = f32;", "");
        format!("enable f16;\n{soft}\n{}    {body}\n}}", head.replace("IN", input).replace("OUT", output))
    };
    let patterns: Vec<u32> = (0..N as u32).collect();
    let packed: Vec<u32> = (0..N as u32 / 2).map(|i| (2 * i) | ((2 * i + 1) << 16)).collect();
    // Weight halves: bits in a word, converted by unpack2x16float.
    let src = shader("u32", "f32", "y[i] = unpack2x16float(x[i]).x;");
    let read = run_probe(device, queue, "f16 probe (unpack)", &src, &patterns, N, N)?;
    // Stores: the exact value (integer conversion) stored as f16, two per word back.
    let src = shader("u32", "f16", "y[i] = f16(f16_bits_to_f32(x[i]));");
    let stored = run_probe(device, queue, "f16 probe (store)", &src, &patterns, N, N / 2)?;
    // Loads: f16 patterns from a storage array converted to f32.
    let src = shader("f16", "f32", "y[i] = f32(x[i]);");
    let loaded = run_probe(device, queue, "f16 probe (load)", &src, &packed, N, N)?;
    let ok = (0..N).all(|i| {
        let h = i as u16;
        let st = (stored[i / 2] >> (16 * (i % 2))) as u16;
        same(f32::from_bits(read[i]), h)
            && same(half::f16::from_bits(st).to_f32(), h)
            && same(f32::from_bits(loaded[i]), h)
    });
    Ok(ok)
}

/// Runs the one-binding-in, one-binding-out compute shader `src` (entry `main`, 64
/// invocations per workgroup, rows of 256 workgroups) over `invocations` invocations and
/// returns the `out_words` words of its output.
fn run_probe(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    label: &str,
    src: &str,
    input: &[u32],
    invocations: usize,
    out_words: usize,
) -> Result<Vec<u32>, EngineError> {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let input = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(input),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let bytes = (out_words * 4) as u64;
    let output = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: input.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: output.as_entire_binding() },
        ],
    });
    let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        let groups = invocations.div_ceil(64) as u32;
        pass.dispatch_workgroups(groups.min(256), groups.div_ceil(256), 1);
    }
    enc.copy_buffer_to_buffer(&output, 0, &staging, 0, bytes);
    queue.submit([enc.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| unavailable(format!("{label}: {e}")))?;
    let view = staging.slice(..).get_mapped_range().map_err(|e| unavailable(format!("{label}: {e}")))?;
    Ok(bytemuck::cast_slice(&view).to_vec())
}

fn unavailable(why: impl Into<String>) -> EngineError {
    EngineError::BackendUnavailable { name: "wgpu".into(), why: why.into() }
}

impl WgpuBackend {
    /// Opens the best adapter. With `allow_cpu` false, a software adapter (lavapipe,
    /// WARP) counts as none: `--backend auto` wants a real GPU, tests take any.
    pub fn new(allow_cpu: bool) -> Result<Self, EngineError> {
        Self::with_options(allow_cpu, WgpuOptions::default())
    }

    /// [`WgpuBackend::new`] with `opts`: tests cap the storage binding to run on a small
    /// model the splits that a big model's weights need on a real adapter, and turn off f16
    /// and subgroups to check the paths other adapters take.
    pub fn with_options(allow_cpu: bool, opts: WgpuOptions) -> Result<Self, EngineError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| {
            unavailable(format!("no GPU adapter found ({e}); is a Vulkan, Metal or DX12 driver installed?"))
        })?;
        let info = adapter.get_info();
        if !allow_cpu && info.device_type == wgpu::DeviceType::Cpu {
            return Err(unavailable(format!("only a software adapter ({}) was found", info.name)));
        }
        let limits = adapter.limits();
        let offered = adapter.features();
        let mut wanted = wgpu::Features::empty();
        if opts.f64 {
            wanted |= wgpu::Features::SHADER_F64;
        }
        if opts.f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if opts.subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let features = offered & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ferrite"),
            required_limits: limits.clone(),
            required_features: features,
            ..Default::default()
        }))
        .map_err(|e| unavailable(format!("{}: {e}", info.name)))?;
        // A driver that rejects a kernel (the probes' included) is an unavailable backend
        // (`auto` then falls back), not wgpu's default handler's panic: a failed shader
        // translation or pipeline is an internal error, a limit a validation error.
        let scopes = [
            ("kernels rejected", device.push_error_scope(wgpu::ErrorFilter::Validation)),
            ("out of memory", device.push_error_scope(wgpu::ErrorFilter::OutOfMemory)),
            ("kernels failed to compile", device.push_error_scope(wgpu::ErrorFilter::Internal)),
        ];
        let tiled = opts.tiled.unwrap_or(info.device_type != wgpu::DeviceType::Cpu);
        let caps = Caps {
            fused_fma: fma_is_fused(&device, &queue)?,
            f64: features.contains(wgpu::Features::SHADER_F64),
            f16: features.contains(wgpu::Features::SHADER_F16)
                && adapter
                    .get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32)
                && f16_is_exact(&device, &queue)?,
            // HLSL has no subgroup id: naga derives it from the lane count, which D3D12 does
            // not promise to match how waves are formed.
            subgroups: features.contains(wgpu::Features::SUBGROUP) && info.backend != wgpu::Backend::Dx12,
        };
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(opts.max_binding.max(1 << 16))
            // Shaders address bindings with u32 byte offsets.
            .min(u64::from(u32::MAX) & !3);
        let align = limits.min_storage_buffer_offset_alignment as u64;
        let mut modules = HashMap::new();
        for (name, body) in SHADERS {
            let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(shader_source(name, body, caps).into()),
            });
            modules.insert(*name, m);
        }
        let typed = TYPED_ENTRIES.iter().flat_map(|&(f, e)| {
            WEIGHT_TYPES
                .iter()
                .filter(move |(_, q)| e == "embed" || q.is_some() == e.starts_with("mm_quant"))
                .filter(move |(t, _)| !e.ends_with("_tokens") || has_tokens_kernel(*t))
                .map(move |(t, _)| (f, e, t.ggml_id()))
        });
        let mut pipes = HashMap::new();
        for (file, entry, ty) in typed.chain(ENTRIES.iter().map(|&(f, e)| (f, e, 0))) {
            let constants = [("QTYPE", ty as f64)];
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &modules[file],
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: if file.starts_with("matmul") { &constants } else { &[] },
                    ..Default::default()
                },
                cache: None,
            });
            let layout = pipeline.get_bind_group_layout(0);
            pipes.insert((entry, ty), Pipe { pipeline, layout });
        }
        // Innermost first.
        for (what, guard) in scopes.into_iter().rev() {
            if let Some(e) = pollster::block_on(guard.pop()) {
                return Err(unavailable(format!("{}: {what}: {e}", info.name)));
            }
        }
        let arena_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("arena"),
            size: ARENA_BYTES,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(WgpuBackend {
            device,
            queue,
            info,
            pipes,
            pending: Mutex::new(Pending {
                encoder: None,
                arena: Vec::new(),
                arena_buf,
                ropes: Vec::new(),
                attn_meta: None,
                xq: None,
                xd: None,
                attn_parts: None,
                top: None,
                readback: None,
            }),
            max_binding,
            align,
            caps,
            tiled,
            prepared: Mutex::new(PrepareStats::default()),
        })
    }

    /// The adapter's name and driver, for logs.
    pub fn adapter(&self) -> String {
        let c = self.caps;
        let mut what = vec![if c.fused_fma { "fused fma" } else { "fma emulated" }];
        what.extend(c.f64.then_some("f64"));
        what.push(if c.f16 { "f16 KV cache" } else { "f32 KV cache" });
        what.extend(c.subgroups.then_some("subgroups"));
        what.extend(self.tiled.then_some("staged matmul"));
        format!("{} ({:?}, {}, {})", self.info.name, self.info.backend, self.info.driver, what.join(", "))
    }

    /// Whether the adapter is a software rasterizer (lavapipe, WARP).
    pub fn software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// How this adapter gets the CPU backend's arithmetic.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let mut padded;
        let contents = if bytes.len().is_multiple_of(4) && !bytes.is_empty() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4).max(4), 0);
            &padded[..]
        };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Submits what is recorded (after uploading the arena) and starts a fresh arena.
    fn flush(&self, st: &mut Pending) {
        if let Some(enc) = st.encoder.take() {
            if !st.arena.is_empty() {
                self.queue.write_buffer(&st.arena_buf, 0, bytemuck::cast_slice(&st.arena));
            }
            self.queue.submit([enc.finish()]);
        }
        st.arena.clear();
        st.ropes.clear();
        st.attn_meta = None;
    }

    /// Makes room in the arena for one op: `data_words` of data in `pushes` pushes (data
    /// slices and each dispatch's parameters, each aligned), submitting what is recorded if
    /// they would not fit, so that none of the op's slices straddles a submission.
    fn room(&self, st: &mut Pending, data_words: usize, pushes: usize) {
        let align_words = (self.align / 4).max(1) as usize;
        let need = (data_words + pushes * (align_words + MAX_PARAMS)) as u64 * 4;
        assert!(need <= ARENA_BYTES, "one op's data exceeds the arena");
        if st.arena.len() as u64 * 4 + need > ARENA_BYTES {
            self.flush(st);
        }
    }

    /// Appends words to the arena at an aligned offset (after `room`). Returns (byte
    /// offset, byte size).
    fn push(&self, st: &mut Pending, words: &[u32]) -> (u64, u64) {
        let align_words = (self.align / 4).max(1) as usize;
        let start = st.arena.len().next_multiple_of(align_words);
        let bytes = (words.len().max(1) * 4) as u64;
        assert!((start * 4) as u64 + bytes <= ARENA_BYTES, "arena overflow: `room` not called");
        st.arena.resize(start, 0);
        st.arena.extend_from_slice(words);
        if words.is_empty() {
            st.arena.push(0);
        }
        ((start * 4) as u64, bytes)
    }

    /// Records one dispatch of `entry` (for weight type id `ty`, 0 if untyped) with `params`
    /// at binding 0 and `res` after it, over `groups` workgroups (split into x and y when
    /// above the per-dimension limit).
    fn dispatch(
        &self,
        st: &mut Pending,
        (entry, ty): (&'static str, u32),
        params: &[u32],
        res: &[(u32, Res)],
        groups: (u64, u64),
    ) {
        let (x, y) = groups;
        if x == 0 || y == 0 {
            return;
        }
        let (gx, gy) = if x > MAX_GROUPS { (MAX_GROUPS, x.div_ceil(MAX_GROUPS) * y) } else { (x, y) };
        assert!(x <= MAX_GROUPS || y == 1, "2-D dispatch beyond the x limit");
        debug_assert!(params.len() <= MAX_PARAMS, "`room` reserves MAX_PARAMS words per dispatch");
        let (po, ps) = self.push(st, params);
        let pipe = &self.pipes[&(entry, ty)];
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &st.arena_buf,
                offset: po,
                size: std::num::NonZeroU64::new(ps),
            }),
        }];
        for (binding, r) in res {
            let resource = match r {
                Res::Buf(b) => b.as_entire_binding(),
                Res::Arena(o, s) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &st.arena_buf,
                    offset: *o,
                    size: std::num::NonZeroU64::new(*s),
                }),
            };
            entries.push(wgpu::BindGroupEntry { binding: *binding, resource });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipe.layout,
            entries: &entries,
        });
        let enc = st.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default())
        });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(&pipe.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(gx as u32, gy as u32, 1);
    }

    /// Submits what is recorded, then copies the first `len` values of `src` back to the
    /// host into `out` (replaced), through a mappable buffer reused across calls.
    fn read_back<T: bytemuck::Pod>(
        &self,
        st: &mut Pending,
        src: &wgpu::Buffer,
        len: usize,
        out: &mut Vec<T>,
    ) {
        self.flush(st);
        out.clear();
        if len == 0 {
            return;
        }
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        if st.readback.as_ref().is_none_or(|(_, cap)| *cap < bytes) {
            let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            st.readback = Some((b, bytes));
        }
        let staging = &st.readback.as_ref().expect("set above").0;
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        enc.copy_buffer_to_buffer(src, 0, staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while reading back");
        rx.recv().expect("map callback ran").expect("readback mapping failed");
        {
            let view = staging.get_mapped_range(..bytes).expect("mapped above");
            out.extend_from_slice(bytemuck::cast_slice(&view[..]));
        }
        staging.unmap();
    }

    /// Workgroups for `len` invocations in 1-D.
    fn linear(len: usize) -> (u64, u64) {
        ((len as u64).div_ceil(WG), 1)
    }

    /// A scratch buffer of at least `bytes`, grown (never shrunk) as needed.
    fn scratch(&self, slot: &mut Option<(wgpu::Buffer, u64)>, label: &str, bytes: u64) -> wgpu::Buffer {
        if slot.as_ref().is_none_or(|(_, cap)| *cap < bytes) {
            *slot = Some((self.storage(label, bytes), bytes));
        }
        slot.as_ref().expect("set above").0.clone()
    }
}

fn f(x: f32) -> u32 {
    x.to_bits()
}

fn u(x: usize) -> u32 {
    u32::try_from(x).expect("shape fits in u32")
}

impl Backend for WgpuBackend {
    type Buf = WgpuBuf;
    type Weight = WgpuWeight;
    type Kv = WgpuKv;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn device_name(&self) -> String {
        self.adapter()
    }

    fn weight(&self, file: &Arc<GgufFile>, name: &str, _usage: WeightUse) -> Result<WgpuWeight, EngineError> {
        let t0 = std::time::Instant::now();
        let (view, ty, n_in, n_out) =
            match super::read_tensor(file, name, "wgpu", |t| weight_kind(t).is_some())? {
                super::Tensor::Vector(v) => {
                    let buf = self.upload(name, bytemuck::cast_slice(&v));
                    return Ok(WgpuWeight::Vector { buf, len: v.len() });
                }
                super::Tensor::Matrix { view, ty, n_in, n_out } => (view, ty, n_in, n_out),
            };
        let row_bytes = view.data.len() / n_out;
        if row_bytes as u64 > self.max_binding {
            return Err(unavailable(format!(
                "one row of {name} ({row_bytes} bytes) exceeds the adapter's largest binding ({} bytes)",
                self.max_binding
            )));
        }
        // Rows per part: within the binding limit, and a whole number of u32 words apart
        // is not needed (kernels address bytes), but each part starts at row 0 of its buffer.
        let per_part = (self.max_binding as usize / row_bytes.max(1)).clamp(1, n_out);
        let mut parts = Vec::new();
        let mut row0 = 0;
        while row0 < n_out {
            let rows = per_part.min(n_out - row0);
            let bytes = &view.data[row0 * row_bytes..(row0 + rows) * row_bytes];
            parts.push(Part { buf: self.upload(name, bytes), row0, rows });
            row0 += rows;
        }
        let mut stats = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        stats.matrices += 1;
        stats.bytes += view.data.len();
        stats.seconds += t0.elapsed().as_secs_f64();
        stats.variant = Some("wgsl");
        Ok(WgpuWeight::Matrix { ty, n_in, n_out, parts })
    }

    fn prepare_stats(&self) -> PrepareStats {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn alloc(&self, len: usize) -> WgpuBuf {
        WgpuBuf { buf: self.storage("activations", (len * 4) as u64), len }
    }

    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        n_head_kv: usize,
        head_dim: usize,
        head_dim_v: usize,
    ) -> Result<WgpuKv, EngineError> {
        if head_dim > 256 || head_dim_v > 256 {
            return Err(unavailable(format!(
                "heads of {head_dim}/{head_dim_v} values: the attention kernel holds at most 256 per head"
            )));
        }
        let (kw, vw) = (n_head_kv * head_dim, n_head_kv * head_dim_v);
        // kv_t: f16 or f32; bindings are whole words.
        let elem = if self.caps.f16 { 2 } else { 4 };
        let bytes = |w: usize| {
            n_slots
                .checked_mul(w)
                .and_then(|x| x.checked_mul(elem))
                .map(|b| b.next_multiple_of(4))
                .filter(|&b| b as u64 <= self.max_binding)
                .ok_or_else(|| {
                    unavailable(format!(
                        "a layer's KV cache ({n_slots} slots × {w} values) exceeds the adapter's largest binding ({} MiB)",
                        self.max_binding >> 20
                    ))
                })
        };
        let (kb, vb) = (bytes(kw)?, bytes(vw)?);
        Ok(WgpuKv {
            k: (0..n_layers).map(|_| self.storage("kv.k", kb as u64)).collect(),
            v: (0..n_layers).map(|_| self.storage("kv.v", vb as u64)).collect(),
            kw,
            vw,
        })
    }

    fn write(&self, buf: &mut WgpuBuf, data: &[f32]) {
        assert!(data.len() <= buf.len, "write past the buffer");
        let mut st = self.lock();
        // Queue writes land before the next submission's commands: submit earlier ones first.
        self.flush(&mut st);
        self.queue.write_buffer(&buf.buf, 0, bytemuck::cast_slice(data));
    }

    fn read(&self, buf: &WgpuBuf, len: usize, out: &mut Vec<f32>) {
        let mut st = self.lock();
        self.read_back(&mut st, &buf.buf, len, out);
    }

    fn max_buf_len(&self) -> usize {
        (self.max_binding / 4) as usize
    }

    fn top_k(&self, x: &WgpuBuf, n_rows: usize, width: usize, k: usize, out: &mut Vec<TopLogits>) {
        out.clear();
        if n_rows == 0 || width == 0 {
            return;
        }
        assert!(n_rows * width <= x.len, "top_k past the buffer");
        // sample.wgsl's layout: per row the log-sum-exp, a spare word, k (index, value) pairs.
        let k = k.clamp(1, width);
        let stride = 2 + 2 * k;
        let mut st = self.lock();
        self.room(&mut st, 0, 1);
        let res_buf = self.scratch(&mut st.top, "top_k", (n_rows * stride * 4) as u64);
        let res = [(1, Res::Buf(&x.buf)), (2, Res::Buf(&res_buf))];
        self.dispatch(&mut st, ("top_k", 0), &[u(n_rows), u(width), u(k)], &res, (n_rows as u64, 1));
        let mut words: Vec<u32> = Vec::new();
        self.read_back(&mut st, &res_buf, n_rows * stride, &mut words);
        out.extend(words.chunks_exact(stride).map(|r| {
            TopLogits {
                lse: f32::from_bits(r[0]),
                top: r[2..]
                    .chunks_exact(2)
                    .take_while(|c| c[0] != u32::MAX)
                    .map(|c| (c[0], f32::from_bits(c[1])))
                    .collect(),
            }
        }));
    }

    fn embed(
        &self,
        table: &WgpuWeight,
        ids: &[u32],
        scale: f32,
        out: &mut WgpuBuf,
    ) -> Result<(), EngineError> {
        let WgpuWeight::Matrix { ty, n_in, n_out, parts } = table else {
            return Err(EngineError::Invalid("embedding table is not a matrix".into()));
        };
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= *n_out) {
            return Err(EngineError::BadToken { id, n_vocab: *n_out });
        }
        let mut st = self.lock();
        self.room(&mut st, ids.len(), 1 + parts.len());
        let (io, is) = self.push(&mut st, ids);
        for part in parts {
            // matmul.wgsl's parameters: width, ids, the part's rows, the table's rows, scale.
            let params = [u(*n_in), u(ids.len()), u(part.row0), u(part.rows), u(*n_out), f(scale)];
            let res = [(1, Res::Buf(&part.buf)), (5, Res::Buf(&out.buf)), (6, Res::Arena(io, is))];
            self.dispatch(&mut st, ("embed", ty.ggml_id()), &params, &res, Self::linear(ids.len() * n_in));
        }
        Ok(())
    }

    fn matmul(&self, w: &WgpuWeight, x: &WgpuBuf, n: usize, out: &mut WgpuBuf) {
        let WgpuWeight::Matrix { ty, n_in, n_out, parts } = w else {
            panic!("matmul with a vector weight");
        };
        let mut st = self.lock();
        self.room(&mut st, 0, 1 + parts.len());
        let quantizer = weight_kind(*ty).expect("unsupported types are refused at load");
        let (xq, xd) = if let Some(quantizer) = quantizer {
            let nblk = n * n_in / 32;
            let xq = self.scratch(&mut st.xq, "acts.q", (n * n_in) as u64);
            let xd = self.scratch(&mut st.xd, "acts.d", (nblk * 8) as u64);
            let res = [(1, Res::Buf(&x.buf)), (2, Res::Buf(&xq)), (3, Res::Buf(&xd))];
            // One invocation per weight block: the activation block matches it (32 or 256).
            let groups = (((*n_in / ty.block_elems()) as u64).div_ceil(WG), n as u64);
            self.dispatch(&mut st, (quantizer, 0), &[u(*n_in), u(n)], &res, groups);
            (Some(xq), Some(xd))
        } else {
            (None, None)
        };
        // The staged grid is 2-D (row tiles × token tiles): row tiles within one dimension.
        let tiled = self.tiled
            && n >= TILED_MIN_TOKENS
            && parts.iter().all(|pt| (pt.rows as u64).div_ceil(TILE) <= MAX_GROUPS);
        // Only where the staged kernels are off (software adapters by default): the gain is
        // llvmpipe's per-load cost, unmeasured on GPUs, whose small batches keep mm_*.
        let four_tokens = !self.tiled && n >= BLOCK_TOKENS && has_tokens_kernel(*ty);
        let entry = match (quantizer.is_some(), tiled) {
            (true, false) if four_tokens => "mm_quant_tokens",
            (true, false) => "mm_quant",
            (true, true) => "mm_quant_tiled",
            (false, false) if four_tokens => "mm_float_tokens",
            (false, false) => "mm_float",
            (false, true) => "mm_float_tiled",
        };
        let entry = (entry, ty.ggml_id());
        for part in parts {
            let params = [u(*n_in), u(n), u(part.row0), u(part.rows), u(*n_out), f(1.0)];
            let mut res = vec![(1, Res::Buf(&part.buf)), (5, Res::Buf(&out.buf))];
            match (&xq, &xd) {
                (Some(q), Some(d)) => {
                    res.push((3, Res::Buf(q)));
                    res.push((4, Res::Buf(d)));
                }
                _ => res.push((2, Res::Buf(&x.buf))),
            }
            let groups = if tiled {
                ((part.rows as u64).div_ceil(TILE), (n as u64).div_ceil(TILE))
            } else if four_tokens {
                ((part.rows as u64).div_ceil(WG), (n as u64).div_ceil(BLOCK_TOKENS as u64))
            } else {
                ((part.rows as u64).div_ceil(WG), n as u64)
            };
            self.dispatch(&mut st, entry, &params, &res, groups);
        }
    }

    fn add_bias(&self, x: &mut WgpuBuf, bias: &WgpuWeight, n: usize) {
        let WgpuWeight::Vector { buf, len } = bias else { panic!("a matrix used as a bias") };
        let mut st = self.lock();
        self.room(&mut st, 0, 1);
        let res = [(1, Res::Buf(&x.buf)), (3, Res::Buf(buf))];
        self.dispatch(&mut st, ("add_bias", 0), &[u(n), u(*len)], &res, Self::linear(n * len));
    }

    fn rms_norm(&self, x: &mut WgpuBuf, weight: &WgpuWeight, n_rows: usize, width: usize, eps: f32) {
        let WgpuWeight::Vector { buf, .. } = weight else { panic!("a matrix used as a norm weight") };
        let mut st = self.lock();
        self.room(&mut st, 0, 1);
        let res = [(1, Res::Buf(&x.buf)), (3, Res::Buf(buf))];
        self.dispatch(&mut st, ("rms_norm", 0), &[u(n_rows), u(width), f(eps)], &res, Self::linear(n_rows));
    }

    fn rms_norm_to(
        &self,
        x: &WgpuBuf,
        weight: &WgpuWeight,
        n_rows: usize,
        width: usize,
        eps: f32,
        out: &mut WgpuBuf,
    ) {
        let WgpuWeight::Vector { buf, .. } = weight else { panic!("a matrix used as a norm weight") };
        let mut st = self.lock();
        self.room(&mut st, 0, 1);
        let res = [(1, Res::Buf(&out.buf)), (2, Res::Buf(&x.buf)), (3, Res::Buf(buf))];
        self.dispatch(
            &mut st,
            ("rms_norm_to", 0),
            &[u(n_rows), u(width), f(eps)],
            &res,
            Self::linear(n_rows),
        );
    }

    fn rope(&self, x: &mut WgpuBuf, positions: &[u32], n_heads: usize, head_dim: usize, p: &RopeParams) {
        let half = p.n_dims / 2;
        if half == 0 || positions.is_empty() {
            return;
        }
        let mut st = self.lock();
        self.room(&mut st, positions.len() * half * 2, 2);
        let cached = st.ropes.iter().find(|(rp, pos, _, _)| rp == p && pos == positions).map(|r| (r.2, r.3));
        let (to, ts) = match cached {
            Some(c) => c,
            None => {
                let (mut cos, mut sin) = (Vec::new(), Vec::new());
                let mut table = Vec::with_capacity(positions.len() * half * 2);
                for &pos in positions {
                    super::cpu::rope_cache(pos, p, &mut cos, &mut sin);
                    for (c, s) in cos.iter().zip(&sin) {
                        table.push(c.to_bits());
                        table.push(s.to_bits());
                    }
                }
                let (o, s) = self.push(&mut st, &table);
                st.ropes.push((*p, positions.to_vec(), o, s));
                (o, s)
            }
        };
        let params = [u(positions.len()), u(n_heads), u(head_dim), u(half), p.neox as u32];
        let res = [(1, Res::Buf(&x.buf)), (2, Res::Arena(to, ts))];
        self.dispatch(&mut st, ("rope", 0), &params, &res, Self::linear(positions.len() * n_heads * half));
    }

    fn kv_store(&self, kv: &mut WgpuKv, layer: usize, k: &WgpuBuf, v: &WgpuBuf, slots: &[u32]) {
        let mut st = self.lock();
        self.room(&mut st, slots.len(), 2);
        let (so, ss) = self.push(&mut st, slots);
        let res = [
            (1, Res::Buf(&kv.k[layer])),
            (2, Res::Buf(&k.buf)),
            (3, Res::Buf(&v.buf)),
            (4, Res::Arena(so, ss)),
            (5, Res::Buf(&kv.v[layer])),
        ];
        let params = [u(slots.len()), u(kv.kw), u(kv.vw)];
        self.dispatch(&mut st, ("kv_store", 0), &params, &res, Self::linear(slots.len() * kv.kw.max(kv.vw)));
    }

    fn attention(
        &self,
        q: &WgpuBuf,
        kv: &WgpuKv,
        layer: usize,
        batch: &AttnBatch,
        p: &AttnParams,
        out: &mut WgpuBuf,
    ) {
        assert!(
            p.head_dim <= 256 && p.head_dim_v <= 256,
            "attention kernel holds at most 256 values per head"
        );
        let n = batch.positions.len();
        if n == 0 {
            return;
        }
        // Parts per row: the CPU's split of long single-row f16 batches, and the cap.
        let split = p.f16_accum && p.single_row;
        let n_parts =
            batch.positions.iter().map(|&pos| attn_parts(p.keys(pos as usize), split)).max().unwrap_or(1);
        // Rows per dispatch pair, so that their partial states fit one binding.
        let row_bytes = (p.n_head * n_parts * (p.head_dim_v + 2) * 4) as u64;
        let per = ((self.max_binding / row_bytes) as usize).clamp(1, n);
        let meta_words = 2 * n + batch.tables.len() + 1 + batch.tables.iter().map(Vec::len).sum::<usize>();
        let mut st = self.lock();
        // The metadata and every dispatch pair's parameters in one reservation: a flush
        // between them would drop the metadata the later pairs read.
        self.room(&mut st, meta_words, 1 + 2 * n.div_ceil(per));
        let same = st.attn_meta.as_ref().is_some_and(|(pos, tables, rows, _, _)| {
            pos == &batch.positions && tables == &batch.tables && rows == &batch.table_of_row
        });
        if !same {
            let mut meta: Vec<u32> = Vec::new();
            meta.extend_from_slice(&batch.positions);
            meta.extend_from_slice(&batch.table_of_row);
            let mut off = u(2 * n + batch.tables.len() + 1);
            for t in &batch.tables {
                meta.push(off);
                off += u(t.len());
            }
            meta.push(off);
            for t in &batch.tables {
                meta.extend_from_slice(t);
            }
            let (o, s) = self.push(&mut st, &meta);
            st.attn_meta =
                Some((batch.positions.clone(), batch.tables.clone(), batch.table_of_row.clone(), o, s));
        }
        let (mo, ms) = st.attn_meta.as_ref().map(|m| (m.3, m.4)).expect("set above");
        let part_buf = self.scratch(&mut st.attn_parts, "attention.parts", per as u64 * row_bytes);
        let mut row0 = 0;
        while row0 < n {
            let nr = per.min(n - row0);
            let params = [
                u(nr),
                u(p.n_head),
                u(p.n_head_kv),
                u(p.head_dim),
                u(p.head_dim_v),
                f(p.scale),
                u(p.window.unwrap_or(0)),
                u(BLOCK_SIZE),
                p.f16_accum as u32,
                u(n_parts),
                u(row0),
                u32::from(split),
                u(ATTN_PART_KEYS),
                u(n),
                // The f16 mode sums scores in the CPU's order (the reference build's vector width).
                u(ferrite_kernels::cpu::attn::AttnKernel::Scalar.lanes()),
            ];
            let res = [
                (1, Res::Buf(&q.buf)),
                (2, Res::Buf(&kv.k[layer])),
                (3, Res::Buf(&kv.v[layer])),
                (4, Res::Arena(mo, ms)),
                (5, Res::Buf(&part_buf)),
            ];
            self.dispatch(&mut st, ("attention", 0), &params, &res, ((nr * p.n_head * n_parts) as u64, 1));
            let res = [(5, Res::Buf(&part_buf)), (6, Res::Buf(&out.buf))];
            self.dispatch(
                &mut st,
                ("attention_merge", 0),
                &params,
                &res,
                Self::linear(nr * p.n_head * p.head_dim_v),
            );
            row0 += nr;
        }
    }

    fn gated_act(&self, gate: &mut WgpuBuf, up: &WgpuBuf, len: usize, act: Activation) {
        let mut st = self.lock();
        self.room(&mut st, 0, 1);
        let code = match act {
            Activation::Silu => 0,
            Activation::GeluTanh => 1,
        };
        let res = [(1, Res::Buf(&gate.buf)), (2, Res::Buf(&up.buf))];
        self.dispatch(&mut st, ("gated_act", 0), &[u(len), code], &res, Self::linear(len));
    }

    fn add(&self, x: &mut WgpuBuf, y: &WgpuBuf, len: usize) {
        let mut st = self.lock();
        self.room(&mut st, 0, 1);
        let res = [(1, Res::Buf(&x.buf)), (2, Res::Buf(&y.buf))];
        self.dispatch(&mut st, ("add", 0), &[u(len)], &res, Self::linear(len));
    }

    fn scale(&self, x: &mut WgpuBuf, len: usize, s: f32) {
        let mut st = self.lock();
        self.room(&mut st, 0, 1);
        let res = [(1, Res::Buf(&x.buf))];
        self.dispatch(&mut st, ("scale", 0), &[u(len), f(s)], &res, Self::linear(len));
    }

    fn get_rows(&self, x: &WgpuBuf, rows: &[u32], width: usize, out: &mut WgpuBuf) {
        let mut st = self.lock();
        self.room(&mut st, rows.len(), 2);
        let (ro, rs) = self.push(&mut st, rows);
        let res = [(1, Res::Buf(&out.buf)), (2, Res::Buf(&x.buf)), (4, Res::Arena(ro, rs))];
        self.dispatch(
            &mut st,
            ("get_rows", 0),
            &[u(rows.len()), u(width)],
            &res,
            Self::linear(rows.len() * width),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust side's tile matches matmul_tiled.wgsl's rows and tokens per workgroup.
    #[test]
    fn tile_matches_the_shader() {
        assert!(MATMUL_TILED.contains(&format!("const TR: u32 = {TILE}u;")));
        assert!(MATMUL_TILED.contains(&format!("const TT: u32 = {TILE}u;")));
    }
}
