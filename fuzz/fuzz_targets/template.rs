//! Templates: compiled from any option value and rendered on any input
//! under the limits, never a panic.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [option, input] = parts::<2>(data);
    let (Ok(option), Ok(input)) = (std::str::from_utf8(option), std::str::from_utf8(input)) else {
        return;
    };
    let option =
        serde_json::from_str(option).unwrap_or(serde_json::Value::String(option.to_owned()));
    let input = serde_json::from_str(input).unwrap_or(serde_json::Value::Null);
    let vars = ["trigger", "last"];
    let Ok(t) = sluice_expr::TemplateValue::compile(&option, &vars) else {
        return;
    };
    let scope = sluice_expr::MapScope::from_json(
        serde_json::json!({"trigger": {"body": input.clone()}, "last": input.clone()}),
    );
    let _ = t.render_json(&input, &scope, &limits());
});
