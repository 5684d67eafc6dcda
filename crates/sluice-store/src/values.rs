//! Large values kept once per run, compressed.
//!
//! A run's record holds the same data many times over: the trigger is the
//! first step's input, a step's output the next one's input and the run's
//! state, and a state that grows by a field still holds everything it held.
//! A value whose JSON text is at least [`LARGE`] bytes is therefore written
//! as a tree of *nodes*: every array or object inside it whose text is that
//! long (after its own large parts were taken out) becomes a node of its
//! own, and the column holds `@` and the hexadecimal SHA-256 of the root
//! node. A node is its text with each large part replaced by `null`, and a
//! table of where those parts go and which nodes they are. The elements
//! (or entries) of a long array (or object) are cut out [`SPAN`] bytes of
//! text at a time as nodes too, so that the text of a large value is never
//! whole in memory while it is written. Nodes are kept
//! in `run_values`, one row per run and node (whatever refers to it),
//! compressed with LZ4; so a run costs about its distinct data, however
//! many steps pass it on.
//!
//! Reading a value back puts the text together again, byte for byte what
//! it was, and parses it once. Smaller values are written as JSON text in
//! their column, as they always were.

use crate::StoreError;
use crate::scrub;
use sha2::{Digest, Sha256};
use sluice_expr::{Val, data};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The length of JSON text from which a value, or a part of one, is kept
/// as a node.
pub(crate) const LARGE: usize = 64 * 1024;

/// The length of the text of elements (or entries) of one array (or
/// object) from which they are cut out as a node of their own, a *span*:
/// the elements' text, commas between them, which the reader puts in the
/// place of its `null` as it puts any part. A large array is so written a
/// span at a time and never whole in memory.
pub(crate) const SPAN: usize = 256 * 1024;

/// A node's name: the SHA-256 of its bytes (which name its parts').
pub(crate) type Hash = [u8; 32];

/// A node to write: the run it belongs to, its name, its bytes compressed.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) run_id: String,
    pub(crate) hash: Hash,
    pub(crate) body: Vec<u8>,
}

/// Nodes known to be written (committed) for a run, so that they are not
/// compressed and sent again; per store. Forgotten wholesale when it grows
/// large: a forgotten node is only written again (and ignored).
#[derive(Debug, Default)]
pub(crate) struct Known(Mutex<HashSet<Hash>>);

/// How many nodes [`Known`] holds before it starts again.
const KNOWN_MOST: usize = 1 << 16;

fn known_key(run_id: &str, hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(run_id.as_bytes());
    h.update([0]);
    h.update(hash);
    h.finalize().into()
}

impl Known {
    fn has(&self, run_id: &str, hash: &Hash) -> bool {
        let key = known_key(run_id, hash);
        self.0.lock().is_ok_and(|k| k.contains(&key))
    }

    /// `chunks` were committed.
    pub(crate) fn remember(&self, chunks: &[Chunk]) {
        if chunks.is_empty() {
            return;
        }
        if let Ok(mut k) = self.0.lock() {
            if k.len() + chunks.len() > KNOWN_MOST {
                k.clear();
            }
            k.extend(chunks.iter().map(|c| known_key(&c.run_id, &c.hash)));
        }
    }
}

