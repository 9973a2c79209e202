//! Weights repacked at load for the SIMD matmul ("rows in lanes").
//!
//! Eight weight rows are interleaved four values at a time: one 32-byte vector holds values
//! `4k..4k+4` of each of eight rows, so one `vpdpbusd` (or its AVX2 equivalent) against four
//! broadcast activation bytes advances eight dot products at once and the eight results come
//! out as one vector — no horizontal sums, one weight load shared by every token of a tile.
//!
//! Every supported format is repacked into the same shape: unsigned integer codes `u` (4, 5,
//! 6 bits; 8-bit formats stay signed), an integer zero point, optional integer sub-block
//! scales and mins (K-quants), and f16 block scales. Codes are stored as nibbles plus bit
//! planes, so a repacked matrix is as large as the original (K-quants: +2.8% for unpacked
//! scales) and decoding reads the same bytes per token.
//!
//! Activations are quantized once per call exactly as for the scalar reference
//! ([`super::dot`]: Q8_0, Q8_1 or Q8_K by weight type), then laid out as plain `i8` rows plus
//! per-block scales and the integer block sums that the zero points and mins need.

use super::dot::{quantize_q8_0_x86, quantize_q8_1_x86};
use super::mem::HugePages;
use crate::quant::*;
use rayon::prelude::*;

/// Rows interleaved per group: the eight i32 lanes of a 256-bit vector.
pub const GROUP: usize = 8;

/// How a format's block minimum enters the dot product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Min {
    /// No minimum (symmetric codes around `zero`).
    None,
    /// Q4_1: `+ m · s` with `s = d_a Σa` per block.
    Block,
    /// Q4_K: `− dmin · d_a · Σ_j m_j Σa_j` over the sub-blocks.
    Sub,
}

/// The integer shape of a repacked format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Values per block (one f16 scale per row and block).
    pub blk: usize,
    /// Values per integer sub-block scale (`blk` when there are none).
    pub sub: usize,
    /// Bits per code: 4, 5, 6, or 8 (8 = signed codes, no zero point).
    pub bits: u32,
    /// Subtracted from every code.
    pub zero: i32,
    /// How the block minimum enters.
    pub min: Min,
    /// Per-sub-block integer scales (K-quants); Q6_K's are signed.
    pub scales: bool,
    /// The kernel follows llama.cpp's x86 `vec_dot` lane order (formats it does not repack:
    /// Q4_1, Q5_0, Q8_0, Q6_K); otherwise its repacked kernels' one sum per block (Q4_0,
    /// Q4_K).
    pub lanes: bool,
}

/// The formats with a packed kernel, in `FMT_*` order.
pub(crate) const LAYOUTS: [Layout; 6] = [
    Layout { blk: 32, sub: 32, bits: 4, zero: 8, min: Min::None, scales: false, lanes: false },
    Layout { blk: 32, sub: 32, bits: 4, zero: 0, min: Min::Block, scales: false, lanes: true },
    Layout { blk: 32, sub: 32, bits: 5, zero: 16, min: Min::None, scales: false, lanes: true },
    Layout { blk: 32, sub: 32, bits: 8, zero: 0, min: Min::None, scales: false, lanes: true },
    Layout { blk: 256, sub: 32, bits: 4, zero: 0, min: Min::Sub, scales: true, lanes: false },
    Layout { blk: 256, sub: 16, bits: 6, zero: 32, min: Min::None, scales: true, lanes: true },
];
pub(crate) const FMT_Q4_0: usize = 0;
pub(crate) const FMT_Q4_1: usize = 1;
pub(crate) const FMT_Q5_0: usize = 2;
pub(crate) const FMT_Q8_0: usize = 3;
pub(crate) const FMT_Q4_K: usize = 4;
pub(crate) const FMT_Q6_K: usize = 5;

