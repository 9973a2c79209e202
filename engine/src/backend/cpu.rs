//! The CPU backend: the reference every other backend is checked against. Matrices in a
//! format with packed SIMD kernels are repacked at load (eight rows interleaved, see
//! `ferrite_kernels::cpu::packed`); the rest stay in the memory mapping. Matmuls quantize
//! activations once per call and run integer dot products over output rows in parallel;
//! the other ops are plain loops parallelized with rayon where the work is large enough.

use super::{Activation, AttnBatch, AttnParams, Backend, PrepareStats, RopeParams, WeightUse};
use crate::error::EngineError;
use crate::kv_cache::BLOCK_SIZE;
use crate::sampler::TopLogits;
use ferrite_kernels::cpu as k;
use ferrite_kernels::cpu::attn::{self, HeadKv, Online};
use ferrite_kernels::cpu::attn_tile::{self, Tile, TILE};
use ferrite_kernels::cpu::math;
use ferrite_kernels::cpu::mem::HugePages;
use ferrite_kernels::cpu::packed::{PackArena, PackScratch, PackedMatrix};
use ferrite_kernels::quant::QuantType;
use ferrite_loader::GgufFile;
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CPU backend.
#[derive(Debug, Default)]
pub struct CpuBackend {
    scratch: Mutex<(k::Scratch, PackScratch)>,
    prepared: Mutex<PrepareStats>,
    /// Huge-page memory the repacked weights share.
    arena: PackArena,
}

impl CpuBackend {
    /// A backend using rayon's global pool (size it with `rayon::ThreadPoolBuilder`).
    pub fn new() -> Self {
        Self::default()
    }
}

/// A weight on the CPU: a matrix borrowed from the mapping, or a small vector as f32.
#[derive(Debug)]
pub enum CpuWeight {
    /// A matrix of `n_out` rows of `n_in` values, in the file's format.
    Matrix {
        /// The mapped file.
        file: Arc<GgufFile>,
        /// Byte range of the data.
        range: Range<usize>,
        /// Block format.
        ty: QuantType,
        /// Values per row.
        n_in: usize,
        /// Rows.
        n_out: usize,
        /// The rows repacked for the SIMD kernels, when the format and CPU have them.
        packed: Option<PackedMatrix>,
    },
    /// A vector (norm weights, biases), dequantized once.
    Vector(Vec<f32>),
}

impl CpuWeight {
    fn vector(&self) -> &[f32] {
        match self {
            CpuWeight::Vector(v) => v,
            CpuWeight::Matrix { .. } => panic!("a matrix used where a vector is expected"),
        }
    }
}

/// KV storage: per layer, keys and values as f16 bits (llama.cpp's default f16 cache: half
/// the bytes of f32, converted with F16C where attention reads them). Head-major:
/// `[kv head][slot][dim]`, so the attention job of one KV head streams one contiguous
/// range (blocks of a sequence are allocated in order) instead of every other row pair or
/// every other page, which defeated the hardware prefetchers (decode at 4096 tokens spent
/// half its attention time waiting for memory).
#[derive(Debug)]
pub struct CpuKv {
    /// Every layer's keys then values, on huge pages (attention streams them every token).
    mem: HugePages,
    /// `u16`s per layer of keys and of values.
    k_len: usize,
    v_len: usize,
    slots: usize,
    heads: usize,
    dk: usize,
    dv: usize,
}

impl CpuKv {
    /// Layer `layer`'s keys and values.
    fn layer(&self, layer: usize) -> (&[u16], &[u16]) {
        let all: &[u16] = bytemuck::cast_slice(self.mem.as_slice());
        all[layer * (self.k_len + self.v_len)..][..self.k_len + self.v_len].split_at(self.k_len)
    }

    /// Layer `layer`'s keys and values, for writing.
    fn layer_mut(&mut self, layer: usize) -> (&mut [u16], &mut [u16]) {
        let (kl, vl) = (self.k_len, self.v_len);
        let all: &mut [u16] = bytemuck::cast_slice_mut(self.mem.as_mut_slice());
        all[layer * (kl + vl)..][..kl + vl].split_at_mut(kl)
    }

