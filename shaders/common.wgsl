// Shared helpers, prepended to every kernel file: f32 rounded to f16 precision, done with
// integer ops (WGSL leaves the rounding of an f32-to-f16 conversion to the device). Reading
// f16 bits (`f16_to_f32`) and the KV cache's element type (`kv_t`) come from half_bits.wgsl
// or, on adapters with exact f16 conversions, half_native.wgsl.

// x rounded to the nearest f16 value (ties to even), kept as f32: what storing to f16 and
// reading back gives.
fn f16_round(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    let a = b & 0x7fffffffu;
    let sign = b & 0x80000000u;
    if (a > 0x7f800000u) {
        return x;
    }
    if (a >= 0x477ff000u) {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    if (a < 0x38800000u) {
        let r = round(bitcast<f32>(a) * 16777216.0) / 16777216.0;
        return bitcast<f32>(sign | bitcast<u32>(r));
    }
    let r = (a + 0xfffu + ((a >> 13u) & 1u)) & 0xffffe000u;
    return bitcast<f32>(sign | r);
}
