//! CPU kernels. The fast matmul is [`packed`] (weights repacked at load, AVX2 / AVX-512
//! VNNI bodies in `x86`); [`matmul`] here serves every other format and CPU: activations
//! quantized once per call to the weight's dot format (Q8_0 / Q8_1 / Q8_K, or f16/bf16
//! rounding for float weights, as ggml does), rayon over output rows, inner dot products
//! ([`dot`], also the scalar reference) compiled twice, plain and with AVX2+FMA, the AVX2
//! copy chosen at run time. [`attn`] holds attention over the f16 KV cache
//! (small batches and decode), [`attn_tile`] the tiled prompt attention of larger batches.

pub mod attn;
pub mod attn_tile;
pub mod dot;
mod gemm;
pub mod math;
pub mod mem;
pub mod packed;
pub mod softmax;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::quant::*;
use dot::VecDot;
use rayon::prelude::*;

/// Output rows per parallel task: large enough to amortize scheduling, small enough to
/// balance 2–64 threads on the smallest matrices (576 rows).
const ROWS_PER_TASK: usize = 16;

/// Reusable scratch memory for quantized activations (8-byte aligned).
#[derive(Debug, Default)]
pub struct Scratch {
    words: Vec<u64>,
    tmp: Vec<f32>,
}

/// Whether `matmul` supports weights of this type (all block types do: those without an
/// integer dot product go through a dequantizing path).
pub fn has_matmul(ty: QuantType) -> bool {
    !matches!(ty, QuantType::Q8_1 | QuantType::Q8_K)
}

/// Whether `ty` has a native dot product (else it is dequantized row by row).
pub fn has_native_dot(ty: QuantType) -> bool {
    use QuantType::*;
    matches!(ty, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL | Q4_K | Q5_K | Q6_K)
}

/// `out[t][o] = Σ_i x[t][i] · W[o][i]` for `n` rows of `x` (`n × n_in`, row-major) and a
/// weight matrix of `n_out` rows of `n_in` values in format `ty`; `out` is `n × n_out`.
///
/// Panics if the slices do not have the sizes the shape implies (callers validate shapes
/// when a model is loaded).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    ty: QuantType,
    w: &[u8],
    n_in: usize,
    n_out: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    assert_eq!(x.len(), n * n_in, "activation shape");
    assert_eq!(out.len(), n * n_out, "output shape");
    assert_eq!(w.len(), ty.row_bytes(n_in).expect("whole blocks") * n_out, "weight shape");
    use QuantType::*;
    match ty {
        F32 => typed::<BlockF32>(w, n_in, n_out, x, n, out, scratch),
        F16 => typed::<BlockF16>(w, n_in, n_out, x, n, out, scratch),
        BF16 => typed::<BlockBF16>(w, n_in, n_out, x, n, out, scratch),
        Q4_0 => typed::<BlockQ4_0>(w, n_in, n_out, x, n, out, scratch),
        Q4_1 => typed::<BlockQ4_1>(w, n_in, n_out, x, n, out, scratch),
        Q5_0 => typed::<BlockQ5_0>(w, n_in, n_out, x, n, out, scratch),
        Q5_1 => typed::<BlockQ5_1>(w, n_in, n_out, x, n, out, scratch),
        Q8_0 => typed::<BlockQ8_0>(w, n_in, n_out, x, n, out, scratch),
        IQ4_NL => typed::<BlockIQ4NL>(w, n_in, n_out, x, n, out, scratch),
        Q4_K => typed::<BlockQ4K>(w, n_in, n_out, x, n, out, scratch),
        Q5_K => typed::<BlockQ5K>(w, n_in, n_out, x, n, out, scratch),
        Q6_K => typed::<BlockQ6K>(w, n_in, n_out, x, n, out, scratch),
        _ => dequantizing(ty, w, n_in, n_out, x, n, out),
    }
}

/// Rows kernel: `out[r * n + t] = dot(W row r, activation row t)` for a chunk of rows.
type RowsFn<W> = fn(&[W], usize, &[<W as VecDot>::Act], usize, usize, &mut [f32]);

#[inline(always)]
fn rows_generic<W: VecDot>(
    w: &[W],
    w_per_row: usize,
    acts: &[W::Act],
    a_per_row: usize,
    n: usize,
    out: &mut [f32],
    dot: impl Fn(&[W], &[W::Act]) -> f32,
) {
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        let wr = &w[r * w_per_row..(r + 1) * w_per_row];
        for (t, o) in o.iter_mut().enumerate() {
            *o = dot(wr, &acts[t * a_per_row..(t + 1) * a_per_row]);
        }
    }
}