/// Writes the values of one run as column texts, gathering the nodes of
/// the large ones (cleaned of secrets first, as every written value).
///
/// An array or object met again (the same one in memory: a step's output
/// that is the next step's input, the state data that holds a result) is
/// not written again: the node it became is named at once.
pub(crate) struct Encoder<'a> {
    run_id: &'a str,
    known: &'a Known,
    pub(crate) chunks: Vec<Chunk>,
    /// The nodes written, by the address of the array or object each is
    /// (which is held here, so that its address names it while this lives).
    memo: HashMap<usize, (Val, Hash)>,
    /// [`LARGE`], but in tests.
    large: usize,
    /// [`SPAN`], but in tests.
    span: usize,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(run_id: &'a str, known: &'a Known) -> Self {
        Self {
            run_id,
            known,
            chunks: Vec::new(),
            memo: HashMap::new(),
            large: LARGE,
            span: SPAN,
        }
    }

    /// The column text of `v`.
    pub(crate) fn val(&mut self, v: &Val) -> String {
        if let Some(text) = self.write(v, true) {
            return text;
        }
        // A secret's value is in it: written again from a cleaned copy.
        let cleaned = scrub::val(v);
        self.write(&cleaned, false).unwrap_or_default()
    }

    /// The column text of `v`, if any.
    pub(crate) fn opt_val(&mut self, v: Option<&Val>) -> Option<String> {
        v.map(|v| self.val(v))
    }

    /// The column text of `v`; `None` when `check` finds a secret in it.
    fn write(&mut self, v: &Val, check: bool) -> Option<String> {
        if let Some(hash) = data::address(v)
            .and_then(|a| self.memo.get(&a))
            .map(|m| m.1)
        {
            return Some(reference(&hash));
        }
        let mut cut = Cut {
            buf: Vec::new(),
            holes: Vec::new(),
            check: check && scrub::active(),
            dirty: false,
            enc: self,
        };
        cut.value(v, true);
        if cut.dirty {
            return None;
        }
        let (mut buf, holes, check) = (cut.buf, cut.holes, cut.check);
        if check && scrub::found(&buf) {
            return None;
        }
        if holes.is_empty() && buf.len() < self.large {
            return Some(String::from_utf8(buf).unwrap_or_default());
        }
        let hash = self.node(node_at(&mut buf, 0, &holes), v);
        Some(reference(&hash))
    }

    /// Keep `node` (the node `v` is) to be written, unless it is known:
    /// its name.
    fn node(&mut self, node: &[u8], v: &Val) -> Hash {
        let hash = self.keep(node);
        if let Some(a) = data::address(v) {
            self.memo.insert(a, (v.clone(), hash));
        }
        hash
    }

    /// Keep `node` to be written, unless it is known: its name.
    fn keep(&mut self, node: &[u8]) -> Hash {
        let hash: Hash = Sha256::digest(node).into();
        if !self.known.has(self.run_id, &hash) && !self.chunks.iter().any(|c| c.hash == hash) {
            self.chunks.push(Chunk {
                run_id: self.run_id.to_owned(),
                hash,
                body: lz4_flex::compress_prepend_size(node),
            });
        }
        hash
    }
}

/// A value's JSON text as it is written, its large parts cut out as nodes
/// on the way (see [`cut`], which does the same on text).
struct Cut<'e, 'a> {
    buf: Vec<u8>,
    holes: Vec<(usize, Hash)>,
    /// Whether to look for secrets' values in each node's text.
    check: bool,
    /// A secret's value was found.
    dirty: bool,
    enc: &'e mut Encoder<'a>,
}