    /// Head `g`'s keys and values of layer `layer`, rows indexed by slot.
    fn head(&self, layer: usize, g: usize) -> HeadKv<'_> {
        let (k, v) = self.layer(layer);
        HeadKv {
            k,
            v,
            k_stride: self.dk,
            v_stride: self.dv,
            k_off: g * self.slots * self.dk,
            v_off: g * self.slots * self.dv,
        }
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type Kv = CpuKv;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn weight(&self, file: &Arc<GgufFile>, name: &str, usage: WeightUse) -> Result<CpuWeight, EngineError> {
        let (view, ty, n_in, n_out) = match super::read_tensor(file, name, "CPU", k::has_matmul)? {
            super::Tensor::Vector(v) => return Ok(CpuWeight::Vector(v)),
            super::Tensor::Matrix { view, ty, n_in, n_out } => (view, ty, n_in, n_out),
        };
        let packed = if usage == WeightUse::Table {
            None
        } else {
            let t0 = std::time::Instant::now();
            let p = PackedMatrix::pack_in(&self.arena, ty, view.data, n_in, n_out);
            if let Some(p) = &p {
                // The packed copy is what the kernels read from now on.
                file.release(file.header().tensor_range(view.info));
                let mut st = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
                st.matrices += 1;
                st.bytes += p.bytes();
                st.seconds += t0.elapsed().as_secs_f64();
                st.variant = Some(p.isa().name());
            }
            p
        };
        Ok(CpuWeight::Matrix {
            file: file.clone(),
            range: file.header().tensor_range(view.info),
            ty,
            n_in,
            n_out,
            packed,
        })
    }

    fn prepare_stats(&self) -> PrepareStats {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn alloc(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        n_head_kv: usize,
        head_dim: usize,
        head_dim_v: usize,
    ) -> Result<CpuKv, EngineError> {
        let len = |d: usize| {
            n_slots
                .checked_mul(n_head_kv)
                .and_then(|x| x.checked_mul(d))
                .ok_or_else(|| EngineError::Invalid("KV cache size overflows".into()))
        };
        let (k_len, v_len) = (len(head_dim)?, len(head_dim_v)?);
        let bytes = k_len
            .checked_add(v_len)
            .and_then(|x| x.checked_mul(n_layers))
            .and_then(|x| x.checked_mul(2))
            .ok_or_else(|| EngineError::Invalid("KV cache size overflows".into()))?;
        let mem = HugePages::zeroed(bytes)
            .ok_or_else(|| EngineError::Invalid(format!("cannot allocate a {bytes}-byte KV cache")))?;
        Ok(CpuKv { mem, k_len, v_len, slots: n_slots, heads: n_head_kv, dk: head_dim, dv: head_dim_v })
    }

    fn write(&self, buf: &mut Vec<f32>, data: &[f32]) {
        if buf.len() < data.len() {
            buf.resize(data.len(), 0.0);
        }
        buf[..data.len()].copy_from_slice(data);
    }

    fn read(&self, buf: &Vec<f32>, len: usize, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(&buf[..len]);
    }

    /// Straight from the logits buffer: no copy of the rows per decode step.
    fn top_k(&self, x: &Vec<f32>, n_rows: usize, width: usize, k: usize, out: &mut Vec<TopLogits>) {
        out.clear();
        if width > 0 {
            out.extend(x[..n_rows * width].chunks_exact(width).map(|r| TopLogits::of_row(r, k)));
        }
    }

    fn embed(
        &self,
        table: &CpuWeight,
        ids: &[u32],
        scale: f32,
        out: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        let CpuWeight::Matrix { file, range, ty, n_in, n_out, .. } = table else {
            return Err(EngineError::Invalid("embedding table is not a matrix".into()));
        };
        let row_bytes = ty.row_bytes(*n_in).expect("validated at load");
        let data = &file.bytes()[range.clone()];
        ensure_len(out, ids.len() * n_in);
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= *n_out {
                return Err(EngineError::BadToken { id, n_vocab: *n_out });
            }
            let src = &data[id as usize * row_bytes..(id as usize + 1) * row_bytes];
            let dst = &mut out[i * n_in..(i + 1) * n_in];
            ty.dequantize_row(src, dst).expect("row length validated at load");
            if scale != 1.0 {
                dst.iter_mut().for_each(|x| *x *= scale);
            }
        }
        Ok(())
    }

    fn matmul(&self, w: &CpuWeight, x: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        let CpuWeight::Matrix { file, range, ty, n_in, n_out, packed } = w else {
            panic!("matmul with a vector weight");
        };
        ensure_len(out, n * n_out);
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (scratch, pack_scratch) = &mut *guard;
        if let Some(p) = packed {
            p.matmul(&x[..n * n_in], n, &mut out[..n * n_out], pack_scratch);
            return;
        }
        k::matmul(
            *ty,
            &file.bytes()[range.clone()],
            *n_in,
            *n_out,
            &x[..n * n_in],
            n,
            &mut out[..n * n_out],
            scratch,
        );
    }

