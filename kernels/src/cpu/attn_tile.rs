//! Prompt attention in tiles of 64 keys, as llama.cpp's CPU flash attention computes batches
//! of 64 rows or more (`ggml_compute_forward_flash_attn_ext_tiled`), to the bit.
//!
//! Keys are taken in tiles of [`TILE`] consecutive positions aligned at position 0. A tile's
//! keys and values are converted to f32 once ([`Tile::load`]), keys transposed so that the 64
//! scores of one query vectorize across keys, and then serve every query row and head that
//! shares them. Per (row, head) and tile ([`update`]):
//! - each score is one fused multiply-add chain over the key's dimensions, in order, from 0,
//!   with the query in f32, then times the scale; keys outside the row's range weigh 0;
//! - the running max `M` moves to the tile's max; if it moved, the sum `S` and the
//!   accumulator are scaled by libm's `expf(M_old − M_new)` (glibc's bits, `math::exp_glibc`);
//! - the weights are ggml's vector exponential ([`math::exp_ggml`]) of `s − M`; `S` gains
//!   their sum, taken per 16 keys by `_mm512_reduce_add_ps`'s tree and across those in f64;
//! - the accumulator gains `Σ w·v`, one fused multiply-add per key, in key order.
//!
//! [`finish`] divides by `S`. The scalar bodies are the reference; the AVX2 bodies give the
//! same bits (the order is per lane, so the vector width does not enter).

use super::math;
use crate::cpu::attn::{tree_ggml, HeadKv};
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Keys per tile (llama.cpp's `GGML_FA_TILE_KV`).
pub const TILE: usize = 64;

/// One tile's keys (`dk × TILE`, transposed) and values (`TILE × dv`) in f32.
#[derive(Debug, Default)]
pub struct Tile {
    kt: Vec<f32>,
    v: Vec<f32>,
    /// One key in f32, before it is transposed.
    row: Vec<f32>,
    dk: usize,
    dv: usize,
}

impl Tile {
    /// Converts keys and values of lanes `lanes` (tile offsets) of one KV head, lane `j`
    /// from cache slot `slot(j)`. Other lanes keep stale values that [`update`] never weighs.
    pub fn load(
        &mut self,
        kv: &HeadKv,
        dk: usize,
        dv: usize,
        lanes: std::ops::Range<usize>,
        slot: impl Fn(usize) -> usize,
    ) {
        assert!(lanes.end <= TILE, "tile lanes");
        if self.dk != dk || self.dv != dv {
            *self = Tile { kt: vec![0.0; dk * TILE], v: vec![0.0; TILE * dv], row: vec![0.0; dk], dk, dv };
        }
        for j in lanes {
            let s = slot(j);
            // `half` converts slices with F16C where the CPU has it.
            let k: &[f16] = kv.k[s * kv.k_stride + kv.k_off..][..dk].reinterpret_cast();
            k.convert_to_f32_slice(&mut self.row);
            for (d, &x) in self.row.iter().enumerate() {
                self.kt[d * TILE + j] = x;
            }
            let v: &[f16] = kv.v[s * kv.v_stride + kv.v_off..][..dv].reinterpret_cast();
            v.convert_to_f32_slice(&mut self.v[j * dv..(j + 1) * dv]);
        }
    }
}

/// The running state of one (row, head): max, sum of weights, and `Σ w·v` (`dv` values).
#[derive(Debug)]
pub struct State<'a> {
    pub m: f32,
    pub s: f32,
    pub acc: &'a mut [f32],
}

impl<'a> State<'a> {
    /// An empty state over `acc` (zeroed here).
    pub fn new(acc: &'a mut [f32]) -> Self {
        acc.fill(0.0);
        State { m: f32::NEG_INFINITY, s: 0.0, acc }
    }
}