impl Layout {
    pub(crate) const fn nsub(&self) -> usize {
        self.blk / self.sub
    }
    /// Byte offset of the sub-block scales in a group block (after d and the min scale).
    pub(crate) const fn sc_off(&self) -> usize {
        if matches!(self.min, Min::None) {
            16
        } else {
            32
        }
    }
    /// Byte offset of the sub-block mins (Q4_K).
    pub(crate) const fn mn_off(&self) -> usize {
        self.sc_off() + if self.scales { self.nsub() * GROUP } else { 0 }
    }
    /// Header bytes of a group block: f16 d ×8, [f16 m ×8], [scales], [mins].
    pub(crate) const fn hdr_bytes(&self) -> usize {
        self.mn_off() + if matches!(self.min, Min::Sub) { self.nsub() * GROUP } else { 0 }
    }
    /// Bytes of one 32-value chunk of eight rows: nibble vectors plus high-bit planes.
    pub(crate) const fn chunk_bytes(&self) -> usize {
        if self.bits == 8 {
            256
        } else {
            128 + 32 * (self.bits as usize - 4)
        }
    }
    /// Bytes of one block of eight rows.
    pub(crate) const fn block_bytes(&self) -> usize {
        self.hdr_bytes() + self.blk / 32 * self.chunk_bytes()
    }
    /// What the lane-order kernels subtract from every code: Q5_0's zero point, and 128 for
    /// Q8_0, whose signed codes the VNNI kernels read as unsigned `w + 128` (`vpdpbusd`
    /// multiplies unsigned by signed bytes; the AVX2 kernels take ggml's sign trick instead).
    pub(crate) const fn lane_offset(&self) -> i32 {
        if self.bits == 8 {
            128
        } else {
            self.zero
        }
    }
    /// Activation `i32` side values per token and block: the zero-point corrections
    /// (`−zero·Σa` per sub-block, or `−lane_offset·Σa` per lane of four values in the lane
    /// order: Q5_0, Q8_0) or the i16 pairs of sub-block sums (Q4_K, Q6_K).
    pub(crate) const fn iz_per_block(&self) -> usize {
        if self.scales {
            self.nsub() / 2
        } else if self.lanes && self.lane_offset() != 0 {
            self.blk / 4
        } else if self.zero != 0 {
            self.nsub()
        } else if matches!(self.min, Min::Sub) {
            self.nsub() / 2
        } else {
            0
        }
    }
}

fn fmt_of(ty: QuantType) -> Option<usize> {
    Some(match ty {
        QuantType::Q4_0 => FMT_Q4_0,
        QuantType::Q4_1 => FMT_Q4_1,
        QuantType::Q5_0 => FMT_Q5_0,
        QuantType::Q8_0 => FMT_Q8_0,
        QuantType::Q4_K => FMT_Q4_K,
        QuantType::Q6_K => FMT_Q6_K,
        _ => return None,
    })
}

/// One block as integers: codes, sub-block scales and mins, f16 bits of d and m/dmin.
struct IntBlock {
    u: [u8; QK_K],
    sc: [u8; 16],
    mn: [u8; 8],
    d: [u8; 2],
    m: [u8; 2],
}

