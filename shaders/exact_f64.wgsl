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

// The wide value rounded to f32.
fn wide_f32(s: Wide) -> f32 {
    return f32(s);
}

// 2^(i/32), the table of glibc's expf (its `tab` with the exponent steps put back).
const EXP2_32 = array<f64, 32>(
    f64(1.0), f64(1.0218971486541166), f64(1.0442737824274138), f64(1.0671404006768237),
    f64(1.0905077326652577), f64(1.1143867425958924), f64(1.1387886347566916), f64(1.1637248587775775),
    f64(1.189207115002721), f64(1.215247359980469), f64(1.241857812073484), f64(1.2690509571917332),
    f64(1.2968395546510096), f64(1.3252366431597413), f64(1.3542555469368927), f64(1.383909881963832),
    f64(1.4142135623730951), f64(1.4451808069770467), f64(1.4768261459394993), f64(1.5091644275934228),
    f64(1.5422108254079407), f64(1.5759808451078865), f64(1.6104903319492543), f64(1.645755478153965),
    f64(1.681792830507429), f64(1.718619298122478), f64(1.7562521603732995), f64(1.7947090750031072),
    f64(1.8340080864093424), f64(1.8741676341103), f64(1.9152065613971474), f64(1.9571441241754002),
);

// e^x for x ≤ 0 as glibc's expf computes it (the libm llama.cpp's flash attention calls; the
// CPU backend's f16-mode attention calls it too): k = round(x·32/ln2) and r = x·32/ln2 − k
// rounded once (the constant split so that both products are exact), 2^(r/32) by its cubic,
// times 2^(k/32) from the table and two exact powers of two, rounded once to f32. Checked
// against glibc on every f32 in [-110, 0], with fused and unfused multiply-adds alike.
fn exp_libm(x: f32) -> f32 {
    if (x < -103.972084) {
        return 0.0;
    }
    let xd = f64(x);
    let p1 = f64(46.16624116897583) * xd;
    let p2 = f64(1.3947099830602383e-07) * xd;
    let kd = round(p1 + p2);
    let r = (p1 - kd) + p2;
    let k = i32(kd);
    let z = f64(1.6938359250920212e-06) * r + f64(0.00023459809789509004);
    let y = (z * (r * r)) + (f64(0.021660849396613134) * r + f64(1.0));
    let e = k >> 5u;
    let e1 = e / 2;
    let s = EXP2_32[k & 31] * f64(bitcast<f32>(u32(e1 + 127) << 23u)) * f64(bitcast<f32>(u32(e - e1 + 127) << 23u));
    return f32(y * s);
}