impl Cut<'_, '_> {
    fn value(&mut self, v: &Val, root: bool) {
        if self.dirty {
            return;
        }
        let (start, first) = (self.buf.len(), self.holes.len());
        // Whether spans of its elements were cut out (it was large).
        let mut spans = false;
        match v {
            Val::Arr(a) => {
                if !root && self.known_node(v) {
                    return;
                }
                self.buf.push(b'[');
                let mut span = None;
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    let from = *span.get_or_insert((self.buf.len(), self.holes.len()));
                    self.value(x, false);
                    if self.spanned(from) {
                        (span, spans) = (None, true);
                    }
                }
                self.buf.push(b']');
            }
            Val::Obj(o) => {
                if !root && self.known_node(v) {
                    return;
                }
                self.buf.push(b'{');
                let mut span = None;
                for (i, (k, x)) in o.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    let from = *span.get_or_insert((self.buf.len(), self.holes.len()));
                    let _ = serde_json::to_writer(&mut self.buf, &**k);
                    self.buf.push(b':');
                    self.value(x, false);
                    if self.spanned(from) {
                        (span, spans) = (None, true);
                    }
                }
                self.buf.push(b'}');
            }
            _ => {
                self.scalar(v);
                return;
            }
        }
        if self.dirty {
            return;
        }
        // A value whose spans were cut out is a node too, however short
        // its own text became: met again, it is named, not written again.
        if !root && (spans || self.buf.len() - start >= self.enc.large) {
            if self.check && scrub::found(&self.buf[start..]) {
                self.dirty = true;
                return;
            }
            let node = node_at(&mut self.buf, start, &self.holes[first..]);
            let hash = self.enc.node(node, v);
            self.buf.truncate(start);
            self.holes.truncate(first);
            self.hole(hash);
        }
    }

    /// Cut the span of elements (or entries) written from `from` (its
    /// place in the text and its first part) out as a node, if it is long
    /// enough: whether it was.
    #[inline]
    fn spanned(&mut self, from: (usize, usize)) -> bool {
        self.buf.len() - from.0 >= self.enc.span && self.cut_span(from)
    }

    /// Cut the span from `from` out (see [`Cut::spanned`]).
    #[cold]
    fn cut_span(&mut self, (start, first): (usize, usize)) -> bool {
        if self.dirty {
            return false;
        }
        if self.check && scrub::found(&self.buf[start..]) {
            self.dirty = true;
            return false;
        }
        let node = node_at(&mut self.buf, start, &self.holes[first..]);
        let hash = self.enc.keep(node);
        self.buf.truncate(start);
        self.holes.truncate(first);
        self.hole(hash);
        true
    }

    fn scalar(&mut self, v: &Val) {
        // Numbers and strings as serde_json writes them.
        let _ = serde_json::to_writer(&mut self.buf, &data::Json(v));
    }

    /// Name the node `v` became, if it became one before.
    fn known_node(&mut self, v: &Val) -> bool {
        match data::address(v).and_then(|a| self.enc.memo.get(&a)) {
            Some(&(_, hash)) => {
                self.hole(hash);
                true
            }
            None => false,
        }
    }

    fn hole(&mut self, hash: Hash) {
        self.holes.push((self.buf.len(), hash));
        self.buf.extend_from_slice(b"null");
    }
}

