// For adapters without f64: the wide sum of RMSNorm as a float pair (Knuth's two-sum; a
// compiler that reassociates float ops may reduce it to a plain f32 sum).

alias Wide = vec2<f32>;

fn wide_zero() -> Wide {
    return vec2<f32>(0.0, 0.0);
}

fn wide_add(s: Wide, x: f32) -> Wide {
    let t = s.x + x;
    let bb = t - s.x;
    let err = (s.x - (t - bb)) + (x - bb);
    return vec2<f32>(t, s.y + err);
}

// (hi + lo) / n, rounded once: a quotient and its correction.
fn wide_mean(s: Wide, n: u32) -> f32 {
    let w = f32(n);
    let q = s.x / w;
    let r = fma_exact(-q, w, s.x) + s.y;
    return q + r / w;
}

// The wide value rounded to f32 (the pair's sum).
fn wide_f32(s: Wide) -> f32 {
    return s.x + s.y;
}

// Without f64, glibc's expf (see exact_f64.wgsl) is approximated by the CPU backend's own
// exponential: within an ulp or two.
fn exp_libm(x: f32) -> f32 {
    return exp_cpu(x);
}
