//! JSONPath queries and Zeebe mappings: any path parses or is refused;
//! queries select and mappings write on any document, never a panic.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [query, source, target, doc] = parts::<4>(data);
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let (Some(query), Some(source), Some(target), Some(doc)) =
        (text(query), text(source), text(target), text(doc))
    else {
        return;
    };
    let doc = serde_json::from_str(&doc).unwrap_or(serde_json::Value::Null);
    if let Ok(q) = sluice_expr::Query::parse(&query) {
        let _ = q.select(&doc);
        let _ = q.select_located(&doc);
    }
    if let (Ok(source), Ok(target)) = (
        sluice_expr::MappingPath::parse(&source),
        sluice_expr::MappingPath::parse_target(&target),
    ) {
        let m = [sluice_expr::Mapping { source, target }];
        let _ = sluice_expr::mapping::extract(&doc, &m);
        let _ = sluice_expr::mapping::merge_into(&doc, doc.clone(), &m);
    }
});
