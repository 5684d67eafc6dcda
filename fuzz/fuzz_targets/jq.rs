//! jq: any program compiles or is refused, and runs on any input within
//! the time and memory limits, never a panic or an abort.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [code, input] = parts::<2>(data);
    let (Ok(code), Ok(input)) = (std::str::from_utf8(code), std::str::from_utf8(input)) else {
        return;
    };
    let input = serde_json::from_str(input).unwrap_or(serde_json::Value::Null);
    let Ok(p) = sluice_expr::Program::compile(code, &["trigger"]) else {
        return;
    };
    let scope = sluice_expr::MapScope::from_json(serde_json::json!({"trigger": input.clone()}));
    let _ = p.eval_json(&input, &scope, &limits());
});
