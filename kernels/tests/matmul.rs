//! Every matmul variant (scalar and SIMD) against a reference that dequantizes the weights
//! and the quantized activations and sums in f64, on random data and odd shapes.

use ferrite_kernels::cpu::{self, dot::VecDot, Scratch};
use ferrite_kernels::quant::*;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = 10f32.powf(rng.random_range(-2.0..2.0));
    (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
}

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// Random weight rows of `ty`: quantized from random floats where we can quantize, random
/// bytes with sane f16 scales otherwise.
fn rand_weights(rng: &mut StdRng, ty: QuantType, n_in: usize, n_out: usize) -> Vec<u8> {
    if ty.can_quantize() {
        let mut out = Vec::new();
        for _ in 0..n_out {
            ty.quantize_row(&rand_f32(rng, n_in), &mut out).unwrap();
        }
        return out;
    }
    let n_blocks = n_in / ty.block_elems() * n_out;
    let mut bytes: Vec<u8> = (0..n_blocks * ty.block_bytes()).map(|_| rng.random()).collect();
    let d = |rng: &mut StdRng| h(rng.random_range(0.001f32..0.05));
    match ty {
        QuantType::Q5_K => bytemuck::cast_slice_mut::<u8, BlockQ5K>(&mut bytes).iter_mut().for_each(|b| {
            b.d = d(rng);
            b.dmin = d(rng);
        }),
        QuantType::Q2_K => bytemuck::cast_slice_mut::<u8, BlockQ2K>(&mut bytes).iter_mut().for_each(|b| {
            b.d = d(rng);
            b.dmin = d(rng);
        }),
        QuantType::Q3_K => {
            bytemuck::cast_slice_mut::<u8, BlockQ3K>(&mut bytes).iter_mut().for_each(|b| b.d = d(rng))
        }
        QuantType::IQ4_NL => {
            bytemuck::cast_slice_mut::<u8, BlockIQ4NL>(&mut bytes).iter_mut().for_each(|b| b.d = d(rng))
        }
        QuantType::IQ4_XS => {
            bytemuck::cast_slice_mut::<u8, BlockIQ4XS>(&mut bytes).iter_mut().for_each(|b| b.d = d(rng))
        }
        QuantType::BF16 => {
            for c in bytes.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits().to_le_bytes());
            }
        }
        other => panic!("no generator for {other:?}"),
    }
    bytes
}

/// What the kernel sees as activations: x after the weight type's activation quantization.
fn effective_acts<W: VecDot>(x: &[f32], n_in: usize) -> Vec<f32>
where
    W::Act: QuantBlockOrF32,
{
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n_in) {
        let mut acts = vec![bytemuck::Zeroable::zeroed(); n_in / W::ACT_ELEMS];
        W::quantize_act(row, &mut acts);
        for a in &acts {
            a.push_values(&mut out);
        }
    }
    out
}

/// Activation blocks back to floats.
trait QuantBlockOrF32 {
    fn push_values(&self, out: &mut Vec<f32>);
}
impl QuantBlockOrF32 for f32 {
    fn push_values(&self, out: &mut Vec<f32>) {
        out.push(*self)
    }
}
macro_rules! act_block {
    ($($b:ty),*) => {$(impl QuantBlockOrF32 for $b {
        fn push_values(&self, out: &mut Vec<f32>) {
            let mut v = vec![0f32; <$b as QuantBlock>::BLOCK_ELEMS];
            self.dequantize(&mut v);
            out.extend(v);
        }
    })*};
}
act_block!(BlockQ8_0, BlockQ8_1, BlockQ8K);

fn acts_for(ty: QuantType, x: &[f32], n_in: usize) -> Vec<f32> {
    use QuantType::*;
    match ty {
        F32 => effective_acts::<BlockF32>(x, n_in),
        F16 => effective_acts::<BlockF16>(x, n_in),
        BF16 => effective_acts::<BlockBF16>(x, n_in),
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => effective_acts::<BlockQ8_0>(x, n_in),
        Q4_1 | Q5_1 => effective_acts::<BlockQ4_1>(x, n_in),
        Q4_K | Q5_K | Q6_K => effective_acts::<BlockQ4K>(x, n_in),
        _ => x.to_vec(), // dequantizing path: f32 activations
    }
}

fn check(ty: QuantType, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let be = ty.block_elems();
    let n_in = be * rng.random_range(1..=(2048 / be).clamp(1, 9));
    let n_out = rng.random_range(1..=45);
    let n = [1, 1, 2, 3, 7][rng.random_range(0..5)];
    let w = rand_weights(&mut rng, ty, n_in, n_out);
    let x = rand_f32(&mut rng, n * n_in);
    let mut wf = vec![0f32; n_in * n_out];
    ty.dequantize_row(&w, &mut wf).unwrap();
    let xa = acts_for(ty, &x, n_in);
    // Q4_1/Q5_1 use the activation block sum `s`, stored as f16: allow |m|·|s|·2^-10 per block.
    let slack = |t: usize, o: usize| -> f64 {
        let ms: Vec<f32> = match ty {
            QuantType::Q4_1 => bytemuck::cast_slice::<u8, BlockQ4_1>(&w).iter().map(|b| b.m()).collect(),
            QuantType::Q5_1 => bytemuck::cast_slice::<u8, BlockQ5_1>(&w).iter().map(|b| b.m()).collect(),
            _ => return 0.0,
        };
        let bpr = n_in / 32;
        (0..bpr)
            .map(|b| {
                let s: f32 = xa[t * n_in + b * 32..t * n_in + b * 32 + 32].iter().sum();
                (ms[o * bpr + b] as f64 * s as f64).abs() * 2f64.powi(-10)
            })
            .sum()
    };
    for scalar in [true, false] {
        cpu::force_scalar(scalar);
        let mut out = vec![0f32; n * n_out];
        cpu::matmul(ty, &w, n_in, n_out, &x, n, &mut out, &mut Scratch::default());
        for t in 0..n {
            for o in 0..n_out {
                let (mut exact, mut mag) = (0f64, 0f64);
                for i in 0..n_in {
                    let p = wf[o * n_in + i] as f64 * xa[t * n_in + i] as f64;
                    exact += p;
                    mag += p.abs();
                }
                let got = out[t * n_out + o] as f64;
                assert!(
                    (got - exact).abs() <= 2e-5 * mag + 1e-6 + slack(t, o),
                    "{ty:?} seed {seed} scalar={scalar} shape {n}x{n_in}x{n_out} [{t},{o}]: {got} vs {exact} (mag {mag})"
                );
            }
        }
    }
    cpu::force_scalar(false);
}

#[test]
fn matmul_matches_reference_for_every_format() {
    use QuantType::*;
    let types = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, IQ4_XS];
    for ty in types {
        for seed in 0..12 {
            check(ty, seed * 1000 + ty as u64);
        }
    }
    eprintln!("matmul variant on this CPU: {}", cpu::variant());
}

#[test]
fn native_dots_cover_the_fetchable_models() {
    use QuantType::*;
    for ty in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K] {
        assert!(cpu::has_native_dot(ty), "{ty:?}");
    }
}
