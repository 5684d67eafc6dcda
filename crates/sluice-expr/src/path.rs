//! JSONPath: full RFC 9535 queries for reading (through `serde_json_path`),
//! and the mapping subset of SEMANTICS.md section 4 for reading and writing.
//!
//! The mapping subset is `$`, a child by `.name`, `['name']` or `["name"]`,
//! and an array index `[n]`. Writing creates the objects and arrays a path
//! needs; writing into an existing object keeps its other keys; `[n]` on an
//! existing array replaces that element (an index past the end appends, so a
//! new array made for `[3]` holds the value as its only element, as in
//! Zeebe); `$` replaces the whole document. A container of the wrong
//! kind on the way (a key into an array, an index into an object, anything
//! into a scalar) is replaced by the container the path needs.

use crate::template::PathSeg;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;
use std::fmt;

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

impl Query {
    /// Parse an RFC 9535 query.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        JsonPath::parse(text)
            .map(|path| Self {
                text: text.to_owned(),
                path,
            })
            .map_err(|e| PathError {
                text: text.to_owned(),
                offset: e.position().min(text.len()),
                message: e.message().to_owned(),
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

/// A path of the mapping subset: `$`, `.name`, `['name']`, `[n]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingPath {
    text: String,
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
        let mut segs = Vec::new();
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
                    if name.contains(['*', ']', '\'', '"', ' ']) {
                        return Err(err(
                            start,
                            "only plain names are supported after `.`; use ['name'] for other names",
                        ));
                    }
                    segs.push(PathSeg::Key(name.to_owned()));
                    i = j;
                }
                b'[' => {
                    let start = i + 1;
                    match b.get(start) {
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
                            segs.push(PathSeg::Key(name));
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
                            segs.push(PathSeg::Index(n));
                            i = j + 1;
                        }
                        _ => {
                            return Err(err(
                                start,
                                "expected a quoted name or a non-negative index (wildcards, slices and filters are not supported in mappings)",
                            ));
                        }
                    }
                }
                _ => return Err(err(i, "expected `.` or `[`")),
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segs,
        })
    }

    /// The path as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The segments after `$`.
    pub fn segments(&self) -> &[PathSeg] {
        &self.segs
    }

    /// Whether the path is `$`.
    pub fn is_root(&self) -> bool {
        self.segs.is_empty()
    }

    /// The value at the path, if there is one.
    pub fn get<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        let mut cur = v;
        for s in &self.segs {
            cur = match (s, cur) {
                (PathSeg::Key(k), Value::Object(o)) => o.get(k)?,
                (PathSeg::Index(i), Value::Array(a)) => a.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Write `value` at the path, creating what is missing.
    pub fn set(&self, doc: &mut Value, value: Value) {
        let mut cur = doc;
        for s in &self.segs {
            cur = match s {
                PathSeg::Key(k) => {
                    if !cur.is_object() {
                        *cur = Value::Object(Map::new());
                    }
                    match cur {
                        Value::Object(o) => o.entry(k.clone()).or_insert(Value::Null),
                        _ => unreachable!("just made an object"),
                    }
                }
                PathSeg::Index(i) => {
                    if !cur.is_array() {
                        *cur = Value::Array(Vec::new());
                    }
                    match cur {
                        Value::Array(a) => {
                            // As in Zeebe: an index past the end (or into an
                            // array made just now) appends.
                            let i = if *i < a.len() {
                                *i
                            } else {
                                a.push(Value::Null);
                                a.len() - 1
                            };
                            &mut a[i]
                        }
                        _ => unreachable!("just made an array"),
                    }
                }
            };
        }
        *cur = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(MappingPath::parse("$.a[*]").is_err());
        assert!(MappingPath::parse("$..a").is_err());
        assert!(MappingPath::parse("$['a'").is_err());
    }

    #[test]
    fn set_creates_what_is_missing_and_keeps_siblings() {
        let mut doc = json!({"a": {"keep": 1}});
        MappingPath::parse("$.a.b[1].c")
            .unwrap()
            .set(&mut doc, json!(5));
        assert_eq!(doc, json!({"a": {"keep": 1, "b": [{"c": 5}]}}));
        MappingPath::parse("$.a.b[0]")
            .unwrap()
            .set(&mut doc, json!("x"));
        assert_eq!(doc["a"]["b"][0], json!("x"));
        MappingPath::parse("$").unwrap().set(&mut doc, json!([1]));
        assert_eq!(doc, json!([1]));
    }

    #[test]
    fn get_reads_names_and_indexes() {
        let doc = json!({"a": [{"b": 1}]});
        assert_eq!(
            MappingPath::parse("$.a[0].b").unwrap().get(&doc),
            Some(&json!(1))
        );
        assert_eq!(MappingPath::parse("$.a[1]").unwrap().get(&doc), None);
    }

    #[test]
    fn query_reads_rfc9535() {
        let q = Query::parse("$.a[?@.b > 1].b").unwrap();
        let doc = json!({"a": [{"b": 1}, {"b": 2}, {"b": 3}]});
        assert_eq!(q.select(&doc), vec![&json!(2), &json!(3)]);
        assert!(Query::parse("$.a[").is_err());
    }
}
