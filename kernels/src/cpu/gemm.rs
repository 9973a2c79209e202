//! Batched matmul for weights without a packed kernel (F32, F16, BF16 and the formats the
//! packed kernel does not take): weight tiles dequantized to f32 once per task, then a
//! register-tiled f32 micro-kernel over (weight rows × tokens).
//!
//! Every output sums in the order of llama.cpp's tinyBLAS for float weights (its AVX-512
//! build), [`dot16`]: the reference, whose bits the AVX2 kernel gives. The row kernels of
//! F32/F16/BF16 weights (one token) sum in the same order.

use super::dot::dot16;
use crate::quant::QuantType;
use rayon::prelude::*;

/// Weight rows per task (dequantized together, then streamed against every token).
const TILE_ROWS: usize = 32;
/// Tokens per pass over a weight tile (keeps the activations of a pass in L2).
const TILE_TOKENS: usize = 64;

/// Micro-kernel over one tile: `res[t * rows + r] = dot16(w row r, x row t)` for the
/// `rows` rows of `w` and the `x.len() / n_in` tokens of `x`.
type TileFn = fn(&[f32], usize, usize, &[f32], &mut [f32]);

fn tile_plain(w: &[f32], rows: usize, n_in: usize, x: &[f32], res: &mut [f32]) {
    for (xt, rt) in x.chunks_exact(n_in).zip(res.chunks_exact_mut(rows)) {
        for (o, wr) in rt.iter_mut().zip(w.chunks_exact(n_in)) {
            *o = dot16(wr, xt);
        }
    }
}

fn select_tile() -> TileFn {
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        return avx2::tile;
    }
    tile_plain
}

