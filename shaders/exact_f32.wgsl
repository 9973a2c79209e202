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