/// Adds lanes `lanes` of `tile` (the keys of the row's range in this tile) to `st`, for the
/// query `q` (`dk` values): scores `q·k · scale`. The best body this CPU has.
pub fn update(q: &[f32], tile: &Tile, lanes: std::ops::Range<usize>, scale: f32, st: &mut State) {
    check(q, tile, &lanes, st);
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        // SAFETY: avx2, fma and f16c were detected; shapes were checked above.
        return unsafe { avx2::update(q, tile, lanes, scale, st) };
    }
    update_scalar(q, tile, lanes, scale, st)
}

fn check(q: &[f32], tile: &Tile, lanes: &std::ops::Range<usize>, st: &State) {
    assert!(q.len() == tile.dk && st.acc.len() == tile.dv, "tile shapes");
    assert!(lanes.start < lanes.end && lanes.end <= TILE, "tile lanes");
}

/// The scalar reference of [`update`].
pub fn update_scalar(q: &[f32], tile: &Tile, lanes: std::ops::Range<usize>, scale: f32, st: &mut State) {
    check(q, tile, &lanes, st);
    let mut s = [f32::NEG_INFINITY; TILE];
    for j in lanes.clone() {
        let mut x = 0f32;
        for (d, &qd) in q.iter().enumerate() {
            x = tile.kt[d * TILE + j].mul_add(qd, x);
        }
        s[j] = x * scale;
    }
    let mx = s[lanes.clone()].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    rescale(st, mx);
    let mut w = [0f32; TILE];
    for j in lanes.clone() {
        w[j] = math::exp_ggml(s[j] - st.m);
    }
    add_sum(st, &w);
    for j in lanes {
        let v = &tile.v[j * tile.dv..(j + 1) * tile.dv];
        st.acc.iter_mut().zip(v).for_each(|(a, &v)| *a = v.mul_add(w[j], *a));
    }
}

/// Moves the max to `max(M, tile_max)`, scaling `S` and the accumulator by libm's (glibc's bits)
/// `expf(M_old − M_new)` if it moved.
#[inline]
fn rescale(st: &mut State, tile_max: f32) {
    let m = st.m.max(tile_max);
    if m > st.m {
        let c = math::exp_glibc(st.m - m);
        st.acc.iter_mut().for_each(|a| *a *= c);
        st.s *= c;
        st.m = m;
    }
}

/// `S += Σ w` as `ggml_vec_soft_max_f32` returns it: 16-key chunks summed by the reduction
/// tree, the chunks summed in f64, added to `S` in f64 and rounded once.
#[inline]
fn add_sum(st: &mut State, w: &[f32; TILE]) {
    let sum: f64 = w.chunks_exact(16).map(|c| f64::from(tree_ggml(c))).sum();
    st.s = (f64::from(st.s) + sum) as f32;
}

