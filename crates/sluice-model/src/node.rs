//! A YAML (or JSON) document as a tree of nodes that remember where they are.
//!
//! Flow files are read into this tree first, so that every later check can
//! point at the exact key or value it is about. Duplicate keys are kept (and
//! reported by the flow checks) rather than aborting the parse.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::{Location, Spanned};
use std::fmt;
use std::ops::Range;

/// Byte range in the source text.
pub type Span = Range<usize>;

/// A value with its place in the source.
#[derive(Clone, Debug)]
pub struct Node {
    /// The value.
    pub kind: Kind,
    /// Where it is.
    pub span: Span,
}

/// A mapping key with its place in the source.
#[derive(Clone, Debug)]
pub struct Key {
    /// The key.
    pub name: String,
    /// Where it is.
    pub span: Span,
}

/// The shapes a node can take.
#[derive(Clone, Debug)]
pub enum Kind {
    /// `null`, `~` or nothing.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(serde_json::Number),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, keys in source order (duplicates kept).
    Map(Vec<(Key, Node)>),
}

impl Node {
    /// The node's kind as a word for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// The string, if the node is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if the node is a sequence.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The mapping entries, if the node is a mapping.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` in a mapping (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// The key node for `key` in a mapping.
    pub fn key(&self, key: &str) -> Option<&Key> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k)
    }

    /// Convert to JSON (for a repeated key, the last value wins; the checks
    /// report repeated keys separately).
    pub fn to_json(&self) -> Value {
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Number(n) => Value::Number(n.clone()),
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => {
                let mut m = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    m.insert(k.name.clone(), v.to_json());
                }
                Value::Object(m)
            }
        }
    }

    /// Follow a path of keys and indexes from this node.
    pub fn at(&self, path: &[sluice_expr::PathSeg]) -> Option<&Node> {
        let mut cur = self;
        for seg in path {
            cur = match (seg, &cur.kind) {
                (sluice_expr::PathSeg::Key(k), Kind::Map(_)) => cur.get(k)?,
                (sluice_expr::PathSeg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The key node at the end of a path (for "unknown option" messages).
    pub fn key_at(&self, path: &[sluice_expr::PathSeg]) -> Option<&Key> {
        let (last, parent) = path.split_last()?;
        match last {
            sluice_expr::PathSeg::Key(k) => self.at(parent)?.key(k),
            sluice_expr::PathSeg::Index(_) => None,
        }
    }
}

/// A document that is not valid YAML or JSON.
#[derive(Clone, Debug)]
pub struct SyntaxError {
    /// What the parser said.
    pub message: String,
    /// Where.
    pub span: Span,
}

/// Parse a YAML or JSON document into a node tree.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    let lines = LineIndex::new(text);
    let raw: Spanned<RawKind> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let span = e.location().map(|l| lines.span(&l, text)).unwrap_or(0..0);
            SyntaxError {
                message: first_line(&e.to_string()),
                span,
            }
        })?;
    Ok(convert(raw, &lines, text))
}

fn first_line(s: &str) -> String {
    // serde-saphyr appends a rendered snippet; the diagnostic draws its own.
    let line = s.lines().next().unwrap_or(s).trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    /// Byte offset of a 1-based line and 1-based (character) column.
    fn offset(&self, line: u64, column: u64, text: &str) -> usize {
        let Some(&start) = self.starts.get((line.max(1) - 1) as usize) else {
            return text.len();
        };
        let line_text = &text[start..];
        let col = column.max(1) as usize - 1;
        start
            + line_text
                .char_indices()
                .nth(col)
                .map(|(i, _)| i)
                .unwrap_or(line_text.len())
    }

    fn span(&self, l: &Location, text: &str) -> Span {
        let span = l.span();
        if let (Some(off), Some(len)) = (span.byte_offset(), span.byte_len()) {
            let (off, len) = (off as usize, len as usize);
            if off <= text.len() {
                return off..(off + len).min(text.len());
            }
        }
        let start = self.offset(l.line(), l.column(), text);
        let chars = span.len() as usize;
        let end = text[start..]
            .char_indices()
            .nth(chars)
            .map(|(i, _)| start + i)
            .unwrap_or(text.len());
        start..end.max(start)
    }
}

fn convert(raw: Spanned<RawKind>, lines: &LineIndex, text: &str) -> Node {
    let span = lines.span(&raw.referenced, text);
    let kind = match raw.value {
        RawKind::Null => Kind::Null,
        RawKind::Bool(b) => Kind::Bool(b),
        RawKind::Number(n) => Kind::Number(n),
        RawKind::Str(s) => Kind::Str(s),
        RawKind::Seq(items) => Kind::Seq(
            items
                .into_iter()
                .map(|n| convert(n.0, lines, text))
                .collect(),
        ),
        RawKind::Map(entries) => Kind::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = Key {
                        span: lines.span(&k.referenced, text),
                        name: k.value,
                    };
                    (key, convert(v.0, lines, text))
                })
                .collect(),
        ),
    };
    Node { kind, span }
}

/// What serde-saphyr hands over, before spans become byte ranges.
enum RawKind {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(String),
    Seq(Vec<RawNode>),
    Map(Vec<(Spanned<String>, RawNode)>),
}

struct RawNode(Spanned<RawKind>);

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<RawKind>::deserialize(d).map(RawNode)
    }
}

impl<'de> Deserialize<'de> for RawKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawKind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawKind, E> {
        Ok(RawKind::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawKind, E> {
        Ok(RawKind::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawKind, E> {
        Ok(RawKind::Number(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawKind, E> {
        i64::try_from(v)
            .map(|v| RawKind::Number(v.into()))
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawKind, E> {
        u64::try_from(v)
            .map(|v| RawKind::Number(v.into()))
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawKind, E> {
        serde_json::Number::from_f64(v)
            .map(RawKind::Number)
            .ok_or_else(|| E::custom("numbers must be finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawKind, E> {
        Ok(RawKind::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawKind, E> {
        Ok(RawKind::Str(v))
    }
    fn visit_none<E>(self) -> Result<RawKind, E> {
        Ok(RawKind::Null)
    }
    fn visit_unit<E>(self) -> Result<RawKind, E> {
        Ok(RawKind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawKind, D::Error> {
        RawKind::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawKind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<RawNode>()? {
            items.push(item);
        }
        Ok(RawKind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawKind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<RawNode>()?;
            entries.push((key, value));
        }
        Ok(RawKind::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_and_values() {
        let text = "id: demo\nsteps:\n  - key: a\n    type: \"log\"\n  - key: b\n";
        let n = parse(text).unwrap();
        let steps = n.get("steps").unwrap();
        let Kind::Seq(items) = &steps.kind else {
            panic!()
        };
        let t = items[0].get("type").unwrap();
        assert_eq!(&text[t.span.clone()], "\"log\"");
        let k = items[1].key("key").unwrap();
        assert_eq!(&text[k.span.clone()], "key");
        assert_eq!(&text[items[1].get("key").unwrap().span.clone()], "b");
    }

    #[test]
    fn duplicate_keys_are_kept() {
        let n = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(n.as_map().unwrap().len(), 2);
    }

    #[test]
    fn json_parses_too() {
        let text = r#"{"id": "x", "steps": [{"key": "a", "n": 1.5}]}"#;
        let n = parse(text).unwrap();
        assert_eq!(n.to_json()["steps"][0]["n"], serde_json::json!(1.5));
        let id = n.get("id").unwrap();
        assert_eq!(&text[id.span.clone()], "\"x\"");
    }

    #[test]
    fn syntax_errors_have_a_place() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(!err.message.is_empty());
    }
}
