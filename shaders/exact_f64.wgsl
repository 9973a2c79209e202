// For adapters with f64: the wide sum of RMSNorm in f64, as the CPU sums.

alias Wide = f64;

fn wide_zero() -> Wide {
    return f64(0.0);
}

fn wide_add(s: Wide, x: f32) -> Wide {
    return s + f64(x);
}

// (the sum / n) rounded to f32, as the CPU's `(sum / n as f64) as f32`.
fn wide_mean(s: Wide, n: u32) -> f32 {
    return f32(s / f64(n));
}
