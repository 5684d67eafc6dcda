//! JSONPath: full RFC 9535 queries for reading (through `serde_json_path`),
//! and the mapping subset of SEMANTICS.md section 4 for reading and writing.
//!
//! The mapping subset is `$`, a child by `.name`, `['name']` or `["name"]`,
//! and an array index `[n]`; a source may also hold the wildcard `.*` or
//! `[*]` (every child of an object, every element of an array), and reads,
//! as Zeebe does, the first value it matches in document order. Writing creates the objects and arrays a path
//! needs; writing into an existing object keeps its other keys; `[n]` on an
//! existing array replaces that element (an index past the end appends, so a
//! new array made for `[3]` holds the value as its only element, as in
//! Zeebe); `$` replaces the whole document. As in Zeebe, a name of digits
//! (`.0`) on an array is an index, and another name written into an array
//! turns it into an object keyed by its indexes (`{"0": .., "1": .., name}`),
//! so nothing in it is lost. Any other container of the wrong kind on the
//! way (an index into an object, anything into a scalar) is replaced by the
//! container the path needs.

use crate::template::PathSeg;
use crate::val::{Obj, Val};
use serde_json::Value;
use serde_json_path::JsonPath;
use std::fmt;
use std::sync::Arc;

/// A JSONPath query (RFC 9535), parsed once.
#[derive(Clone, Debug)]
pub struct Query {
    text: String,
    path: JsonPath,
}

/// A JSONPath that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath `{text}` at offset {offset}: {message}")]
pub struct PathError {
    /// The path as written.
    pub text: String,
    /// Byte offset of the problem within the path.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// Parse an RFC 9535 query with serde_json_path, which panics on some
/// unfinished queries (an escape cut short inside a bracket, found by the
/// fuzzer): such a query does not parse. Every JSONPath Sluice reads is
/// parsed here.
pub fn json_path(text: &str) -> Result<JsonPath, PathError> {
    // The panic comes from a `\u` escape with fewer than two characters
    // after it at the end of the query (serde_json_path reads there with a
    // streaming parser): a valid query has four hex digits and a closing
    // quote after every `\u`, so fewer than four characters left is an
    // unfinished query. Refused before the parser sees it, so that no panic
    // happens at all (a fuzzer aborts on any panic, caught or not).
    if let Some(at) = text
        .match_indices("\\u")
        .map(|(i, _)| i)
        .find(|i| text.len() - (i + 2) < 4)
    {
        return Err(PathError {
            text: text.to_owned(),
            offset: at,
            message: "the query ends inside a `\\u` escape".to_owned(),
        });
    }
    // serde_json_path takes time exponential in the nesting of brackets
    // (each level doubles it: 12 levels 10 ms, 24 levels about a minute,
    // found by the fuzzer): queries nest a few levels at most.
    if let Some(at) = too_deep(text) {
        return Err(PathError {
            text: text.to_owned(),
            offset: at,
            message: format!("the query nests brackets more than {MAX_NESTING} levels deep"),
        });
    }
    let parsed = std::panic::catch_unwind(|| JsonPath::parse(text)).map_err(|_| PathError {
        text: text.to_owned(),
        offset: text.len(),
        message: "the query ends before it is complete".to_owned(),
    })?;
    parsed.map_err(|e| PathError {
        text: text.to_owned(),
        offset: e.position().min(text.len()),
        message: e.message().to_owned(),
    })
}

/// The deepest a JSONPath may nest brackets and parentheses.
pub const MAX_NESTING: usize = 10;

/// Where `text` first nests brackets and parentheses past [`MAX_NESTING`]
/// (outside string literals), if it does.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '[' | '(' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(i);
                    }
                }
                ']' | ')' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    None
}

impl Query {
    /// Parse an RFC 9535 query.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        json_path(text).map(|path| Self {
            text: text.to_owned(),
            path,
        })
    }

    /// The query as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every node the query selects, in document order.
    pub fn select<'v>(&self, v: &'v Value) -> Vec<&'v Value> {
        self.path.query(v).all()
    }

    /// Every node with its normalized path (such as `$['a'][0]`).
    pub fn select_located<'v>(&self, v: &'v Value) -> Vec<(String, &'v Value)> {
        self.path
            .query_located(v)
            .into_iter()
            .map(|n| (normalized(n.location()), n.node()))
            .collect()
    }
}