/// Writes the state's output, `Σ w·v / S` (0 where nothing was weighed), into `out`.
pub fn finish(st: &State, out: &mut [f32]) {
    let inv = if st.s == 0.0 { 0.0 } else { 1.0 / st.s };
    out.iter_mut().zip(st.acc.iter()).for_each(|(o, a)| *o = a * inv);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{add_sum, rescale, State, Tile, TILE};
    use crate::cpu::math::avx2::exp_ggml;
    use std::arch::x86_64::*;

    /// [`super::update_scalar`], eight keys per vector for the scores and weights, eight
    /// values per vector for `Σ w·v`.
    ///
    /// # Safety
    /// The CPU has avx2, fma and f16c; shapes as [`super::check`] asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn update(
        q: &[f32],
        tile: &Tile,
        lanes: std::ops::Range<usize>,
        scale: f32,
        st: &mut State,
    ) {
        // Scores of all 64 lanes (a constant trip count keeps the eight chains in
        // registers); lanes outside the range are set to −∞ and weigh nothing.
        let mut acc = [_mm256_setzero_ps(); TILE / 8];
        let kt = tile.kt.as_ptr();
        for (d, &qd) in q.iter().enumerate() {
            let qv = _mm256_set1_ps(qd);
            for (c, a) in acc.iter_mut().enumerate() {
                // SAFETY: `kt` holds `dk × TILE` values; `d < dk`, `8c + 8 <= TILE`.
                let k = unsafe { _mm256_loadu_ps(kt.add(d * TILE + 8 * c)) };
                *a = _mm256_fmadd_ps(k, qv, *a);
            }
        }
        let mut s = [f32::NEG_INFINITY; TILE];
        for (c, a) in acc.iter().enumerate() {
            // SAFETY: `s` holds TILE values; `8c + 8 <= TILE`.
            unsafe { _mm256_storeu_ps(s.as_mut_ptr().add(8 * c), _mm256_mul_ps(*a, _mm256_set1_ps(scale))) };
        }
        s[..lanes.start].fill(f32::NEG_INFINITY);
        s[lanes.end..].fill(f32::NEG_INFINITY);
        let (c0, c1) = (lanes.start / 8, lanes.end.div_ceil(8));
        let mx = s[lanes.clone()].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        rescale(st, mx);
        let mut w = [0f32; TILE];
        let m = _mm256_set1_ps(st.m);
        for c in c0..c1 {
            // SAFETY: `s` and `w` hold TILE values; `8c + 8 <= TILE`.
            unsafe {
                let x = _mm256_loadu_ps(s.as_ptr().add(8 * c));
                // Lanes outside the range (score −∞) weigh exactly 0.
                let e = exp_ggml(_mm256_sub_ps(x, m));
                _mm256_storeu_ps(w.as_mut_ptr().add(8 * c), e);
            }
        }
        add_sum(st, &w);
        // Σ w·v: 64 outputs (eight vectors) at a time across the tile's keys, then eight.
        let dv = tile.dv;
        let mut i = 0;
        while i + 64 <= dv {
            // SAFETY: outputs `i..i + 64` exist (`i + 64 <= dv`).
            unsafe { pv::<8>(tile, i, lanes.clone(), &w, st) };
            i += 64;
        }
        while i + 8 <= dv {
            // SAFETY: outputs `i..i + 8` exist.
            unsafe { pv::<1>(tile, i, lanes.clone(), &w, st) };
            i += 8;
        }
        // A value width that is not a multiple of 8: the rest one by one.
        for d in i..dv {
            let mut a = st.acc[d];
            for j in lanes.clone() {
                a = tile.v[j * dv + d].mul_add(w[j], a);
            }
            st.acc[d] = a;
        }
    }

    /// Outputs `i..i + 8·G` of `Σ w·v` over the keys of `lanes`, held in registers.
    ///
    /// # Safety
    /// The CPU has avx2, fma and f16c; `i + 8·G <= tile.dv`; `lanes.end <= TILE`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn pv<const G: usize>(
        tile: &Tile,
        i: usize,
        lanes: std::ops::Range<usize>,
        w: &[f32; TILE],
        st: &mut State,
    ) {
        let dv = tile.dv;
        let out = st.acc[i..i + 8 * G].as_mut_ptr();
        let v = tile.v.as_ptr();
        let mut a = [_mm256_setzero_ps(); G];
        for (k, a) in a.iter_mut().enumerate() {
            // SAFETY: `out` holds 8·G values.
            *a = unsafe { _mm256_loadu_ps(out.add(8 * k)) };
        }
        for j in lanes {
            let wj = _mm256_set1_ps(w[j]);
            for (k, a) in a.iter_mut().enumerate() {
                // SAFETY: value row `j < TILE` has `dv` values; `i + 8k + 8 <= dv`.
                let x = unsafe { _mm256_loadu_ps(v.add(j * dv + i + 8 * k)) };
                *a = _mm256_fmadd_ps(x, wj, *a);
            }
        }
        for (k, a) in a.iter().enumerate() {
            // SAFETY: as the loads.
            unsafe { _mm256_storeu_ps(out.add(8 * k), *a) };
        }
    }
}