fn rows_plain<W: VecDot>(w: &[W], wpr: usize, acts: &[W::Act], apr: usize, n: usize, out: &mut [f32]) {
    rows_generic(w, wpr, acts, apr, n, out, W::dot)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_avx2_impl<W: VecDot>(w: &[W], wpr: usize, acts: &[W::Act], apr: usize, n: usize, out: &mut [f32]) {
    // SAFETY: this function runs only where avx2, fma and f16c were detected (`rows_avx2`).
    rows_generic(w, wpr, acts, apr, n, out, |w, a| unsafe { W::dot_avx2(w, a) })
}

#[cfg(target_arch = "x86_64")]
fn rows_avx2<W: VecDot>(w: &[W], wpr: usize, acts: &[W::Act], apr: usize, n: usize, out: &mut [f32]) {
    // SAFETY: `select_rows` returns this function only when `use_avx2()` detected avx2, fma and f16c.
    unsafe { rows_avx2_impl(w, wpr, acts, apr, n, out) }
}

/// Forces the scalar kernels (tests compare every variant with the reference).
static FORCE_SCALAR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes `matmul` use the scalar kernels (`true`) or the best for this CPU (`false`).
pub fn force_scalar(on: bool) {
    FORCE_SCALAR.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `force_scalar(true)` is in effect.
pub(crate) fn scalar_forced() -> bool {
    FORCE_SCALAR.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the AVX2+FMA+F16C kernels run: the CPU has them and scalar is not forced.
pub(crate) fn use_avx2() -> bool {
    if scalar_forced() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    {
        return true;
    }
    false
}

/// The best rows kernel for this CPU.
fn select_rows<W: VecDot>() -> RowsFn<W> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        return rows_avx2::<W>;
    }
    rows_plain::<W>
}

/// Which kernel variant `matmul` uses on this CPU (for logs and benchmarks).
pub fn variant() -> &'static str {
    if use_avx2() {
        "avx2"
    } else {
        "scalar"
    }
}

#[allow(clippy::too_many_arguments)]
fn typed<W: VecDot>(
    w: &[u8],
    n_in: usize,
    n_out: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let w: &[W] = cast_blocks(w).expect("weight bytes are whole blocks");
    let w_per_row = n_in / W::BLOCK_ELEMS;
    let a_per_row = n_in / W::ACT_ELEMS;
    let act_bytes = n * a_per_row * std::mem::size_of::<W::Act>();
    let Scratch { words, tmp } = scratch;
    let n_words = act_bytes.div_ceil(8);
    if words.len() < n_words {
        words.resize(n_words, 0);
    }
    // Activation blocks have alignment 1 (quant blocks) or 4 (f32): the u64 buffer suits both.
    let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut words[..n_words])[..act_bytes];
    let acts: &mut [W::Act] = bytemuck::cast_slice_mut(bytes);
    acts.par_chunks_mut(a_per_row).zip(x.par_chunks(n_in)).for_each(|(a, xr)| W::quantize_act(xr, a));
    let acts: &[W::Act] = acts;
    let kernel = select_rows::<W>();
    if n == 1 {
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(c, o)| {
            let r0 = c * ROWS_PER_TASK;
            kernel(&w[r0 * w_per_row..(r0 + o.len()) * w_per_row], w_per_row, acts, a_per_row, 1, o);
        });
    } else {
        // Batches: the values the quantized activations stand for, as f32, then a tiled f32
        // GEMM over weight tiles dequantized once per task. Same products as the integer
        // path, summed in f32.
        tmp.resize(n * n_in, 0.0);
        tmp[..n * n_in]
            .par_chunks_mut(n_in)
            .zip(acts.par_chunks(a_per_row))
            .for_each(|(o, a)| W::act_values(a, o));
        let row_bytes = w_per_row * std::mem::size_of::<W>();
        let w_bytes: &[u8] = bytemuck::cast_slice(w);
        gemm::gemm_f32(W::TYPE, w_bytes, row_bytes, n_in, n_out, &tmp[..n * n_in], n, out);
    }
}

/// Fallback for formats without a dot product: dequantize each weight row, f32 dot.
fn dequantizing(ty: QuantType, w: &[u8], n_in: usize, n_out: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let row_bytes = ty.row_bytes(n_in).expect("whole blocks");
    let mut tmp = vec![0f32; n_out * n];
    tmp.par_chunks_mut(n).zip(w.par_chunks(row_bytes)).for_each_init(
        || vec![0f32; n_in],
        |row, (o, wr)| {
            ty.dequantize_row(wr, row).expect("whole blocks");
            for (t, o) in o.iter_mut().enumerate() {
                *o = row.iter().zip(&x[t * n_in..(t + 1) * n_in]).map(|(a, b)| a * b).sum();
            }
        },
    );
    transpose_into(&tmp, n_out, n, out);
}

/// `out[t][o] = tmp[o][t]`.
fn transpose_into(tmp: &[f32], n_out: usize, n: usize, out: &mut [f32]) {
    for (t, row) in out.chunks_exact_mut(n_out).enumerate() {
        for (o, v) in row.iter_mut().enumerate() {
            *v = tmp[o * n + t];
        }
    }
}