/// Format a normalized path as RFC 9535 section 2.7 writes it.
fn normalized(p: &serde_json_path::NormalizedPath<'_>) -> String {
    use serde_json_path::PathElement;
    let mut out = String::from("$");
    for e in p.iter() {
        match e {
            PathElement::Index(i) => out.push_str(&format!("[{i}]")),
            PathElement::Name(name) => {
                out.push_str("['");
                for c in name.chars() {
                    match c {
                        '\'' => out.push_str("\\'"),
                        '\\' => out.push_str("\\\\"),
                        '\u{8}' => out.push_str("\\b"),
                        '\u{c}' => out.push_str("\\f"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push_str("']");
            }
        }
    }
    out
}

/// A path of the mapping subset: `$`, `.name`, `['name']`, `[n]`, and in
/// a source `.*` or `[*]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingPath {
    text: String,
    /// Every part, wildcards included (`None`).
    parts: Vec<Option<PathSeg>>,
    /// The parts that are not wildcards: the whole path of a target.
    segs: Vec<PathSeg>,
}

impl fmt::Display for MappingPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl MappingPath {
    /// Parse a mapping path.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let err = |offset: usize, message: &str| PathError {
            text: text.to_owned(),
            offset,
            message: message.to_owned(),
        };
        let b = text.as_bytes();
        if b.first() != Some(&b'$') {
            return Err(err(0, "a mapping path starts with `$`"));
        }
        let mut parts = Vec::new();
        let mut i = 1;
        while i < b.len() {
            match b[i] {
                b'.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                        j += 1;
                    }
                    if j == start {
                        return Err(err(i, "expected a name after `.`"));
                    }
                    let name = &text[start..j];
                    if name == "*" {
                        parts.push(None);
                        i = j;
                        continue;
                    }
                    if name.contains(['*', ']', '\'', '"', ' ']) {
                        return Err(err(
                            start,
                            "only plain names are supported after `.`; use ['name'] for other names",
                        ));
                    }
                    parts.push(Some(PathSeg::Key(name.to_owned())));
                    i = j;
                }
                b'[' => {
                    let start = i + 1;
                    match b.get(start) {
                        Some(b'*') if b.get(start + 1) == Some(&b']') => {
                            parts.push(None);
                            i = start + 2;
                        }
                        Some(q @ (b'\'' | b'"')) => {
                            let mut j = start + 1;
                            let mut name = String::new();
                            loop {
                                match b.get(j) {
                                    None => return Err(err(start, "unclosed quoted name")),
                                    Some(b'\\') => {
                                        let Some(c) = text[j + 1..].chars().next() else {
                                            return Err(err(j, "unfinished escape"));
                                        };
                                        name.push(c);
                                        j += 1 + c.len_utf8();
                                    }
                                    Some(c) if c == q => break,
                                    Some(_) => {
                                        let Some(c) = text[j..].chars().next() else {
                                            return Err(err(j, "unclosed quoted name"));
                                        };
                                        name.push(c);
                                        j += c.len_utf8();
                                    }
                                }
                            }
                            if b.get(j + 1) != Some(&b']') {
                                return Err(err(j + 1, "expected `]` after the quoted name"));
                            }
                            parts.push(Some(PathSeg::Key(name)));
                            i = j + 2;
                        }
                        Some(c) if c.is_ascii_digit() => {
                            let mut j = start;
                            while j < b.len() && b[j].is_ascii_digit() {
                                j += 1;
                            }
                            if b.get(j) != Some(&b']') {
                                return Err(err(j, "expected `]` after the index"));
                            }
                            let n: usize = text[start..j]
                                .parse()
                                .map_err(|_| err(start, "index is too large"))?;
                            parts.push(Some(PathSeg::Index(n)));
                            i = j + 1;
                        }
                        _ => {
                            return Err(err(
                                start,
                                "expected a quoted name, a non-negative index or `*` (slices and filters are not supported in mappings)",
                            ));
                        }
                    }
                }
                _ => return Err(err(i, "expected `.` or `[`")),
            }
        }
        let segs = parts.iter().flatten().cloned().collect();
        Ok(Self {
            text: text.to_owned(),
            parts,
            segs,
        })
    }

    /// Parse a path that is written to: one place, so no wildcard.
    pub fn parse_target(text: &str) -> Result<Self, PathError> {
        let p = Self::parse(text)?;
        match p.wildcard_at() {
            Some(offset) => Err(PathError {
                text: text.to_owned(),
                offset,
                message: "a target names one place: `*` is only for sources".to_owned(),
            }),
            None => Ok(p),
        }
    }

    /// Where the first wildcard is written, if the path has one.
    fn wildcard_at(&self) -> Option<usize> {
        self.parts
            .iter()
            .any(Option::is_none)
            .then(|| self.text.find('*').unwrap_or(0))
    }

    /// The path as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The segments after `$` (of a target: its wildcards are not among them).
    pub fn segments(&self) -> &[PathSeg] {
        &self.segs
    }

    /// Whether the path is `$`.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The value at the path, if there is one; through a wildcard, the
    /// first value matched in document order (as Zeebe reads `$.*`).
    pub fn get<'v>(&self, v: &'v Val) -> Option<&'v Val> {
        first_match(&self.parts, v)
    }

    /// Write `value` at the path, creating what is missing (a target has no
    /// wildcard: see [`MappingPath::parse_target`]); only the arrays and
    /// objects on the way are copied, and only when shared.
    pub fn set(&self, doc: &mut Val, value: Val) {
        set_at(&self.segs, doc, value);
    }
}