fn int_block(fmt: usize, b: &[u8]) -> IntBlock {
    let mut ib = IntBlock { u: [0; QK_K], sc: [0; 16], mn: [0; 8], d: [0; 2], m: [0; 2] };
    let nib = |u: &mut [u8], qs: &[u8]| {
        for (j, &q) in qs.iter().enumerate() {
            u[j] = q & 0x0f;
            u[j + qs.len()] = q >> 4;
        }
    };
    match fmt {
        FMT_Q4_0 => {
            let x: &BlockQ4_0 = bytemuck::from_bytes(b);
            ib.d = x.d;
            nib(&mut ib.u, &x.qs);
        }
        FMT_Q4_1 => {
            let x: &BlockQ4_1 = bytemuck::from_bytes(b);
            (ib.d, ib.m) = (x.d, x.m);
            nib(&mut ib.u, &x.qs);
        }
        FMT_Q5_0 => {
            let x: &BlockQ5_0 = bytemuck::from_bytes(b);
            ib.d = x.d;
            nib(&mut ib.u, &x.qs);
            let qh = u32::from_le_bytes(x.qh);
            for (j, u) in ib.u[..QK].iter_mut().enumerate() {
                *u |= (((qh >> j) & 1) << 4) as u8;
            }
        }
        FMT_Q8_0 => {
            let x: &BlockQ8_0 = bytemuck::from_bytes(b);
            ib.d = x.d;
            for (u, &q) in ib.u.iter_mut().zip(&x.qs) {
                *u = q as u8;
            }
        }
        FMT_Q4_K => {
            let x: &BlockQ4K = bytemuck::from_bytes(b);
            (ib.d, ib.m) = (x.d, x.dmin);
            for c in 0..4 {
                nib(&mut ib.u[64 * c..64 * c + 64], &x.qs[32 * c..32 * c + 32]);
            }
            for j in 0..8 {
                (ib.sc[j], ib.mn[j]) = x.scale_min(j);
            }
        }
        FMT_Q6_K => {
            let x: &BlockQ6K = bytemuck::from_bytes(b);
            ib.d = x.d;
            ib.u = super::dot::q6k_codes(x);
            for (s, &v) in ib.sc.iter_mut().zip(&x.scales) {
                *s = v as u8;
            }
        }
        _ => unreachable!("no packed layout"),
    }
    ib
}

/// The instruction sets with packed kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 + FMA + F16C: `vpmaddubsw` + `vpmaddwd` for the 8-bit products.
    Avx2,
    /// AVX-512 (F, BW, VL) with VNNI: `vpdpbusd` on 256-bit vectors for one group, on
    /// 512-bit vectors for two groups at once (batches).
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set of this CPU with packed kernels, unless scalar is forced.
    pub fn best() -> Option<Isa> {
        Self::available().last().copied()
    }

    /// Every instruction set of this CPU with packed kernels (tests run them all).
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        if super::scalar_forced() {
            return v;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        v
    }

    /// Name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// A weight matrix repacked for the SIMD kernels.
#[derive(Debug)]
pub struct PackedMatrix {
    ty: QuantType,
    fmt: usize,
    n_in: usize,
    n_out: usize,
    isa: Isa,
    /// Group-major: `ceil(n_out / 8)` groups of `n_in / blk` block records.
    data: Region,
}

impl PackedMatrix {
    /// Repacks `n_out` rows of `n_in` values in format `ty`, for the best instruction set of
    /// this CPU. `None` when the format or the CPU has no packed kernel (use [`super::matmul`]).
    pub fn pack(ty: QuantType, w: &[u8], n_in: usize, n_out: usize) -> Option<Self> {
        Self::pack_in(&PackArena::new(0), ty, w, n_in, n_out)
    }

    /// As [`Self::pack`], in memory from `arena` (a model's matrices share its huge pages).
    pub fn pack_in(arena: &PackArena, ty: QuantType, w: &[u8], n_in: usize, n_out: usize) -> Option<Self> {
        Self::build(arena, Isa::best()?, ty, w, n_in, n_out)
    }

    /// As [`Self::pack`], for a given instruction set (`None` if this CPU lacks it).
    pub fn pack_for(isa: Isa, ty: QuantType, w: &[u8], n_in: usize, n_out: usize) -> Option<Self> {
        Self::build(&PackArena::new(0), isa, ty, w, n_in, n_out)
    }

