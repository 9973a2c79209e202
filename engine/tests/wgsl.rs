//! The WGSL backend: every shader parses and validates with naga and translates to SPIR-V
//! (no device needed), and every kernel matches the CPU backend on random data where an
//! adapter exists (in CI, Mesa's software Vulkan driver, lavapipe).
#![cfg(feature = "wgpu")]

use ferrite_engine::backend::wgsl::{shader_source, Caps, SHADERS};
use naga::valid::Capabilities;

/// ggml type ids the matmul files are specialised for (their `QTYPE` override).
const QTYPES: [f64; 8] = [0.0, 1.0, 2.0, 3.0, 6.0, 8.0, 12.0, 14.0];

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
            let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga_caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}.wgsl ({caps:?}): {}", e.emit_to_string(&src)));
            // The Vulkan path's translation, per specialisation: naga's SPIR-V writer has
            // refused constructs that validate (a pointer into a struct behind a pointer).
            let qtypes: &[f64] = if name.starts_with("matmul") { &QTYPES } else { &[0.0] };
            for &q in qtypes {
                let mut constants = naga::back::PipelineConstants::default();
                if name.starts_with("matmul") {
                    constants.insert("QTYPE".to_string(), q);
                }
                let (m, i) =
                    naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
                        .unwrap_or_else(|e| panic!("{name}.wgsl ({caps:?}, QTYPE {q}): {e}"));
                naga::back::spv::write_vec(&m, &i, &naga::back::spv::Options::default(), None)
                    .unwrap_or_else(|e| panic!("{name}.wgsl ({caps:?}, QTYPE {q}): SPIR-V: {e}"));
            }
        }
    }
}
