//! A webhook's body: any bytes under any content type are `$trigger.body`
//! or a clear refusal, never a panic; text is kept only when it is UTF-8.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [ctype, body] = parts::<2>(data);
    if let Ok(v) = sluice_server::parse::webhook_body(ctype, body) {
        if let serde_json::Value::String(s) = &v {
            assert!(!s.contains('\u{fffd}') || String::from_utf8_lossy(body).contains('\u{fffd}'));
        }
    }
});