/// `out[t][o] = Σ_i x[t][i] · W[o][i]` with W (`n_out` rows of `row_bytes` in format `ty`)
/// dequantized tile by tile; parallel over weight tiles.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_f32(
    ty: QuantType,
    w: &[u8],
    row_bytes: usize,
    n_in: usize,
    n_out: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let kernel = select_tile();
    let tiles: Vec<Vec<f32>> = (0..n_out.div_ceil(TILE_ROWS))
        .into_par_iter()
        .map_init(Vec::new, |wf, tile| {
            let r0 = tile * TILE_ROWS;
            let rows = TILE_ROWS.min(n_out - r0);
            wf.resize(rows * n_in, 0f32);
            ty.dequantize_row(&w[r0 * row_bytes..(r0 + rows) * row_bytes], wf).expect("whole blocks");
            // res[t * rows + r]
            let mut res = vec![0f32; n * rows];
            for t0 in (0..n).step_by(TILE_TOKENS) {
                let t1 = (t0 + TILE_TOKENS).min(n);
                kernel(wf, rows, n_in, &x[t0 * n_in..t1 * n_in], &mut res[t0 * rows..t1 * rows]);
            }
            res
        })
        .collect();
    for (tile, res) in tiles.iter().enumerate() {
        let r0 = tile * TILE_ROWS;
        let rows = res.len() / n;
        for t in 0..n {
            out[t * n_out + r0..t * n_out + r0 + rows].copy_from_slice(&res[t * rows..(t + 1) * rows]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::cpu::dot::sum16_avx2;
    use std::arch::x86_64::*;

    /// [`super::tile_plain`] with AVX2+FMA: blocks of 2 rows × 3 tokens, each output's 16
    /// lanes in two registers (12 accumulators, 2 weight vectors and 1 activation vector live:
    /// 15 of the 16 registers), so each weight load feeds 3 FMAs and each activation load 2.
    pub(super) fn tile(w: &[f32], rows: usize, n_in: usize, x: &[f32], res: &mut [f32]) {
        assert!(n_in > 0 && w.len() >= rows * n_in);
        assert!(x.len().is_multiple_of(n_in) && res.len() == x.len() / n_in * rows);
        // SAFETY: `tile` is selected only where `use_avx2()` detected avx2, fma and f16c; the
        // shapes were checked above.
        unsafe { tile_impl(w, rows, n_in, x, res) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn tile_impl(w: &[f32], rows: usize, n_in: usize, x: &[f32], res: &mut [f32]) {
        let tokens = x.len() / n_in;
        let mut t = 0;
        while t < tokens {
            match tokens - t {
                1 => token_block::<1>(w, rows, n_in, x, t, res),
                2 => token_block::<2>(w, rows, n_in, x, t, res),
                _ => token_block::<3>(w, rows, n_in, x, t, res),
            }
            t += 3;
        }
    }

    /// Tokens `t..t + T` against every row of the tile.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn token_block<const T: usize>(
        w: &[f32],
        rows: usize,
        n_in: usize,
        x: &[f32],
        t: usize,
        res: &mut [f32],
    ) {
        let xs = &x[t * n_in..(t + T) * n_in];
        let mut r = 0;
        while r + 2 <= rows {
            let out = block::<2, T>(&w[r * n_in..(r + 2) * n_in], xs, n_in);
            for (j, o) in out.iter().enumerate() {
                res[(t + j) * rows + r..(t + j) * rows + r + 2].copy_from_slice(o);
            }
            r += 2;
        }
        if r < rows {
            let out = block::<1, T>(&w[r * n_in..(r + 1) * n_in], xs, n_in);
            for (j, o) in out.iter().enumerate() {
                res[(t + j) * rows + r] = o[0];
            }
        }
    }

    /// `R` weight rows × `T` tokens: `out[t][r] = dot16(w row r, x row t)`, to the bit.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn block<const R: usize, const T: usize>(w: &[f32], x: &[f32], n_in: usize) -> [[f32; R]; T] {
        assert!(w.len() == R * n_in && x.len() == T * n_in);
        let full = n_in / 16 * 16;
        // Lanes 0..8 and 8..16 of each output's 16.
        let mut lo = [[_mm256_setzero_ps(); R]; T];
        let mut hi = [[_mm256_setzero_ps(); R]; T];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        // One half (8 lanes) of a 16-input step: R weight loads, then per token one
        // activation load and R FMAs. A macro, not a closure, so the intrinsics inline.
        macro_rules! half_step {
            ($acc:ident, $at:expr) => {{
                let mut wv = [_mm256_setzero_ps(); R];
                for (r, v) in wv.iter_mut().enumerate() {
                    // SAFETY: r < R and $at + 8 <= full <= n_in: within row r of `w`
                    // (R · n_in values, asserted); unaligned load.
                    *v = unsafe { _mm256_loadu_ps(wp.add(r * n_in + $at)) };
                }
                for (t, acc_t) in $acc.iter_mut().enumerate() {
                    // SAFETY: t < T, within token t of `x` (T · n_in values, asserted).
                    let xv = unsafe { _mm256_loadu_ps(xp.add(t * n_in + $at)) };
                    for (a, v) in acc_t.iter_mut().zip(&wv) {
                        *a = _mm256_fmadd_ps(*v, xv, *a);
                    }
                }
            }};
        }
        let mut i = 0;
        while i < full {
            half_step!(lo, i);
            half_step!(hi, i + 8);
            i += 16;
        }
        let mut out = [[0f32; R]; T];
        for t in 0..T {
            for r in 0..R {
                let (wt, xt) = (&w[r * n_in + full..(r + 1) * n_in], &x[t * n_in + full..(t + 1) * n_in]);
                out[t][r] = sum16_avx2(lo[t][r], hi[t][r], wt, xt, |v| *v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The tile kernel of this CPU gives [`dot16`]'s bits, and `dot16` is within f32
    /// rounding of the f64 sum, on random tiles of odd shapes (rows, tokens and lengths
    /// that are not multiples of the block sizes) and random magnitudes.
    #[test]
    fn tile_kernel_matches_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let kernel = select_tile();
        for case in 0..60 {
            let n_in = [1, 7, 15, 16, 17, 33, 64, 100, 576, 1000][case % 10];
            let rows = rng.random_range(1..=33);
            let tokens = rng.random_range(1..=11);
            let mut val = || {
                let e = rng.random_range(-6i32..6);
                rng.random_range(-1.0f32..1.0) * 2f32.powi(e)
            };
            let w: Vec<f32> = (0..rows * n_in).map(|_| val()).collect();
            let x: Vec<f32> = (0..tokens * n_in).map(|_| val()).collect();
            let mut res = vec![f32::NAN; rows * tokens];
            kernel(&w, rows, n_in, &x, &mut res);
            for t in 0..tokens {
                for r in 0..rows {
                    let (wr, xt) = (&w[r * n_in..(r + 1) * n_in], &x[t * n_in..(t + 1) * n_in]);
                    let want = dot16(wr, xt);
                    let got = res[t * rows + r];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{rows}x{tokens}x{n_in} [{t},{r}]: {got} vs {want}"
                    );
                    let exact: f64 = wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag: f64 = wr.iter().zip(xt).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    assert!((want as f64 - exact).abs() <= 1e-6 * mag, "{want} vs {exact}");
                }
            }
        }
    }
}