    fn matmul_shared<const M: usize>(
        &self,
        ws: [&CpuWeight; M],
        x: &Vec<f32>,
        n: usize,
        outs: [&mut Vec<f32>; M],
    ) {
        let mats = ws.map(|w| match w {
            CpuWeight::Matrix { packed: Some(p), .. } => Some(p),
            _ => None,
        });
        let first = mats[0];
        let together = first.is_some_and(|f| mats.iter().all(|m| m.is_some_and(|m| m.shares_input_with(f))));
        if !together {
            for (w, out) in ws.into_iter().zip(outs) {
                self.matmul(w, x, n, out);
            }
            return;
        }
        let mats = mats.map(|m| m.expect("every matrix packed: checked above"));
        let n_in = mats[0].n_in();
        let mut i = 0;
        let outs = outs.map(|o| {
            let len = n * mats[i].n_out();
            i += 1;
            ensure_len(o, len);
            &mut o[..len]
        });
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (_, pack_scratch) = &mut *guard;
        PackedMatrix::matmul_many(mats, &x[..n * n_in], n, outs, pack_scratch);
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &CpuWeight, n: usize) {
        let b = bias.vector();
        for row in x[..n * b.len()].chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
    }

    fn rms_norm(&self, x: &mut Vec<f32>, weight: &CpuWeight, n_rows: usize, width: usize, eps: f32) {
        let w = weight.vector();
        x[..n_rows * width].par_chunks_mut(width).with_min_len(64).for_each(|row| {
            let s = rms_scale(row, eps);
            row.iter_mut().zip(w).for_each(|(x, w)| *x = (*x * s) * w);
        });
    }

    fn rms_norm_to(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        n_rows: usize,
        width: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) {
        let w = weight.vector();
        ensure_len(out, n_rows * width);
        out[..n_rows * width]
            .par_chunks_mut(width)
            .zip(x[..n_rows * width].par_chunks(width))
            .with_min_len(16)
            .for_each(|(o, row)| {
                let s = rms_scale(row, eps);
                o.iter_mut().zip(row).zip(w).for_each(|((o, x), w)| *o = (*x * s) * w);
            });
    }

    fn rope(&self, x: &mut Vec<f32>, positions: &[u32], n_heads: usize, head_dim: usize, p: &RopeParams) {
        let width = n_heads * head_dim;
        x[..positions.len() * width].par_chunks_mut(width).zip(positions.par_iter()).for_each(
            |(row, &pos)| {
                ROPE_SCRATCH.with_borrow_mut(|(cos, sin)| {
                    rope_cache(pos, p, cos, sin);
                    for head in row.chunks_exact_mut(head_dim) {
                        rope_head(head, cos, sin, p);
                    }
                })
            },
        );
    }

    fn kv_store(&self, kv: &mut CpuKv, layer: usize, k: &Vec<f32>, v: &Vec<f32>, slots: &[u32]) {
        let (dk, dv) = (kv.dk, kv.dv);
        let (kw, vw) = (kv.heads * dk, kv.heads * dv);
        let (heads, n_slots) = (kv.heads, kv.slots);
        let (kl, vl) = kv.layer_mut(layer);
        for (i, &s) in slots.iter().enumerate() {
            for g in 0..heads {
                let (ko, vo) = ((g * n_slots + s as usize) * dk, (g * n_slots + s as usize) * dv);
                let kd: &mut [f16] = kl[ko..ko + dk].reinterpret_cast_mut();
                kd.convert_from_f32_slice(&k[i * kw + g * dk..i * kw + (g + 1) * dk]);
                let vd: &mut [f16] = vl[vo..vo + dv].reinterpret_cast_mut();
                vd.convert_from_f32_slice(&v[i * vw + g * dv..i * vw + (g + 1) * dv]);
            }
        }
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        kv: &CpuKv,
        layer: usize,
        batch: &AttnBatch,
        p: &AttnParams,
        out: &mut Vec<f32>,
    ) {
        let n = batch.positions.len();
        let (qw, ow) = (p.n_head * p.head_dim, p.n_head * p.head_dim_v);
        ensure_len(out, n * ow);
        let group = p.n_head / p.n_head_kv;
        debug_assert!(kv.dk == p.head_dim && kv.dv == p.head_dim_v && kv.heads == p.n_head_kv);
        if !p.f16_accum {
            return attention_tiled(q, kv, layer, batch, p, &mut out[..n * ow]);
        }
        let heads = heads_per_job(n, p.n_head, group, rayon::current_num_threads());
        let jobs_per_row = p.n_head / heads;
        let tail = Tail::new(n * jobs_per_row);
        out[..n * ow].par_chunks_mut(heads * p.head_dim_v).enumerate().for_each(|(job, o)| {
            tail.start();
            let (row, h0) = (job / jobs_per_row, job % jobs_per_row * heads);
            let g = h0 / group;
            let qh = &q[row * qw + h0 * p.head_dim..row * qw + (h0 + heads) * p.head_dim];
            let table = &batch.tables[batch.table_of_row[row] as usize];
            let keys = p.keys(batch.positions[row] as usize);
            HEAD_SCRATCH.with_borrow_mut(|sc| attend(qh, heads, &kv.head(layer, g), table, keys, p, sc, o));
            tail.finish();
        });
    }