    fn build(
        arena: &PackArena,
        isa: Isa,
        ty: QuantType,
        w: &[u8],
        n_in: usize,
        n_out: usize,
    ) -> Option<Self> {
        let fmt = fmt_of(ty)?;
        if !Isa::available().contains(&isa) {
            return None;
        }
        let l = LAYOUTS[fmt];
        let row_bytes = ty.row_bytes(n_in).ok()?;
        if !n_in.is_multiple_of(l.blk) || w.len() != row_bytes * n_out || n_out == 0 {
            return None;
        }
        let nblk = n_in / l.blk;
        let group_bytes = nblk * l.block_bytes();
        let groups = n_out.div_ceil(GROUP);
        let mut data = arena.alloc(groups * group_bytes);
        let src_blk = ty.block_bytes();
        data.bytes_mut().par_chunks_mut(group_bytes).enumerate().for_each(|(g, out)| {
            for b in 0..nblk {
                let rec = &mut out[b * l.block_bytes()..(b + 1) * l.block_bytes()];
                for r in 0..GROUP {
                    let row = g * GROUP + r;
                    if row >= n_out {
                        break; // padding rows stay zero: d = 0
                    }
                    let off = row * row_bytes + b * src_blk;
                    pack_row_block(&l, &int_block(fmt, &w[off..off + src_blk]), r, rec);
                }
            }
        });
        Some(Self { ty, fmt, n_in, n_out, isa, data })
    }

    /// The weight format.
    pub fn ty(&self) -> QuantType {
        self.ty
    }
    /// The instruction set the kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Bytes of the repacked matrix.
    pub fn bytes(&self) -> usize {
        self.data.bytes().len()
    }
    /// Values per row.
    pub fn n_in(&self) -> usize {
        self.n_in
    }
    /// Rows.
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// `out[t][o] = Σ_i x[t][i] · W[o][i]` for `n` rows of `x` (`n × n_in`); `out` is
    /// `n × n_out`. Panics if the slices do not match the shape.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut PackScratch) {
        Self::matmul_many([self], x, n, [out], scratch)
    }

    /// Whether [`PackedMatrix::matmul_many`] takes `self` and `other` together: the same
    /// activation format, kernel and input width.
    pub fn shares_input_with(&self, other: &PackedMatrix) -> bool {
        self.fmt == other.fmt && self.isa == other.isa && self.n_in == other.n_in
    }

    /// [`PackedMatrix::matmul`] of `M` matrices over one input (attention's Q, K and V, the
    /// feed-forward's gate and up): the activations quantized once, and every matrix's row
    /// tasks in one parallel pass (one join instead of `M`). Each output is bit for bit its
    /// own `matmul`'s: the same codes, the same per-row kernel. Panics unless the matrices
    /// [share their input](PackedMatrix::shares_input_with) and the slices match the shapes.
    pub fn matmul_many<const M: usize>(
        mats: [&PackedMatrix; M],
        x: &[f32],
        n: usize,
        outs: [&mut [f32]; M],
        scratch: &mut PackScratch,
    ) {
        let first = mats[0];
        assert!(mats.iter().all(|m| m.shares_input_with(first)), "matrices sharing an input");
        assert_eq!(x.len(), n * first.n_in, "activation shape");
        for (m, o) in mats.iter().zip(&outs) {
            assert_eq!(o.len(), n * m.n_out, "output shape");
        }
        let l = LAYOUTS[first.fmt];
        let acts = scratch.quantize(first.fmt, x, n, first.n_in);
        let nblk = first.n_in / l.blk;
        let group_bytes = nblk * l.block_bytes();
        // Per matrix: groups, groups per task (enough tasks to balance the pool, few enough
        // that each streams a long run of rows) and tasks.
        let threads = rayon::current_num_threads();
        let split: [(usize, usize, usize); M] = std::array::from_fn(|i| {
            let groups = mats[i].n_out.div_ceil(GROUP);
            let per_task = groups.div_ceil((threads * 4).min(groups));
            (groups, per_task, groups.div_ceil(per_task))
        });
        let outs: [OutPtr; M] = outs.map(|o| OutPtr(o.as_mut_ptr()));
        let total: usize = split.iter().map(|s| s.2).sum();
        (0..total).into_par_iter().for_each(|mut task| {
            let mut i = 0;
            while task >= split[i].2 {
                task -= split[i].2;
                i += 1;
            }
            let (groups, per_task, _) = split[i];
            let g0 = task * per_task;
            let g1 = (g0 + per_task).min(groups);
            let job = Job {
                fmt: first.fmt,
                w: &mats[i].data.bytes()[g0 * group_bytes..g1 * group_bytes],
                group_bytes,
                nblk,
                acts: &acts,
                n,
                row0: g0 * GROUP,
                n_out: mats[i].n_out,
                out: outs[i],
            };
            run_job(first.isa, &job);
        });
    }
}