fn set_at(segs: &[PathSeg], cur: &mut Val, value: Val) {
    let Some((s, rest)) = segs.split_first() else {
        *cur = value;
        return;
    };
    let index = match (s, &*cur) {
        (PathSeg::Index(i), _) => Some(*i),
        // As in Zeebe: a name of digits into an array is an index.
        (PathSeg::Key(k), Val::Arr(_)) => array_index(k),
        (PathSeg::Key(_), _) => None,
    };
    match (s, index) {
        (_, Some(i)) => {
            if !matches!(cur, Val::Arr(_)) {
                *cur = Val::Arr(Arc::default());
            }
            let Val::Arr(a) = cur else {
                unreachable!("just made an array")
            };
            let a = Arc::make_mut(a);
            // As in Zeebe: an index past the end (or into an array made
            // just now) appends.
            let i = if i < a.len() {
                i
            } else {
                a.push(Val::Null);
                a.len() - 1
            };
            set_at(rest, &mut a[i], value);
        }
        (PathSeg::Key(k), None) => {
            match std::mem::take(cur) {
                o @ Val::Obj(_) => *cur = o,
                // As in Zeebe: another name into an array turns it into an
                // object keyed by the elements' indexes.
                Val::Arr(a) => {
                    *cur = Val::obj(
                        a.iter()
                            .enumerate()
                            .map(|(i, v)| (Arc::from(i.to_string()), v.clone()))
                            .collect(),
                    );
                }
                _ => *cur = Val::obj(Obj::default()),
            }
            let Val::Obj(o) = cur else {
                unreachable!("just made an object")
            };
            let at = Arc::make_mut(o).entry(k);
            set_at(rest, at, value);
        }
        (PathSeg::Index(_), None) => unreachable!("an index has one"),
    }
}

/// A name that addresses an array element: digits, without a leading zero
/// (as Zeebe reads `.0`).
fn array_index(name: &str) -> Option<usize> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    ok.then(|| name.parse().ok()).flatten()
}

