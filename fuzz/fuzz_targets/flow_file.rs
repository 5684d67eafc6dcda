//! The flow-file reader: any text is a flow or diagnostics, never a panic,
//! and every diagnostic points inside the file.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registry = sluice_action::Registry::core();
    if let Err(d) = sluice_model::load("fuzz.yaml", text, &registry) {
        for item in &d.items {
            assert!(
                item.span.start <= item.span.end && item.span.end <= text.len(),
                "{item:?}"
            );
            assert!(text.is_char_boundary(item.span.start), "{item:?}");
        }
        let _ = d.to_string();
    }
});