/// Memory for the repacked matrices of a model, on transparent huge pages where the OS
/// offers them: a decode streams every weight once per token, and with 4 KiB pages each page
/// of that stream costs a TLB miss (a nested page walk under a hypervisor). Matrices are
/// bump-allocated from 2 MiB-aligned chunks, so that small ones (SmolLM2's are all under
/// 2 MiB) share huge pages too.
#[derive(Debug)]
pub struct PackArena {
    /// Bytes per chunk (a larger matrix gets a chunk of its own).
    chunk_bytes: usize,
    state: std::sync::Mutex<(Option<std::sync::Arc<HugePages>>, usize)>,
}

impl Default for PackArena {
    /// 64 MiB chunks: a few per model, little address space left unused.
    fn default() -> Self {
        Self::new(64 << 20)
    }
}

impl PackArena {
    /// An arena that maps `chunk_bytes` at a time (0: one mapping per matrix).
    pub fn new(chunk_bytes: usize) -> Self {
        Self { chunk_bytes, state: std::sync::Mutex::new((None, 0)) }
    }

    /// `len` zeroed bytes for one matrix (64-byte aligned in a chunk; heap memory where the
    /// OS refuses a mapping).
    fn alloc(&self, len: usize) -> Region {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (chunk, used) = &mut *st;
        let at = used.next_multiple_of(64);
        if let Some(c) = chunk.as_ref().filter(|c| at.checked_add(len).is_some_and(|end| end <= c.len())) {
            *used = at + len;
            return Region::Chunk { chunk: c.clone(), off: at, len };
        }
        let Some(want) = len.max(self.chunk_bytes).checked_next_multiple_of(2 << 20) else {
            return Region::Heap(vec![0; len]);
        };
        match HugePages::zeroed(want) {
            Some(c) => {
                let c = std::sync::Arc::new(c);
                *chunk = Some(c.clone());
                *used = len;
                Region::Chunk { chunk: c, off: 0, len }
            }
            None => Region::Heap(vec![0; len]),
        }
    }
}

/// A repacked matrix's bytes: a region of an arena chunk, or heap memory where mapping failed.
#[derive(Debug)]
enum Region {
    Chunk { chunk: std::sync::Arc<HugePages>, off: usize, len: usize },
    Heap(Vec<u8>),
}

impl Region {
    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: `off + len <= chunk.len` bytes past `base` lie in the mapping the `Arc`
            // keeps alive; no `&mut` to them exists once the matrix is built.
            Region::Chunk { chunk, off, len } => unsafe {
                std::slice::from_raw_parts(chunk.base().add(*off), *len)
            },
            Region::Heap(v) => v,
        }
    }

    /// The bytes for writing while the matrix is packed (`&mut self`: the packer owns it).
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as in `bytes`; the arena hands each range out once, so this region is
            // the only view of it, and `&mut self` makes this borrow exclusive.
            Region::Chunk { chunk, off, len } => unsafe {
                std::slice::from_raw_parts_mut(chunk.base().add(*off), *len)
            },
            Region::Heap(v) => v,
        }
    }
}

