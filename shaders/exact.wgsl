// Arithmetic that must match the CPU bit for bit where the device's own may not:
// `fma_soft`, a correctly rounded a·b + c in integer arithmetic (Mesa's llvmpipe evaluates
// WGSL `fma` as a multiply and an add, and its compiler may rewrite float expressions, so
// the emulation uses no float op whose rounding matters), and `exp_cpu`, the CPU backend's
// exponential. Each kernel file gets this file, then one of `exact_f64.wgsl` /
// `exact_f32.wgsl`, then a one-line `fma_exact` that the backend picks per adapter: `fma`
// where the device fuses it, else `fma_soft` (on llvmpipe about 3× a multiply and an add;
// f64 arithmetic with a fallback for double-rounding ties measured slower there).

fn u64_shl(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return v;
    }
    if (s >= 32u) {
        return vec2<u32>(0u, v.x << (s - 32u));
    }
    return vec2<u32>(v.x << s, (v.y << s) | (v.x >> (32u - s)));
}

// v >> s with every bit shifted out ORed into bit 0 (the sticky bit of rounding).
fn u64_shr_sticky(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return v;
    }
    if (s >= 64u) {
        return vec2<u32>(select(0u, 1u, (v.x | v.y) != 0u), 0u);
    }
    var r: vec2<u32>;
    var lost: u32;
    if (s >= 32u) {
        let t = s - 32u;
        r = vec2<u32>(v.y >> t, 0u);
        lost = v.x | select(v.y << (32u - t), 0u, t == 0u);
    } else {
        r = vec2<u32>((v.x >> s) | (v.y << (32u - s)), v.y >> s);
        lost = v.x << (32u - s);
    }
    r.x |= select(0u, 1u, lost != 0u);
    return r;
}

fn u64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// a − b for a ≥ b.
fn u64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

fn fma_soft(a: f32, b: f32, c: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let uc = bitcast<u32>(c);
    let ea = (ua >> 23u) & 0xffu;
    let eb = (ub >> 23u) & 0xffu;
    let ec = (uc >> 23u) & 0xffu;
    let ma = (ua & 0x7fffffu) | select(0x800000u, 0u, ea == 0u);
    let mb = (ub & 0x7fffffu) | select(0x800000u, 0u, eb == 0u);
    let mc = (uc & 0x7fffffu) | select(0x800000u, 0u, ec == 0u);
    if (ea == 255u || eb == 255u || ec == 255u || ma == 0u || mb == 0u) {
        // Infinities, NaN, or a zero product: a·b is exact, one rounding.
        return a * b + c;
    }
    if (mc == 0u) {
        return a * b;
    }
    // The 48-bit product of the significands, from 16-bit halves.
    let a1 = ma >> 16u;
    let a0 = ma & 0xffffu;
    let b1 = mb >> 16u;
    let b0 = mb & 0xffffu;
    let low = a0 * b0;
    let mid = a1 * b0 + a0 * b1;
    let plo = low + (mid << 16u);
    let prod = vec2<u32>(plo, a1 * b1 + (mid >> 16u) + select(0u, 1u, plo < low));
    // Both terms with their leading bit near bit 61: value = v · 2^x.
    let p = u64_shl(prod, 14u);
    let xp = i32(max(ea, 1u) + max(eb, 1u)) - 314;
    let q = vec2<u32>(0u, mc << 6u);
    let xq = i32(max(ec, 1u)) - 188;
    let sp = (ua ^ ub) >> 31u;
    let sq = uc >> 31u;
    var big = p;
    var small = q;
    var x = xp;
    var sbig = sp;
    var ssmall = sq;
    if (xq > xp) {
        big = q;
        small = p;
        x = xq;
        sbig = sq;
        ssmall = sp;
    }
    small = u64_shr_sticky(small, u32(min(abs(xp - xq), 64)));
    var r: vec2<u32>;
    var sign = sbig;
    if (sbig == ssmall) {
        r = u64_add(big, small);
    } else if (big.y > small.y || (big.y == small.y && big.x >= small.x)) {
        r = u64_sub(big, small);
    } else {
        r = u64_sub(small, big);
        sign = ssmall;
    }
    if ((r.x | r.y) == 0u) {
        return 0.0;
    }
    let k = select(31 - i32(countLeadingZeros(r.x)), 63 - i32(countLeadingZeros(r.y)), r.y != 0u);
    var s = k - 23;
    var e = x + s + 150;
    if (e < 1) {
        s += 1 - e;
        e = 1;
    }
    if (e >= 255) {
        return bitcast<f32>((sign << 31u) | 0x7f800000u);
    }
    var m: u32;
    if (s <= 0) {
        m = r.x << u32(-s);
    } else if (s == 1) {
        m = (r.x >> 1u) + (r.x & (r.x >> 1u) & 1u);
    } else {
        // Significand, guard bit and sticky bit.
        let t = u64_shr_sticky(r, u32(s - 2)).x;
        m = t >> 2u;
        let g = (t >> 1u) & 1u;
        m += g & ((t & 1u) | (m & 1u));
    }
    if (m == 0x1000000u) {
        m = 0x800000u;
        e += 1;
        if (e >= 255) {
            return bitcast<f32>((sign << 31u) | 0x7f800000u);
        }
    }
    return bitcast<f32>((sign << 31u) | ((u32(e - 1) << 23u) + m));
}