    fn gated_act(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize, act: Activation) {
        gate[..len].par_chunks_mut(4096).zip(up[..len].par_chunks(4096)).for_each(|(g, u)| match act {
            Activation::Silu => math::silu_mul(g, u),
            Activation::GeluTanh => g.iter_mut().zip(u).for_each(|(g, u)| *g = gelu_tanh(*g) * u),
        });
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) {
        x[..len].iter_mut().zip(&y[..len]).for_each(|(x, y)| *x += y);
    }

    fn scale(&self, x: &mut Vec<f32>, len: usize, s: f32) {
        x[..len].iter_mut().for_each(|x| *x *= s);
    }

    fn get_rows(&self, x: &Vec<f32>, rows: &[u32], width: usize, out: &mut Vec<f32>) {
        ensure_len(out, rows.len() * width);
        for (j, &r) in rows.iter().enumerate() {
            let r = r as usize;
            out[j * width..(j + 1) * width].copy_from_slice(&x[r * width..(r + 1) * width]);
        }
    }
}

fn ensure_len(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// 1/√(mean(x²) + eps), summed in f64 as ggml does.
fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let sum: f64 = row.iter().map(|&x| (x * x) as f64).sum();
    let mean = (sum / row.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// GELU, tanh approximation, as ggml's CPU backend evaluates it: through a table indexed by
/// the f16-rounded input that holds f16 results (`GGML_GELU_FP16`), exact outside ±10.
pub fn gelu_tanh(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let xh = f16::from_f32(x).to_f32();
    f16::from_f32(gelu_tanh_exact(xh)).to_f32()
}

/// GELU, tanh approximation, in f32, in the operation order of llama.cpp's compiled table
/// (`1 + A·x·x` fused as `fma(x, x·A, 1)` by GCC's contraction; glibc's `tanhf`): with it,
/// all 65536 f16 entries of ggml's GELU table match (one differs without the fusion).
pub fn gelu_tanh_exact(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = x.mul_add(x * 0.044_715, 1.0);
    (1.0 + (SQRT_2_OVER_PI * x * inner).tanh()) * (0.5 * x)
}

/// cos/sin for each rotated pair of a position into `cos`/`sin` (replaced), with YaRN where
/// enabled (ggml's rope_yarn).
pub(crate) fn rope_cache(pos: u32, p: &RopeParams, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    let half = p.n_dims / 2;
    let theta_scale = p.base.powf(-2.0 / p.n_dims as f32);
    let corr = yarn_corr_dims(p);
    cos.clear();
    sin.clear();
    let mut theta_extrap = pos as f32;
    for i in 0..half {
        let theta_interp = p.freq_scale * theta_extrap;
        let mut theta = theta_interp;
        let mut mscale = p.attn_factor;
        if p.ext_factor != 0.0 {
            let ramp = yarn_ramp(corr.0, corr.1, 2 * i) * p.ext_factor;
            theta = theta_interp * (1.0 - ramp) + theta_extrap * ramp;
            mscale *= 1.0 + 0.1 * (1.0 / p.freq_scale).ln();
        }
        cos.push(theta.cos() * mscale);
        sin.push(theta.sin() * mscale);
        theta_extrap *= theta_scale;
    }
}

fn yarn_corr_dim(n_dims: usize, n_ctx_orig: usize, n_rot: f32, base: f32) -> f32 {
    n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln())
}

fn yarn_corr_dims(p: &RopeParams) -> (f32, f32) {
    if p.ext_factor == 0.0 {
        return (0.0, 0.0);
    }
    let start = yarn_corr_dim(p.n_dims, p.n_ctx_orig, p.beta_fast, p.base).floor().max(0.0);
    let end = yarn_corr_dim(p.n_dims, p.n_ctx_orig, p.beta_slow, p.base).ceil().min(p.n_dims as f32 - 1.0);
    (start, end)
}

fn yarn_ramp(low: f32, high: f32, i0: usize) -> f32 {
    let y = ((i0 / 2) as f32 - low) / (high - low).max(0.001);
    1.0 - y.clamp(0.0, 1.0)
}

fn rope_head(x: &mut [f32], cos: &[f32], sin: &[f32], p: &RopeParams) {
    let half = p.n_dims / 2;
    for i in 0..half {
        let (a, b) = if p.neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
        x[b] = x0.mul_add(sin[i], x1 * cos[i]);
    }
}

/// Per-worker buffers for `attend`, reused across rows and heads.
#[derive(Default)]
struct HeadScratch {
    q: Vec<f32>,
    acc: Vec<f32>,
    acc2: Vec<f32>,
}

thread_local! {
    /// Each worker's attention buffers, kept between calls so that a decode step allocates
    /// nothing (they only grow).
    static HEAD_SCRATCH: std::cell::RefCell<HeadScratch> = std::cell::RefCell::default();
    /// Each worker's rope cos/sin tables, likewise.
    static ROPE_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = std::cell::RefCell::default();
}

/// The jobs of one parallel call, counted through so that a worker whose job ends after the
/// last one has started waits for the others spinning: handed back to rayon it would fall
/// asleep, and the last job's worker would have to wake it (on a 2-vCPU VM, 20–30 µs per
/// decode attention call at depth 4096, where the jobs run 250 µs; docs/PERFORMANCE.md).
struct Tail {
    jobs: usize,
    started: AtomicUsize,
    done: AtomicUsize,
}

impl Tail {
    /// Longest spin: past it, a peer is likely descheduled and sleeping costs nothing.
    const SPIN_MAX: Duration = Duration::from_millis(1);

    fn new(jobs: usize) -> Self {
        Tail { jobs, started: AtomicUsize::new(0), done: AtomicUsize::new(0) }
    }

    fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(&self) {
        self.done.fetch_add(1, Ordering::Release);
        if self.started.load(Ordering::Relaxed) < self.jobs {
            return;
        }
        let t0 = Instant::now();
        while self.done.load(Ordering::Acquire) < self.jobs && t0.elapsed() < Self::SPIN_MAX {
            std::hint::spin_loop();
        }
    }
}

/// Query heads per attention job: a divisor of the GQA group (heads sharing a KV head
/// share each key and value load), as large as possible while the jobs still keep every
/// thread busy and evenly loaded.
fn heads_per_job(rows: usize, n_head: usize, group: usize, threads: usize) -> usize {
    (1..=group.min(attn::MAX_HEADS))
        .rev()
        .filter(|d| group.is_multiple_of(*d))
        .find(|d| {
            let jobs = rows * n_head / d;
            jobs >= threads && (jobs.is_multiple_of(threads) || jobs >= 4 * threads)
        })
        .unwrap_or(1)
}

/// Attention of `heads` query heads (sharing one KV head) over keys `range` of a sequence
/// in a batch of under 64 rows (llama.cpp's f16 mode, see `ferrite_kernels::cpu::attn`):
/// online softmax (no score matrix), in runs of consecutive slots (one cache block each).
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    heads: usize,
    kv: &HeadKv,
    table: &[u32],
    range: Range<usize>,
    p: &AttnParams,
    sc: &mut HeadScratch,
    out: &mut [f32],
) {
    let HeadScratch { q: q16, acc, acc2 } = sc;
    let dv = p.head_dim_v;
    acc.resize(heads * dv, 0.0);
    acc2.resize(heads * dv, 0.0);
    q16.clear();
    q16.extend(q.iter().map(|&x| f16::from_f32(x).to_f32()));
    let q = &q16[..];
    // llama.cpp splits the cells of a single-row batch evenly across its threads (the
    // reference ran with 2) once it looks at 512 or more of them, each part accumulated in
    // f16, the parts merged in f32 in order.
    if let Some(mid) = split_point(p.f16_accum && p.single_row, range.end) {
        let mid = mid.clamp(range.start, range.end);
        let mut s0 = Online::new(heads, acc);
        attend_range(q, kv, table, range.start..mid, p, &mut s0);
        let mut s1 = Online::new(heads, acc2);
        attend_range(q, kv, table, mid..range.end, p, &mut s1);
        for h in 0..heads {
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            let o = &mut out[h * dv..(h + 1) * dv];
            o.fill(0.0);
            for part in [&s0, &s1] {
                if part.l[h] == 0.0 {
                    continue;
                }
                // As ggml's reduce: libm `expf` (glibc's bits), `x·c_old + (y·c_new)` fused.
                let mn = m.max(part.m[h]);
                let (c_old, c_new) = (k::math::exp_glibc(m - mn), k::math::exp_glibc(part.m[h] - mn));
                for (o, y) in o.iter_mut().zip(&part.acc[h * dv..(h + 1) * dv]) {
                    *o = o.mul_add(c_old, y * c_new);
                }
                l = l.mul_add(c_old, part.l[h] * c_new);
                m = mn;
            }
            let inv = if l == 0.0 { 0.0 } else { 1.0 / l };
            o.iter_mut().for_each(|o| *o *= inv);
        }
        return;
    }
    let mut st = Online::new(heads, acc);
    attend_range(q, kv, table, range, p, &mut st);
    for h in 0..heads {
        let inv = if st.l[h] > 0.0 { 1.0 / st.l[h] } else { 0.0 };
        for (o, a) in out[h * dv..(h + 1) * dv].iter_mut().zip(&st.acc[h * dv..(h + 1) * dv]) {
            *o = a * inv;
        }
    }
}