/// The column text naming a root node.
fn reference(hash: &Hash) -> String {
    let mut s = String::with_capacity(65);
    s.push('@');
    for b in hash {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The root node a column text names, if it names one (JSON text never
/// starts with `@`).
pub(crate) fn referred(text: &str) -> Option<Hash> {
    let hex = text.strip_prefix('@')?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
        hash[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

/// The end (one past the closing quote) of the JSON string whose text
/// starts at `from` (just after its opening quote).
#[cfg(test)]
fn string_end(text: &[u8], mut from: usize) -> usize {
    while let Some(i) = memchr::memchr2(b'"', b'\\', &text[from..]) {
        let at = from + i;
        if text[at] == b'"' {
            return at + 1;
        }
        from = at + 2;
        if from >= text.len() {
            break;
        }
    }
    text.len()
}

/// The node whose text is `buf` from `start`, its parts `holes`, made in
/// `buf` (its header put before its text there, not copied elsewhere).
fn node_at<'b>(buf: &'b mut Vec<u8>, start: usize, holes: &[(usize, Hash)]) -> &'b [u8] {
    let mut header = Vec::with_capacity(4 + holes.len() * 40);
    let count = u32::try_from(holes.len()).unwrap_or(u32::MAX);
    header.extend_from_slice(&count.to_le_bytes());
    for (at, hash) in holes {
        header.extend_from_slice(&((at - start) as u64).to_le_bytes());
        header.extend_from_slice(hash);
    }
    buf.splice(start..start, header);
    &buf[start..]
}

/// A node's bytes: the count of its parts, each part's place in its text
/// and name, then the text.
#[cfg(test)]
fn node_bytes(text: &[u8], holes: &[(usize, Hash)], base: usize) -> Vec<u8> {
    let mut node = Vec::with_capacity(4 + holes.len() * 40 + text.len());
    let count = u32::try_from(holes.len()).unwrap_or(u32::MAX);
    node.extend_from_slice(&count.to_le_bytes());
    for (at, hash) in holes {
        node.extend_from_slice(&((at - base) as u64).to_le_bytes());
        node.extend_from_slice(hash);
    }
    node.extend_from_slice(text);
    node
}

/// The nodes of a large value's JSON text (parts before what holds them;
/// the root last; a part is an array or object of at least `large` bytes)
/// and the root's name.
#[cfg(test)]
fn cut(text: &[u8], large: usize) -> (Vec<(Hash, Vec<u8>)>, Hash) {
    let mut buf = Vec::with_capacity(text.len().min(1 << 20));
    let mut holes: Vec<(usize, Hash)> = Vec::new();
    let mut opens: Vec<(usize, usize)> = Vec::new();
    let mut nodes = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        match b {
            b'"' => {
                let end = string_end(text, i + 1);
                buf.extend_from_slice(&text[i..end]);
                i = end;
                continue;
            }
            b'{' | b'[' => {
                opens.push((buf.len(), holes.len()));
                buf.push(b);
            }
            b'}' | b']' => {
                buf.push(b);
                if let Some((start, first)) = opens.pop()
                    && !opens.is_empty()
                    && buf.len() - start >= large
                {
                    let node = node_bytes(&buf[start..], &holes[first..], start);
                    let hash: Hash = Sha256::digest(&node).into();
                    nodes.push((hash, node));
                    buf.truncate(start);
                    holes.truncate(first);
                    holes.push((start, hash));
                    buf.extend_from_slice(b"null");
                }
            }
            _ => buf.push(b),
        }
        i += 1;
    }
    let root = node_bytes(&buf, &holes, 0);
    let hash: Hash = Sha256::digest(&root).into();
    nodes.push((hash, root));
    (nodes, hash)
}

/// Where a node's parts go in its text, and their names.
type Parts = Vec<(usize, Hash)>;

/// A node's parts and its text.
fn parts(node: &[u8]) -> Option<(Parts, &[u8])> {
    let count = u32::from_le_bytes(node.get(..4)?.try_into().ok()?) as usize;
    let table = node.get(4..4 + count.checked_mul(40)?)?;
    let parts = table
        .chunks(40)
        .map(|p| {
            let at = usize::try_from(u64::from_le_bytes(p[..8].try_into().ok()?)).ok()?;
            Some((at, p[8..].try_into().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((parts, &node[4 + count * 40..]))
}

/// The nodes read for one record, by name (decompressed), and the values
/// made of them: a large value that several columns name (a run's trigger
/// and input, a step's output and the next one's input) is read into one
/// value they share.
#[derive(Default)]
pub(crate) struct Loaded(HashMap<Hash, Vec<u8>>, Mutex<HashMap<Hash, Val>>);

impl Loaded {
    /// Read the nodes `roots` name and all their parts, with `fetch`
    /// (a node's compressed bytes, by name).
    pub(crate) async fn load<F, Fut>(
        roots: impl IntoIterator<Item = Hash>,
        fetch: F,
    ) -> Result<Self, StoreError>
    where
        F: Fn(Hash) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Vec<u8>>, StoreError>>,
    {
        let mut loaded = HashMap::new();
        let mut wanted: Vec<Hash> = roots.into_iter().collect();
        while let Some(hash) = wanted.pop() {
            if loaded.contains_key(&hash) {
                continue;
            }
            let missing = || {
                StoreError::Corrupt(format!(
                    "stored value {} is missing",
                    &reference(&hash)[1..]
                ))
            };
            let body = fetch(hash).await?.ok_or_else(missing)?;
            let node = lz4_flex::decompress_size_prepended(&body).map_err(|e| {
                StoreError::Corrupt(format!("stored value {}: {e}", &reference(&hash)[1..]))
            })?;
            let (p, _) = parts(&node).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stored value {} is cut short",
                    &reference(&hash)[1..]
                ))
            })?;
            wanted.extend(p.into_iter().map(|(_, h)| h));
            loaded.insert(hash, node);
        }
        Ok(Self(loaded, Mutex::default()))
    }

    /// The value a column holds (`what` names it in an error), read from
    /// its text; the value it names is made once for every column that
    /// names it.
    pub(crate) fn val(&self, column: String, what: &str) -> Result<Val, StoreError> {
        let parse = |text: &str| {
            data::parse(text.as_bytes()).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        };
        let Some(root) = referred(&column) else {
            return parse(&column);
        };
        if let Some(v) = self.1.lock().ok().and_then(|m| m.get(&root).cloned()) {
            return Ok(v);
        }
        let v = parse(&self.text(column)?)?;
        if let Ok(mut made) = self.1.lock() {
            made.insert(root, v.clone());
        }
        Ok(v)
    }

    /// The JSON text a column holds: itself, or the value it names put
    /// together again.
    pub(crate) fn text(&self, column: String) -> Result<String, StoreError> {
        let Some(root) = referred(&column) else {
            return Ok(column);
        };
        let mut out = Vec::new();
        self.assemble(&root, &mut out, 0)?;
        String::from_utf8(out).map_err(|e| StoreError::Corrupt(format!("stored value: {e}")))
    }

    fn assemble(&self, hash: &Hash, out: &mut Vec<u8>, depth: usize) -> Result<(), StoreError> {
        let corrupt = || {
            StoreError::Corrupt(format!(
                "stored value {} is not whole",
                &reference(hash)[1..]
            ))
        };
        let node = self.0.get(hash).ok_or_else(corrupt)?;
        let (parts, text) = parts(node).ok_or_else(corrupt)?;
        if depth > 256 {
            return Err(corrupt());
        }
        let mut from = 0;
        for (at, part) in parts {
            out.extend_from_slice(text.get(from..at).ok_or_else(corrupt)?);
            self.assemble(&part, out, depth + 1)?;
            from = at + 4;
        }
        out.extend_from_slice(text.get(from..).ok_or_else(corrupt)?);
        Ok(())
    }
}

/// The root nodes named by `texts` (columns that name one).
pub(crate) fn roots<'t>(texts: impl IntoIterator<Item = Option<&'t str>>) -> Vec<Hash> {
    texts.into_iter().flatten().filter_map(referred).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use sluice_expr::to_val;

    fn big(n: usize) -> Value {
        Value::Array(
            (0..n)
                .map(|i| json!({"sku": format!("SKU-{i:07}"), "qty": i % 7, "note": "a \"quoted\" {text} [here]\\"}))
                .collect(),
        )
    }

    async fn read_back(chunks: &[Chunk], text: String) -> String {
        let by_hash: HashMap<Hash, Vec<u8>> =
            chunks.iter().map(|c| (c.hash, c.body.clone())).collect();
        let roots = roots([Some(text.as_str())]);
        let loaded = Loaded::load(roots, |h| {
            let b = by_hash.get(&h).cloned();
            async move { Ok(b) }
        })
        .await
        .expect("loads");
        loaded.text(text).expect("whole")
    }

    #[tokio::test]
    async fn a_large_value_reads_back_byte_for_byte_and_shares_its_parts() {
        let known = Known::default();
        let items = big(5000);
        let a = json!({"orderId": "A", "items": items, "deep": {"more": big(3000)}});
        let mut b = a.clone();
        b["count"] = json!(5000);
        let mut enc = Encoder::new("run-1", &known);
        let ta = enc.val(&to_val(&a));
        let tb = enc.val(&to_val(&b));
        assert!(ta.starts_with('@') && tb.starts_with('@') && ta != tb);
        // a: items (its first 256 KiB of elements a span of their own),
        // deep.more, root; b shares its parts: only its root is new
        assert_eq!(enc.chunks.len(), 5, "{}", enc.chunks.len());
        let text_a = read_back(&enc.chunks, ta).await;
        assert_eq!(text_a, serde_json::to_string(&a).expect("text"));
        let text_b = read_back(&enc.chunks, tb).await;
        assert_eq!(text_b, serde_json::to_string(&b).expect("text"));
        // once committed, nothing of either is sent again
        known.remember(&enc.chunks);
        let mut again = Encoder::new("run-1", &known);
        again.val(&to_val(&a));
        assert!(again.chunks.is_empty());
        // another run writes its own
        let mut other = Encoder::new("run-2", &known);
        other.val(&to_val(&a));
        assert_eq!(other.chunks.len(), 4);
        let stored: usize = enc.chunks.iter().map(|c| c.body.len()).sum();
        assert!(stored * 2 < text_a.len(), "{stored} for {}", text_a.len());
    }

    #[test]
    fn small_values_stay_json_text() {
        let known = Known::default();
        let mut enc = Encoder::new("r", &known);
        assert_eq!(enc.val(&to_val(&json!({"a": "@x"}))), r#"{"a":"@x"}"#);
        assert_eq!(enc.val(&to_val(&json!("@"))), r#""@""#);
        assert!(enc.chunks.is_empty());
        assert_eq!(referred(r#""@""#), None);
    }

    #[tokio::test]
    async fn a_large_string_or_flat_array_is_one_node() {
        let known = Known::default();
        for v in [json!("x".repeat(LARGE * 2)), json!(vec![1; LARGE])] {
            let mut enc = Encoder::new("r", &known);
            let t = enc.val(&to_val(&v));
            assert_eq!(enc.chunks.len(), 1);
            assert_eq!(
                read_back(&enc.chunks, t).await,
                serde_json::to_string(&v).expect("text")
            );
        }
    }

    /// The next number of a xorshift generator.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// A random JSON value (a small generator: no dependency), with
    /// strings that hold what the cutter must step over.
    fn random(seed: &mut u64, depth: u32) -> Value {
        const TEXTS: [&str; 6] = ["", "a", "{[\"]}", "\\", "é\u{1}\n", "null"];
        let pick = next(seed) % if depth == 0 { 4 } else { 6 };
        match pick {
            0 => Value::Null,
            1 => Value::from(next(seed) % 1000),
            2 => {
                let t = TEXTS[(next(seed) % 6) as usize];
                Value::from(t.repeat((next(seed) % 3) as usize))
            }
            3 => Value::from(next(seed).is_multiple_of(2)),
            4 => (0..next(seed) % 5)
                .map(|_| random(seed, depth - 1))
                .collect(),
            _ => {
                let n = next(seed) % 5;
                let mut m = serde_json::Map::new();
                for i in 0..n {
                    let key = format!("{}{i}", TEXTS[(next(seed) % 6) as usize]);
                    m.insert(key, random(seed, depth - 1));
                }
                Value::Object(m)
            }
        }
    }

    #[tokio::test]
    async fn any_value_cut_at_any_size_reads_back_byte_for_byte() {
        let mut seed = 0x5eed_u64;
        for round in 0..400 {
            let v = random(&mut seed, 5);
            let text = serde_json::to_string(&v).expect("text");
            let large = [1, 2, 8, 20, 64][round % 5];
            let (nodes, root) = cut(text.as_bytes(), large);
            let chunks: Vec<Chunk> = nodes
                .into_iter()
                .map(|(hash, node)| Chunk {
                    run_id: "r".into(),
                    hash,
                    body: lz4_flex::compress_prepend_size(&node),
                })
                .collect();
            assert_eq!(read_back(&chunks, reference(&root)).await, text, "{v}");
        }
    }

    /// Values cut as they are written make the nodes their text would be
    /// cut into, and read back byte for byte; an array or object met again
    /// is named, not written again.
    #[tokio::test]
    async fn values_are_cut_as_their_text_is() {
        let mut seed = 0xc0ffee_u64;
        let known = Known::default();
        for round in 0..400 {
            let v = random(&mut seed, 5);
            let text = serde_json::to_string(&v).expect("text");
            let large = [1, 2, 8, 20, 64][round % 5];
            let mut enc = Encoder::new("r", &known);
            enc.large = large;
            let column = enc.val(&to_val(&v));
            if text.len() < large {
                assert_eq!(column, text);
                continue;
            }
            let (_, root) = cut(text.as_bytes(), large);
            assert_eq!(column, reference(&root), "{v}");
            assert_eq!(read_back(&enc.chunks, column).await, text, "{v}");
        }
        let part = to_val(&big(3000));
        let whole = sluice_expr::data::obj_val([("a", part.clone()), ("b", part.clone())]);
        let mut enc = Encoder::new("r", &known);
        let t = enc.val(&whole);
        assert_eq!(enc.chunks.len(), 2, "the part once, and the whole");
        let again = enc.val(&part);
        assert_eq!(enc.chunks.len(), 2);
        assert!(again.starts_with('@'));
        let expected = format!(
            r#"{{"a":{0},"b":{0}}}"#,
            serde_json::to_string(&big(3000)).expect("text")
        );
        assert_eq!(read_back(&enc.chunks, t).await, expected);
    }

    /// A long array or object is written a span of elements at a time:
    /// at any sizes, its value reads back byte for byte; each span is a
    /// node of about the span's length; met again, it is named.
    #[tokio::test]
    async fn long_values_are_written_in_spans() {
        let mut seed = 0x5fa2_u64;
        let known = Known::default();
        for round in 0..400 {
            let v = random(&mut seed, 5);
            let text = serde_json::to_string(&v).expect("text");
            let mut enc = Encoder::new("r", &known);
            enc.large = [1, 2, 8, 20, 64][round % 5];
            enc.span = [1, 3, 8, 30][round % 4];
            let column = enc.val(&to_val(&v));
            if column.starts_with('@') {
                assert_eq!(read_back(&enc.chunks, column).await, text, "{v}");
            } else {
                assert_eq!(column, text);
            }
        }
        let items = big(20_000);
        let text = serde_json::to_string(&json!({"items": items})).expect("text");
        assert!(text.len() > 4 * SPAN, "{}", text.len());
        let items = to_val(&items);
        let mut enc = Encoder::new("r", &known);
        let t = enc.val(&sluice_expr::data::obj_val([("items", items.clone())]));
        // the spans, the array (its spans' places and its last elements),
        // the order
        assert!(enc.chunks.len() > text.len() / SPAN, "{}", enc.chunks.len());
        for c in &enc.chunks {
            let node = lz4_flex::decompress_size_prepended(&c.body).expect("node");
            assert!(node.len() < SPAN + 4096, "a node of {} bytes", node.len());
        }
        assert_eq!(read_back(&enc.chunks, t).await, text);
        let written = enc.chunks.len();
        assert!(enc.val(&items).starts_with('@'));
        assert_eq!(enc.chunks.len(), written, "the array met again is named");
    }

    /// Columns that name one large value read back as one value in memory,
    /// equal to what was written; a small value is read from its text.
    #[tokio::test]
    async fn columns_naming_one_value_share_it() {
        let known = Known::default();
        let order = to_val(&json!({"orderId": "A", "items": big(3000)}));
        let mut enc = Encoder::new("r", &known);
        let (trigger, input) = (enc.val(&order), enc.val(&order));
        assert!(trigger.starts_with('@') && trigger == input);
        let by_hash: HashMap<Hash, Vec<u8>> = enc
            .chunks
            .iter()
            .map(|c| (c.hash, c.body.clone()))
            .collect();
        let loaded = Loaded::load(roots([Some(trigger.as_str())]), |h| {
            let b = by_hash.get(&h).cloned();
            async move { Ok(b) }
        })
        .await
        .expect("loads");
        let read = |t: &str| loaded.val(t.to_owned(), "a column").expect("whole");
        let (a, b) = (read(&trigger), read(&input));
        assert!(
            sluice_expr::data::same(&a, &b),
            "one value for both columns"
        );
        assert_eq!(
            sluice_expr::data::to_json(&a),
            sluice_expr::data::to_json(&order)
        );
        assert_eq!(read(r#"{"small":1}"#), to_val(&json!({"small": 1})));
    }

    #[tokio::test]
    async fn a_missing_or_broken_node_is_reported() {
        let known = Known::default();
        let mut enc = Encoder::new("r", &known);
        let t = enc.val(&to_val(&json!({"a": big(2000), "b": big(2100)})));
        let first = enc.chunks[0].hash;
        let r = Loaded::load(roots([Some(t.as_str())]), |h| {
            let b = enc
                .chunks
                .iter()
                .find(|c| c.hash == h && h != first)
                .map(|c| c.body.clone());
            async move { Ok(b) }
        })
        .await;
        assert!(matches!(r, Err(StoreError::Corrupt(m)) if m.contains("missing")));
        let r = Loaded::load(roots([Some(t.as_str())]), |_| async {
            Ok(Some(vec![1, 2, 3]))
        })
        .await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))));
    }
}