/// Writes row `r` (0..8) of one block record.
fn pack_row_block(l: &Layout, ib: &IntBlock, r: usize, rec: &mut [u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&ib.d);
    if l.min != Min::None {
        rec[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&ib.m);
    }
    if l.scales {
        for j in 0..l.nsub() {
            rec[l.sc_off() + GROUP * j + r] = ib.sc[j];
        }
    }
    if l.min == Min::Sub {
        for j in 0..l.nsub() {
            rec[l.mn_off() + GROUP * j + r] = ib.mn[j];
        }
    }
    for c in 0..l.blk / 32 {
        let ch = &mut rec[l.hdr_bytes() + c * l.chunk_bytes()..][..l.chunk_bytes()];
        let u = &ib.u[32 * c..32 * c + 32];
        for i in 0..4 {
            let lane = 4 * r + i;
            if l.bits == 8 {
                for k in 0..8 {
                    ch[32 * k + lane] = u[4 * k + i];
                }
                continue;
            }
            for k in 0..4 {
                ch[32 * k + lane] = (u[4 * k + i] & 0x0f) | ((u[4 * (k + 4) + i] & 0x0f) << 4);
            }
            match l.bits {
                4 => {}
                5 => {
                    ch[128 + lane] = (0..8).map(|k| ((u[4 * k + i] >> 4) & 1) << k).sum();
                }
                6 => {
                    for h in 0..2 {
                        ch[128 + 32 * h + lane] =
                            (0..4).map(|j| ((u[4 * (4 * h + j) + i] >> 4) & 3) << (2 * j)).sum();
                    }
                }
                _ => unreachable!("packed code width"),
            }
        }
    }
}

/// Quantized activations in the layout the packed kernels read (token-major).
#[derive(Debug, Default)]
pub struct PackScratch {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    iz: Vec<i32>,
}

/// A view of quantized activations for `n` tokens.
pub(crate) struct Acts<'a> {
    /// `n × n_in` codes.
    pub qs: &'a [i8],
    /// Per token (stride `n_in / blk`) and block: the activation scale.
    pub d: &'a [f32],
    /// Per token (stride `s_stride`) and block: `d·Σa` (Q4_1 only; one unused slot per
    /// token otherwise).
    pub s: &'a [f32],
    pub s_stride: usize,
    /// Per token (stride `iz_stride`) and block: the `i32` side values of
    /// [`Layout::iz_per_block`] (one unused slot per token when there are none).
    pub iz: &'a [i32],
    pub iz_stride: usize,
    /// Values per token.
    pub n_in: usize,
}

impl PackScratch {
    fn quantize(&mut self, fmt: usize, x: &[f32], n: usize, n_in: usize) -> Acts<'_> {
        let l = LAYOUTS[fmt];
        let nblk = n_in / l.blk;
        let izb = l.iz_per_block();
        // Side arrays keep at least one slot per token so that every token has a chunk.
        let s_stride = if l.min == Min::Block { nblk } else { 1 };
        let iz_stride = (nblk * izb).max(1);
        self.qs.resize(n * n_in, 0);
        self.d.resize(n * nblk, 0.0);
        self.s.resize(n * s_stride, 0.0);
        self.iz.resize(n * iz_stride, 0);
        x.par_chunks(n_in)
            .zip(self.qs[..n * n_in].par_chunks_mut(n_in))
            .zip(self.d[..n * nblk].par_chunks_mut(nblk))
            .zip(self.s[..n * s_stride].par_chunks_mut(s_stride))
            .zip(self.iz[..n * iz_stride].par_chunks_mut(iz_stride))
            .for_each(|((((xt, qs), d), s), iz)| quantize_token(fmt, xt, qs, d, s, iz));
        Acts {
            qs: &self.qs[..n * n_in],
            d: &self.d[..n * nblk],
            s: &self.s[..n * s_stride],
            s_stride,
            iz: &self.iz[..n * iz_stride],
            iz_stride,
            n_in,
        }
    }
}

