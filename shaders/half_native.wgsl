// f16 through the adapter's f16 feature, used only where the backend's probe found its
// f16/f32 conversions exact on all 65,536 bit patterns (no flushed subnormals): bits
// converted by the hardware, the KV cache held as f16 (half the memory and the reads; its
// values are f16-rounded first, so storing them is exact).

alias kv_t = f16;

fn f16_to_f32(h: u32) -> f32 {
    return unpack2x16float(h).x;
}