// A run (one cache block) must fit the kernel's run buffers.
const _: () = assert!(BLOCK_SIZE <= attn::MAX_RUN);

/// Feeds positions `range` to `st`, one run of consecutive slots per cache block.
fn attend_range(q: &[f32], kv: &HeadKv, table: &[u32], range: Range<usize>, p: &AttnParams, st: &mut Online) {
    let bs = BLOCK_SIZE;
    // The run of the range from position `t`: its first slot and length.
    let run_at = |t: usize| (table[t / bs] as usize * bs + t % bs, (bs - t % bs).min(range.end - t));
    let mut t = range.start;
    while t < range.end {
        let (slot0, n) = run_at(t);
        // The next run's keys and values, fetched while this one computes.
        let ahead: [&[u8]; 2] = match t + n < range.end {
            true => {
                let (s, m) = run_at(t + n);
                let k = &kv.k[s * kv.k_stride + kv.k_off..][..(m - 1) * kv.k_stride + p.head_dim];
                let v = &kv.v[s * kv.v_stride + kv.v_off..][..(m - 1) * kv.v_stride + p.head_dim_v];
                [bytemuck::cast_slice(k), bytemuck::cast_slice(v)]
            }
            false => [&[], &[]],
        };
        let run = attn::Run { q, dk: p.head_dim, kv, slot0, n, scale: p.scale, ahead };
        attn::attend_run(&run, st);
        t += n;
    }
}