/// The first value `parts` match under `v`, depth first in document order.
fn first_match<'v>(parts: &[Option<PathSeg>], v: &'v Val) -> Option<&'v Val> {
    let Some((first, rest)) = parts.split_first() else {
        return Some(v);
    };
    match (first, v) {
        (Some(PathSeg::Key(k)), Val::Obj(o)) => first_match(rest, o.get(k)?),
        (Some(PathSeg::Key(k)), Val::Arr(a)) => first_match(rest, a.get(array_index(k)?)?),
        (Some(PathSeg::Index(i)), Val::Arr(a)) => first_match(rest, a.get(*i)?),
        (None, Val::Obj(o)) => o.values().find_map(|c| first_match(rest, c)),
        (None, Val::Arr(a)) => a.iter().find_map(|c| first_match(rest, c)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `mapping` fuzz target: serde_json_path panicked on an
    /// escape cut short inside brackets.
    /// Found by the `mapping` fuzz target: nested filters took time
    /// exponential in their depth (a 273-byte query over 10 s).
    #[test]
    fn queries_nested_too_deep_are_refused_at_once() {
        let deep = format!("$.a{}", "[?@.p".repeat(30));
        let t = std::time::Instant::now();
        let e = Query::parse(&deep).unwrap_err();
        assert!(e.message.contains("more than 10 levels"), "{e:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let ok = format!("$.a{}{}", "[?@.p".repeat(4), "]".repeat(4));
        assert!(Query::parse(&ok).is_ok());
        // Brackets inside strings do not count.
        assert!(Query::parse(&format!("$[\"{}\"]", "[".repeat(40))).is_ok());
    }

    #[test]
    fn an_unfinished_escape_in_brackets_is_a_parse_error() {
        let e = Query::parse("$[\"=[[[[$.\\\\\\u").unwrap_err();
        assert!(
            e.message.contains("complete") || !e.message.is_empty(),
            "{e:?}"
        );
        assert!(Query::parse("$.a[\"b").is_err());
        assert!(Query::parse("$.store.book[0]").is_ok());
    }
    use crate::data::to_json;
    use crate::value::to_val;
    use serde_json::json;

    fn read(p: &str, doc: &Value) -> Option<Value> {
        MappingPath::parse(p)
            .unwrap()
            .get(&to_val(doc))
            .map(to_json)
    }

    fn write(doc: &mut Value, p: &str, v: Value) {
        let mut d = to_val(doc);
        MappingPath::parse(p).unwrap().set(&mut d, to_val(&v));
        *doc = to_json(&d);
    }

    #[test]
    fn a_wildcard_reads_the_first_match_in_document_order() {
        let doc =
            json!({"b": {"x": 1}, "a": {"name": "first"}, "c": [{"y": 0}, {"name": "second"}]});
        let get = |p: &str| read(p, &doc);
        assert_eq!(get("$.*"), Some(json!({"x": 1})));
        assert_eq!(get("$.*.name"), Some(json!("first")));
        assert_eq!(get("$.c[*].name"), Some(json!("second")));
        assert_eq!(get("$['c'].*.y"), Some(json!(0)));
        assert_eq!(get("$.*.nothing"), None);
        assert_eq!(get("$.a.name.*"), None);
        assert_eq!(
            get("$.c[*][*]"),
            Some(json!(0)),
            "`[*]` of an object: its values"
        );
        assert_eq!(get("$.c[*][*][*]"), None, "a number has no children");
        assert!(MappingPath::parse_target("$.a.*").is_err_and(|e| e.offset == 4));
        assert!(MappingPath::parse_target("$[*]").is_err());
        assert!(MappingPath::parse("$.a*").is_err());
        assert!(MappingPath::parse("$[*").is_err());
    }

    #[test]
    fn parses_the_subset() {
        let p = MappingPath::parse("$.a['b c'][2].d").unwrap();
        assert_eq!(
            p.segments(),
            &[
                PathSeg::Key("a".into()),
                PathSeg::Key("b c".into()),
                PathSeg::Index(2),
                PathSeg::Key("d".into())
            ]
        );
        assert!(MappingPath::parse("$").unwrap().is_root());
        assert!(MappingPath::parse("a.b").is_err());
        assert!(MappingPath::parse("$..a").is_err());
        assert!(MappingPath::parse("$['a'").is_err());
    }

    #[test]
    fn set_creates_what_is_missing_and_keeps_siblings() {
        let mut doc = json!({"a": {"keep": 1}});
        write(&mut doc, "$.a.b[1].c", json!(5));
        assert_eq!(doc, json!({"a": {"keep": 1, "b": [{"c": 5}]}}));
        write(&mut doc, "$.a.b[0]", json!("x"));
        assert_eq!(doc["a"]["b"][0], json!("x"));
        write(&mut doc, "$", json!([1]));
        assert_eq!(doc, json!([1]));
    }

    #[test]
    fn names_meet_arrays_as_in_zeebe() {
        let mut doc = json!({"arr": [0, 1, 2]});
        let set = write;
        set(&mut doc, "$.arr.0", json!("bar"));
        assert_eq!(doc, json!({"arr": ["bar", 1, 2]}));
        assert_eq!(read("$.arr.1", &doc), Some(json!(1)));
        assert_eq!(read("$.arr.01", &doc), None);
        set(&mut doc, "$['arr']['0s']", json!("x"));
        assert_eq!(doc, json!({"arr": {"0": "bar", "1": 1, "2": 2, "0s": "x"}}));
        // On an object, digits are a key.
        set(&mut doc, "$.arr.7", json!(7));
        assert_eq!(doc["arr"]["7"], json!(7));
        // Into a scalar: replaced.
        let mut doc = json!({"a": 1});
        set(&mut doc, "$.a.b", json!(2));
        assert_eq!(doc, json!({"a": {"b": 2}}));
    }

    #[test]
    fn get_reads_names_and_indexes() {
        let doc = json!({"a": [{"b": 1}]});
        assert_eq!(read("$.a[0].b", &doc), Some(json!(1)));
        assert_eq!(read("$.a[1]", &doc), None);
    }

    #[test]
    fn query_reads_rfc9535() {
        let q = Query::parse("$.a[?@.b > 1].b").unwrap();
        let doc = json!({"a": [{"b": 1}, {"b": 2}, {"b": 3}]});
        assert_eq!(q.select(&doc), vec![&json!(2), &json!(3)]);
        assert!(Query::parse("$.a[").is_err());
    }
}