// e^x as the CPU backend's attention kernel computes it (x = n·ln2 + r, a degree-6
// polynomial for e^r, then 2^n through the exponent bits), for x ≤ 88; clamped below −87.
fn exp_cpu(x0: f32) -> f32 {
    let x = max(x0, -87.0);
    let n = round(x * 1.4426950408889634);
    var r = fma_exact(-n, 0.6933594, x);
    r = fma_exact(-n, -2.1219444e-4, r);
    var p = 1.9875691e-4;
    p = fma_exact(p, r, 1.3981999e-3);
    p = fma_exact(p, r, 8.333452e-3);
    p = fma_exact(p, r, 4.1665796e-2);
    p = fma_exact(p, r, 1.6666665e-1);
    p = fma_exact(p, r, 0.5);
    p = fma_exact(p, r * r, r + 1.0);
    return p * bitcast<f32>(u32(i32(n) + 127) << 23u);
}

// e^x as llama.cpp's CPU backend computes it for SiLU on AVX-512 machines (ggml_v_expf; the
// CPU backend's `exp_ggml`): n = round(x·log2 e) by the 1.5·2²³ shift, b = x − n·ln2 in two
// fused steps, a degree-5 polynomial, then j·2ⁿ as two exact power-of-two factors (one
// rounding); |n| > 192 gives 0 or ∞.
fn pow2_bits(k: i32) -> f32 {
    return bitcast<f32>(u32(k + 127) << 23u);
}

fn exp_ggml(x: f32) -> f32 {
    let shift = 12582912.0;
    let z = fma_exact(x, bitcast<f32>(0x3fb8aa3bu), shift);
    let n = z - shift;
    let b = fma_exact(-n, bitcast<f32>(0x35bfbe8eu), fma_exact(-n, bitcast<f32>(0x3f317200u), x));
    let u = b * b;
    let hi = fma_exact(fma_exact(bitcast<f32>(0x3c072010u), b, bitcast<f32>(0x3d2b9f17u)), u,
                       fma_exact(bitcast<f32>(0x3e2aaf33u), b, bitcast<f32>(0x3efffedbu)));
    let j = fma_exact(hi, u, fma_exact(bitcast<f32>(0x3f7ffff6u), b, 1.0));
    if (abs(n) > 192.0) {
        return select(bitcast<f32>(0x7f800000u), 0.0, n <= 0.0);
    }
    let ni = i32(n);
    let n1 = ni >> 1u;
    return (j * pow2_bits(n1)) * pow2_bits(ni - n1);
}
