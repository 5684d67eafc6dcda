//! The CloudEvent reader: any request to `/events` (structured or binary
//! mode) is an event that meets the spec, its JSON or text `data_base64`
//! decoded, or a clear refusal; never a panic.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [ctype, binary, body] = parts::<3>(data);
    let mut headers: Vec<(&str, &[u8])> = vec![("content-type", ctype)];
    // Binary mode's headers, `name=value` lines.
    let lines: Vec<(String, &[u8])> = binary
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let i = l.iter().position(|b| *b == b'=')?;
            let name = std::str::from_utf8(&l[..i]).ok()?;
            Some((format!("ce-{name}"), &l[i + 1..]))
        })
        .collect();
    headers.extend(lines.iter().map(|(n, v)| (n.as_str(), *v)));
    if let Ok(event) = sluice_server::parse::cloudevent(&headers, body) {
        assert!(
            sluice_action::core_ops::check_cloudevent(&event).is_ok(),
            "{event}"
        );
        // `data_base64` stays only for bytes that are neither JSON nor text.
        if event.get("data_base64").is_some() {
            let mime = sluice_action::core_ops::mime_of(
                event
                    .get("datacontenttype")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
            );
            assert!(
                !(mime == "application/json"
                    || mime.ends_with("+json")
                    || mime.starts_with("text/")),
                "{event}"
            );
        }
    }
});