/// Cells from which llama.cpp splits a single-row batch (its split-KV decode).
const SPLIT_KV_MIN: usize = 512;
/// Parts of a split-KV decode: the reference ran llama.cpp with 2 threads.
const SPLIT_KV_PARTS: usize = 2;
/// llama.cpp pads the cells it attends over to a multiple of this.
const KV_PAD: usize = 256;

/// Where llama.cpp splits the keys of a single-row batch whose sequence holds `len`
/// positions, if it does: it attends over `max(256, len rounded up to 256)` cells and splits
/// them evenly between its threads once there are 512 or more
/// (`split`: the batch is a single row in f16 mode).
pub(crate) fn split_point(split: bool, len: usize) -> Option<usize> {
    let cells = len.next_multiple_of(KV_PAD).max(KV_PAD);
    (split && cells >= SPLIT_KV_MIN).then(|| cells.div_ceil(SPLIT_KV_PARTS))
}

/// Rows per tiled-attention job: consecutive rows of one sequence share each converted tile.
const TILE_ROWS: usize = 16;

/// Per-worker buffers for [`attend_tiled`].
#[derive(Default)]
struct TileScratch {
    tile: Tile,
    acc: Vec<f32>,
    m: Vec<f32>,
    s: Vec<f32>,
}

/// Attention of a batch of 64 rows or more as llama.cpp computes it (see
/// `ferrite_kernels::cpu::attn_tile`): jobs of up to [`TILE_ROWS`] consecutive rows of one
/// sequence, each tile of keys converted once per job and KV head.
fn attention_tiled(q: &[f32], kv: &CpuKv, layer: usize, batch: &AttnBatch, p: &AttnParams, out: &mut [f32]) {
    let n = batch.positions.len();
    let ow = p.n_head * p.head_dim_v;
    let mut jobs = Vec::with_capacity(n.div_ceil(TILE_ROWS));
    let mut rest = out;
    let mut r = 0;
    while r < n {
        let mut e = r + 1;
        while e < n && e - r < TILE_ROWS && batch.table_of_row[e] == batch.table_of_row[r] {
            e += 1;
        }
        let (head, tail) = rest.split_at_mut((e - r) * ow);
        jobs.push((r..e, head));
        rest = tail;
        r = e;
    }
    jobs.into_par_iter().for_each_init(TileScratch::default, |sc, (rows, o)| {
        attend_tiled(q, kv, layer, batch, p, rows, sc, o)
    });
}