/// Quantizes one token's activations for format `fmt` (same codes as the scalar reference).
fn quantize_token(fmt: usize, x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], iz: &mut [i32]) {
    let l = LAYOUTS[fmt];
    match fmt {
        FMT_Q4_1 => {
            let mut blk = [BlockQ8_1 { d: [0; 2], s: [0; 2], qs: [0; QK] }];
            for (b, (xc, qc)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
                quantize_q8_1_x86(xc, &mut blk);
                qc.copy_from_slice(&blk[0].qs);
                d[b] = blk[0].d();
                s[b] = blk[0].s();
            }
        }
        FMT_Q4_0 | FMT_Q5_0 | FMT_Q8_0 => {
            let mut blk = [BlockQ8_0 { d: [0; 2], qs: [0; QK] }];
            for (b, (xc, qc)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
                quantize_q8_0_x86(xc, &mut blk);
                qc.copy_from_slice(&blk[0].qs);
                d[b] = blk[0].d();
                let sum = |q: &[i8]| q.iter().map(|&q| q as i32).sum::<i32>();
                if l.lanes && l.lane_offset() != 0 {
                    // Q5_0, Q8_0: one correction per lane of four (`group_lanes`).
                    for (k, q) in blk[0].qs.chunks_exact(4).enumerate() {
                        iz[8 * b + k] = -l.lane_offset() * sum(q);
                    }
                } else if l.zero != 0 {
                    iz[b] = -l.zero * sum(&blk[0].qs);
                }
            }
        }
        FMT_Q4_K | FMT_Q6_K => {
            for (b, (xc, qc)) in x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K)).enumerate() {
                let y = BlockQ8K::quantize(xc);
                qc.copy_from_slice(&y.qs);
                d[b] = y.d();
                let bs = y.bsums();
                // i16 pairs: Q6_K's lane k needs sub-blocks (2k, 2k + 1) of 16; Q4_K's
                // sub-blocks of 32 are pairs of those, two sub-blocks per pair.
                let pair =
                    |lo: i32, hi: i32| (lo as i16 as u16 as u32 | ((hi as i16 as u16 as u32) << 16)) as i32;
                if fmt == FMT_Q6_K {
                    for k in 0..8 {
                        iz[8 * b + k] = pair(bs[2 * k] as i32, bs[2 * k + 1] as i32);
                    }
                } else {
                    for p in 0..4 {
                        let lo = bs[4 * p] as i32 + bs[4 * p + 1] as i32;
                        let hi = bs[4 * p + 2] as i32 + bs[4 * p + 3] as i32;
                        iz[4 * b + p] = pair(lo, hi);
                    }
                }
            }
        }
        _ => unreachable!("no packed layout"),
    }
}

/// The output matrix, shared by the tasks of one matmul.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: tasks write disjoint row ranges of the output (see `Job::store`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// One task: a run of row groups against every token.
pub(crate) struct Job<'a> {
    pub fmt: usize,
    /// The task's groups, `group_bytes` each.
    pub w: &'a [u8],
    pub group_bytes: usize,
    pub nblk: usize,
    pub acts: &'a Acts<'a>,
    pub n: usize,
    /// First output row of the task.
    pub row0: usize,
    pub n_out: usize,
    pub out: OutPtr,
}

impl Job<'_> {
    /// Stores the eight results of group `g` (task-relative) for token `t`.
    pub(crate) fn store(&self, g: usize, t: usize, v: &[f32; GROUP]) {
        let row = self.row0 + g * GROUP;
        let valid = GROUP.min(self.n_out - row);
        assert!(t < self.n);
        // SAFETY: `row + valid <= n_out` and `t < n`, so the range lies in the `n × n_out`
        // output; the rows `row0..` of this task are written by no other task.
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), self.out.0.add(t * self.n_out + row), valid);
        }
    }
}

fn run_job(isa: Isa, job: &Job) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: a `PackedMatrix` holds an `Isa` only if `Isa::available` detected it.
        Isa::Avx2 => unsafe { super::x86::avx2::run(job) },
        // SAFETY: as above.
        Isa::Avx512Vnni => unsafe { super::x86::vnni::run(job) },
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, job);
        unreachable!("no packed kernels on this architecture")
    }
}
