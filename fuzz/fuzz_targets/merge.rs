//! Merging state data: any two values merge or are refused with the same
//! verdict `fits` gives, never a panic.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [a, b] = parts::<2>(data);
    let (Ok(a), Ok(b)) = (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) else {
        return;
    };
    let fits = sluice_expr::merge::fits(&a, &b, "$").is_ok();
    let mut target = a.clone();
    let merged = sluice_expr::merge(&mut target, b, "$").is_ok();
    assert_eq!(fits, merged, "fits and merge disagree");
    assert!(sluice_expr::merge::json_eq(&a, &a));
});