/// One job of [`attention_tiled`]: rows `rows` (one sequence), every head, into `out`.
#[allow(clippy::too_many_arguments)]
fn attend_tiled(
    q: &[f32],
    kv: &CpuKv,
    layer: usize,
    batch: &AttnBatch,
    p: &AttnParams,
    rows: Range<usize>,
    sc: &mut TileScratch,
    out: &mut [f32],
) {
    let (dk, dv, group) = (p.head_dim, p.head_dim_v, p.n_head / p.n_head_kv);
    let (qw, ow) = (p.n_head * dk, p.n_head * dv);
    let table = &batch.tables[batch.table_of_row[rows.start] as usize];
    let bs = BLOCK_SIZE;
    let slot = |t: usize| table[t / bs] as usize * bs + t % bs;
    let keys = |r: usize| p.keys(batch.positions[r] as usize);
    let lo = rows.clone().map(|r| keys(r).start).min().unwrap_or(0);
    let hi = rows.clone().map(|r| keys(r).end).max().unwrap_or(0);
    let states = rows.len() * group;
    let TileScratch { tile, acc, m, s } = sc;
    acc.resize(states * dv, 0.0);
    for g in 0..p.n_head_kv {
        let head = kv.head(layer, g);
        acc.fill(0.0);
        m.clear();
        m.resize(states, f32::NEG_INFINITY);
        s.clear();
        s.resize(states, 0.0);
        for t0 in (lo / TILE * TILE..hi).step_by(TILE) {
            let hull = lo.max(t0) - t0..hi.min(t0 + TILE) - t0;
            tile.load(&head, dk, dv, hull, |j| slot(t0 + j));
            for (ri, r) in rows.clone().enumerate() {
                let k = keys(r);
                let lanes = k.start.max(t0)..k.end.min(t0 + TILE);
                if lanes.is_empty() {
                    continue;
                }
                for hh in 0..group {
                    let (h, i) = (g * group + hh, ri * group + hh);
                    let qh = &q[r * qw + h * dk..][..dk];
                    let mut st = attn_tile::State { m: m[i], s: s[i], acc: &mut acc[i * dv..(i + 1) * dv] };
                    attn_tile::update(qh, tile, lanes.start - t0..lanes.end - t0, p.scale, &mut st);
                    (m[i], s[i]) = (st.m, st.s);
                }
            }
        }
        for ri in 0..rows.len() {
            for hh in 0..group {
                let (h, i) = (g * group + hh, ri * group + hh);
                let st = attn_tile::State { m: m[i], s: s[i], acc: &mut acc[i * dv..(i + 1) * dv] };
                attn_tile::finish(&st, &mut out[ri * ow + h * dv..][..dv]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (values in [-1, 1), never all zero).
    fn rand_vec(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Naive attention of one query row over keys `first..=pos`, in f64.
    fn naive(
        q: &[f32],
        keys: &[Vec<f32>],
        values: &[Vec<f32>],
        first: usize,
        pos: usize,
        scale: f32,
    ) -> Vec<f32> {
        let scores: Vec<f64> = (first..=pos)
            .map(|t| q.iter().zip(&keys[t]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f64 = w.iter().sum();
        let dv = values[0].len();
        (0..dv)
            .map(|d| ((first..=pos).zip(&w).map(|(t, w)| w * values[t][d] as f64).sum::<f64>() / z) as f32)
            .collect()
    }

    #[test]
    fn attention_matches_naive_reference() {
        let b = CpuBackend::new();
        let mut seed = 7u64;
        // (heads, kv heads, head dim, keys, window, f16 mode, split-KV decode)
        for &(n_head, n_head_kv, hd, seq_len, window, f16_accum, single_row) in &[
            (4usize, 2usize, 16usize, 45usize, None, false, false),
            (3, 1, 8, 70, Some(20usize), false, false),
            (4, 4, 32, 33, None, true, false),
            (2, 1, 24, 600, None, true, false),
            (2, 1, 24, 700, Some(650), true, true),
        ] {
            let (kw, vw) = (n_head_kv * hd, n_head_kv * hd);
            let n_blocks = seq_len.div_ceil(BLOCK_SIZE) + 1;
            let mut kv = b.alloc_kv(1, n_blocks * BLOCK_SIZE, n_head_kv, hd, hd).unwrap();
            // A scattered block table: blocks in reverse order.
            let table: Vec<u32> = (0..seq_len.div_ceil(BLOCK_SIZE) as u32).rev().collect();
            let slot = |t: usize| table[t / BLOCK_SIZE] * BLOCK_SIZE as u32 + (t % BLOCK_SIZE) as u32;
            let keys_f: Vec<f32> = rand_vec(&mut seed, seq_len * kw);
            let vals_f: Vec<f32> = rand_vec(&mut seed, seq_len * vw);
            let slots: Vec<u32> = (0..seq_len).map(slot).collect();
            b.kv_store(&mut kv, 0, &keys_f, &vals_f, &slots);
            let rows: Vec<usize> = vec![0, seq_len / 2, seq_len - 1];
            let q = rand_vec(&mut seed, rows.len() * n_head * hd);
            let batch = AttnBatch {
                positions: rows.iter().map(|&r| r as u32).collect(),
                table_of_row: vec![0; rows.len()],
                tables: vec![table.clone()],
                slots: vec![],
            };
            let p = AttnParams {
                n_head,
                n_head_kv,
                head_dim: hd,
                head_dim_v: hd,
                scale: 0.3,
                window,
                f16_accum,
                single_row,
            };
            let mut out = Vec::new();
            b.attention(&q, &kv, 0, &batch, &p, &mut out);
            let round = |x: f32| f16::from_f32(x).to_f32();
            for (i, &pos) in rows.iter().enumerate() {
                for h in 0..n_head {
                    let g = h / (n_head / n_head_kv);
                    let keys: Vec<Vec<f32>> = (0..seq_len)
                        .map(|t| {
                            keys_f[t * kw + g * hd..t * kw + (g + 1) * hd].iter().map(|&x| round(x)).collect()
                        })
                        .collect();
                    let vals: Vec<Vec<f32>> = (0..seq_len)
                        .map(|t| {
                            vals_f[t * vw + g * hd..t * vw + (g + 1) * hd].iter().map(|&x| round(x)).collect()
                        })
                        .collect();
                    let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    let want = naive(
                        &q[(i * n_head + h) * hd..(i * n_head + h + 1) * hd],
                        &keys,
                        &vals,
                        first,
                        pos,
                        0.3,
                    );
                    let got = &out[(i * n_head + h) * hd..(i * n_head + h + 1) * hd];
                    // f16 accumulation rounds the running sum: allow its precision.
                    let tol = if f16_accum { 4e-3 } else { 1e-5 };
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= tol * (1.0 + b.abs()),
                            "head {h} row {pos}: {a} vs {b} (f16 {f16_accum})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rope_matches_naive_rotation() {
        let b = CpuBackend::new();
        let mut seed = 11u64;
        for neox in [false, true] {
            let (n_heads, hd) = (3usize, 16usize);
            let positions = [0u32, 1, 17, 300];
            let x0 = rand_vec(&mut seed, positions.len() * n_heads * hd);
            let mut x = x0.clone();
            let p = RopeParams::new(hd, 10000.0, neox, 4096);
            b.rope(&mut x, &positions, n_heads, hd, &p);
            for (r, &pos) in positions.iter().enumerate() {
                for h in 0..n_heads {
                    let base = (r * n_heads + h) * hd;
                    for i in 0..hd / 2 {
                        let theta = pos as f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                        let (a, c) = if neox { (i, i + hd / 2) } else { (2 * i, 2 * i + 1) };
                        let (u, v) = (x0[base + a] as f64, x0[base + c] as f64);
                        let want = (u * theta.cos() - v * theta.sin(), u * theta.sin() + v * theta.cos());
                        assert!((x[base + a] as f64 - want.0).abs() < 2e-4, "neox {neox} pos {pos} i {i}");
                        assert!((x[base + c] as f64 - want.1).abs() < 2e-4, "neox {neox} pos {pos} i {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn gelu_table_emulation_is_close_to_exact() {
        for i in -2000..2000 {
            let x = i as f32 * 0.0071;
            assert!((gelu_tanh(x) - gelu_tanh_exact(x)).abs() <= 2e-3 * (1.0 + x.abs()), "{x}");
        }
        assert_eq!(gelu_tanh(-12.0), 0.0);
        assert_eq!(gelu_tanh(12.5), 12.5);
    }
}
