//! The JSON value that runs hold and jq programs work on ([`Val`]), made
//! for data held in memory: 24 bytes, a string of up to 22 bytes held in
//! the value itself ([`Str`]); an object is its values in order and a list
//! of its keys (with a hash table only past [`Obj::SMALL`] keys) that
//! objects with the same keys share ([`Shapes`]), so a list of a million
//! objects with the same keys holds them once.
//!
//! Arrays and objects are shared (`Arc`), not copied, however many steps,
//! variables and records refer to them; a change copies the part changed
//! when it is shared. Numbers are jaq's (`jaq_json::Num`), with its
//! arithmetic. Strings are text (UTF-8); bytes that are not UTF-8 become
//! U+FFFD where a jq function makes a string of bytes.
//!
//! jq's semantics follow jaq's JSON value: `null` adds as nothing, objects
//! add (the right's keys win) and multiply (merged deeply), strings repeat
//! and split, arrays subtract, values order as null < false < true <
//! numbers < strings < arrays < objects (objects by their sorted keys, then
//! their values in that order); a key removed from an object leaves the
//! others in their order.

use jaq_core::box_iter::{BoxIter, box_once};
use jaq_core::ops::Math;
use jaq_core::path::Opt;
use jaq_core::{Exn, ValT as _};
use jaq_json::Num;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

pub(crate) mod obj;
pub use obj::{Obj, Shapes};

/// A value or an error.
pub type ValR = jaq_core::ValR<Val>;
/// A value or an exception.
pub type ValX<'a> = jaq_core::ValX<'a, Val>;
type Error = jaq_core::Error<Val>;

/// A JSON value (see the module doc).
#[derive(Clone, Debug, Default)]
pub enum Val {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Num(Num),
    /// A string.
    Str(Str),
    /// An array.
    Arr(Arc<Vec<Val>>),
    /// An object.
    Obj(Arc<Obj>),
}

#[cfg(target_arch = "x86_64")]
const _: () = assert!(std::mem::size_of::<Val>() == 24);

/// A string's text: up to [`Str::INLINE`] bytes held in the value itself,
/// a longer one shared.
#[derive(Clone)]
pub struct Str(Repr);

#[derive(Clone)]
enum Repr {
    Inline(u8, [u8; Str::INLINE]),
    Shared(Arc<str>),
}

impl Str {
    /// The most bytes held in the value itself.
    pub const INLINE: usize = 22;

    /// Its text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Made from a `str` cut at its end: always UTF-8.
            Repr::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(s) => s,
        }
    }

    /// Its text, shared.
    pub fn to_arc(&self) -> Arc<str> {
        match &self.0 {
            Repr::Inline(..) => Arc::from(self.as_str()),
            Repr::Shared(s) => s.clone(),
        }
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        if s.len() <= Self::INLINE {
            let mut bytes = [0; Self::INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Self(Repr::Inline(s.len() as u8, bytes))
        } else {
            Self(Repr::Shared(s.into()))
        }
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        if s.len() <= Self::INLINE {
            Self::from(s.as_str())
        } else {
            Self(Repr::Shared(s.into()))
        }
    }
}

impl From<Arc<str>> for Str {
    fn from(s: Arc<str>) -> Self {
        if s.len() <= Self::INLINE {
            Self::from(&*s)
        } else {
            Self(Repr::Shared(s))
        }
    }
}

impl std::ops::Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Str {}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Str {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shared value of a whole array or object, taken over when nothing
/// else holds it.
fn owned<T: Clone>(a: Arc<T>) -> T {
    Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone())
}

impl Val {
    /// A string.
    pub fn str(s: impl Into<Str>) -> Self {
        Self::Str(s.into())
    }

    /// A string of `bytes`, U+FFFD in place of what is not UTF-8.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self::Str(Str::from(String::from_utf8_lossy(bytes).as_ref()))
    }

    /// An object (its spare room given back).
    pub fn obj(mut o: Obj) -> Self {
        o.shrink();
        Self::Obj(Arc::new(o))
    }

    /// An array (its spare room given back).
    pub fn arr(mut a: Vec<Val>) -> Self {
        a.shrink_to_fit();
        Self::Arr(Arc::new(a))
    }

    /// A string's text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_num(&self) -> Option<&Num> {
        match self {
            Self::Num(n) => Some(n),
            _ => None,
        }
    }

    /// The range an object `{start, end}` stands for (`.[{start: 1}]`).
    fn range_of(o: &Obj) -> jaq_core::val::Range<&Val> {
        o.get("start")..o.get("end")
    }

    /// The index of an array element (negative from its end), if `self`
    /// is an integer.
    fn as_pos(&self) -> Result<Pos, Error> {
        self.as_num()
            .and_then(pos_of)
            .ok_or_else(|| Error::typ(self.clone(), "integer"))
    }

    /// The bounds of a range, each an integer or `null` (no bound).
    fn range_bounds(
        range: &jaq_core::val::Range<&Self>,
    ) -> Result<(Option<Pos>, Option<Pos>), Error> {
        let f = |b: Option<&&Self>| match b {
            None | Some(Val::Null) => Ok(None),
            Some(v) => v.as_pos().map(Some),
        };
        Ok((f(range.start.as_ref())?, f(range.end.as_ref())?))
    }

    fn index_opt(self, index: &Self) -> Result<Option<Val>, Error> {
        Ok(match (self, index) {
            (Val::Null, _) => None,
            (Val::Arr(a), Val::Num(n)) if is_int(n) => pos_of(n)
                .and_then(|p| p.inside(a.len()))
                .map(|i| a[i].clone()),
            (Val::Arr(_), Val::Arr(y)) if y.is_empty() => Some(Val::arr(Vec::new())),
            (Val::Arr(x), Val::Arr(y)) => {
                let at = x.windows(y.len()).enumerate();
                Some(
                    at.filter(|(_, w)| *w == &y[..])
                        .map(|(i, _)| Val::from(i))
                        .collect(),
                )
            }
            (Val::Obj(o), Val::Str(k)) => o.get(k).cloned(),
            // As jaq: an object has no other keys.
            (Val::Obj(_), _) => None,
            (v @ (Val::Str(_) | Val::Arr(_)), Val::Obj(o)) => {
                let range = Self::range_of(o);
                return v.range(range).map(Some);
            }
            (v, _) => return Err(Error::index(v, index.clone())),
        })
    }
}

/// An integer as an index: its magnitude, and whether it counts from the
/// start (else from the end).
#[derive(Clone, Copy)]
struct Pos(bool, usize);

impl Pos {
    /// The place it names in a sequence of `len`, if any.
    fn wrap(self, len: usize) -> Option<usize> {
        if self.0 {
            Some(self.1)
        } else {
            len.checked_sub(self.1)
        }
    }

    /// The place it names, if inside a sequence of `len`.
    fn inside(self, len: usize) -> Option<usize> {
        self.wrap(len).filter(|i| *i < len)
    }

    /// As a range bound: clipped between 0 and `len`.
    fn clip(self, len: usize) -> usize {
        self.wrap(len).unwrap_or(0).min(len)
    }
}

fn is_int(n: &Num) -> bool {
    matches!(n, Num::Int(_) | Num::BigInt(_))
}

fn pos_of(n: &Num) -> Option<Pos> {
    match n {
        Num::Int(i) => Some(Pos(*i >= 0, i.unsigned_abs())),
        Num::BigInt(_) => {
            let text = n.to_string();
            let (neg, digits) = match text.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, text.as_str()),
            };
            digits.parse::<usize>().ok().map(|u| Pos(!neg, u))
        }
        _ => None,
    }
}

/// A number as a float (large ones become infinite).
pub(crate) fn num_f64(n: &Num) -> f64 {
    match n {
        Num::Int(i) => *i as f64,
        Num::Float(f) => *f,
        Num::BigInt(_) | Num::Dec(_) => n.to_string().parse().unwrap_or(f64::NAN),
    }
}

/// The range `start..end` of a sequence of `len`: where it starts and how
/// many it takes.
fn skip_take((start, end): (Option<Pos>, Option<Pos>), len: usize) -> (usize, usize) {
    let from = start.map_or(0, |p| p.clip(len));
    let upto = end.map_or(len, |p| p.clip(len));
    (from, upto.saturating_sub(from))
}

/// The same for the characters of `s`, in bytes.
fn skip_take_chars((start, end): (Option<Pos>, Option<Pos>), s: &str) -> (usize, usize) {
    let byte = |Pos(from_start, c): Pos| {
        let mut starts = s.char_indices().map(|(i, _)| i);
        if from_start {
            starts.nth(c).unwrap_or(s.len())
        } else if c == 0 {
            s.len()
        } else {
            starts.nth_back(c - 1).unwrap_or(0)
        }
    };
    let from = start.map_or(0, byte);
    let upto = end.map_or(s.len(), byte);
    (from, upto.saturating_sub(from))
}

impl From<bool> for Val {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<isize> for Val {
    fn from(i: isize) -> Self {
        Self::Num(Num::Int(i))
    }
}

impl From<usize> for Val {
    fn from(i: usize) -> Self {
        Self::Num(Num::from_integral(i))
    }
}

impl From<f64> for Val {
    fn from(f: f64) -> Self {
        Self::Num(Num::Float(f))
    }
}

impl From<String> for Val {
    fn from(s: String) -> Self {
        Self::Str(s.into())
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Self::Str(s.into())
    }
}

impl From<jaq_core::val::Range<Val>> for Val {
    fn from(r: jaq_core::val::Range<Val>) -> Self {
        let bounds = [("start", r.start), ("end", r.end)];
        Val::obj(
            bounds
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (Arc::from(k), v)))
                .collect(),
        )
    }
}

impl FromIterator<Val> for Val {
    /// An array, holding no more room than its elements take (a value
    /// made may be kept for the rest of a run).
    fn from_iter<I: IntoIterator<Item = Val>>(iter: I) -> Self {
        Self::arr(iter.into_iter().collect())
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Null, Self::Null) => true,
            (Self::Bool(x), Self::Bool(y)) => x == y,
            (Self::Num(x), Self::Num(y)) => x == y,
            (Self::Str(x), Self::Str(y)) => x == y,
            (Self::Arr(x), Self::Arr(y)) => Arc::ptr_eq(x, y) || x == y,
            (Self::Obj(x), Self::Obj(y)) => Arc::ptr_eq(x, y) || x == y,
            _ => false,
        }
    }
}

impl Eq for Val {}

impl PartialOrd for Val {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Val {
    fn cmp(&self, other: &Self) -> Ordering {
        let rank = |v: &Self| match v {
            Self::Null => 0,
            Self::Bool(_) => 1,
            Self::Num(_) => 2,
            Self::Str(_) => 3,
            Self::Arr(_) => 4,
            Self::Obj(_) => 5,
        };
        match (self, other) {
            (Self::Bool(x), Self::Bool(y)) => x.cmp(y),
            (Self::Num(x), Self::Num(y)) => x.cmp(y),
            (Self::Str(x), Self::Str(y)) => x.cmp(y),
            (Self::Arr(x), Self::Arr(y)) => x.cmp(y),
            (Self::Obj(x), Self::Obj(y)) => x.cmp_jq(y),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

/// Write `s` as a JSON string.
pub(crate) fn write_str(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    let special = |c: char| matches!(c, '\0'..='\x1f' | '\\' | '"' | '\x7f');
    let mut rest = s;
    while let Some(i) = rest.find(special) {
        f.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or_default();
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            '\x08' => f.write_str("\\b")?,
            '\x0c' => f.write_str("\\f")?,
            c => write!(f, "\\u{:04x}", c as u32)?,
        }
        rest = &rest[i + 1..];
    }
    f.write_str(rest)?;
    f.write_char('"')
}

impl fmt::Display for Val {
    /// Compact JSON, as jq writes it (numbers as jaq writes them).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Num(n) => write!(f, "{n}"),
            Self::Str(s) => write_str(f, s),
            Self::Arr(a) => {
                f.write_str("[")?;
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            Self::Obj(o) => {
                f.write_str("{")?;
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_str(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl std::ops::Add for Val {
    type Output = ValR;
    fn add(self, rhs: Self) -> ValR {
        match (self, rhs) {
            (Self::Null, x) | (x, Self::Null) => Ok(x),
            (Self::Num(x), Self::Num(y)) => Ok(Self::Num(x + y)),
            (Self::Str(x), Self::Str(y)) => Ok(Self::str(format!("{x}{y}"))),
            (Self::Arr(mut x), Self::Arr(y)) => {
                Arc::make_mut(&mut x).extend(y.iter().cloned());
                Ok(Self::Arr(x))
            }
            (Self::Obj(mut x), Self::Obj(y)) => {
                let o = Arc::make_mut(&mut x);
                for (k, v) in y.iter() {
                    o.insert(k.clone(), v.clone());
                }
                Ok(Self::Obj(x))
            }
            (l, r) => Err(Error::math(l, Math::Add, r)),
        }
    }
}

impl std::ops::Sub for Val {
    type Output = ValR;
    fn sub(self, rhs: Self) -> ValR {
        match (self, rhs) {
            (Self::Num(x), Self::Num(y)) => Ok(Self::Num(x - y)),
            (Self::Arr(mut x), Self::Arr(y)) => {
                let mut out: Vec<&Val> = y.iter().collect();
                out.sort_unstable();
                Arc::make_mut(&mut x).retain(|v| out.binary_search(&v).is_err());
                Ok(Self::Arr(x))
            }
            (l, r) => Err(Error::math(l, Math::Sub, r)),
        }
    }
}

/// Merge `r` into `l` deeply: objects in both are merged, else `r`'s wins.
fn merge_deep(l: &mut Arc<Obj>, r: Arc<Obj>) {
    let l = Arc::make_mut(l);
    for (k, v) in owned(r) {
        match (l.get_mut(&k), v) {
            (Some(Val::Obj(lo)), Val::Obj(ro)) => merge_deep(lo, ro),
            (Some(lv), v) => *lv = v,
            (None, v) => {
                l.insert(k, v);
            }
        }
    }
}

/// How many times to repeat a string: a big integer saturates.
fn times(n: &Num) -> Option<isize> {
    match n {
        Num::Int(i) => Some(*i),
        Num::BigInt(_) => Some(if n.to_string().starts_with('-') {
            isize::MIN
        } else {
            isize::MAX
        }),
        _ => None,
    }
}

impl std::ops::Mul for Val {
    type Output = ValR;
    fn mul(self, rhs: Self) -> ValR {
        match (self, rhs) {
            (Self::Num(x), Self::Num(y)) => Ok(Self::Num(x * y)),
            (Self::Str(s), Self::Num(n)) | (Self::Num(n), Self::Str(s)) if times(&n).is_some() => {
                match times(&n) {
                    Some(i) if i > 0 => Ok(Self::str(s.repeat(i.unsigned_abs()))),
                    _ => Ok(Self::Null),
                }
            }
            (Self::Obj(mut x), Self::Obj(y)) => {
                merge_deep(&mut x, y);
                Ok(Self::Obj(x))
            }
            (l, r) => Err(Error::math(l, Math::Mul, r)),
        }
    }
}

impl std::ops::Div for Val {
    type Output = ValR;
    fn div(self, rhs: Self) -> ValR {
        match (self, rhs) {
            (Self::Num(x), Self::Num(y)) => Ok(Self::Num(x / y)),
            (Self::Str(x), Self::Str(y)) => Ok(if x.is_empty() {
                Val::arr(Vec::new())
            } else if y.is_empty() {
                x.chars().map(|c| Val::str(c.to_string())).collect()
            } else {
                x.split(&*y).map(Val::from).collect()
            }),
            (l, r) => Err(Error::math(l, Math::Div, r)),
        }
    }
}

impl std::ops::Rem for Val {
    type Output = ValR;
    fn rem(self, rhs: Self) -> ValR {
        match (self, rhs) {
            (Self::Num(x), Self::Num(y)) if !(is_int(&x) && is_int(&y) && y == Num::Int(0)) => {
                Ok(Self::Num(x % y))
            }
            (l, r) => Err(Error::math(l, Math::Rem, r)),
        }
    }
}

impl std::ops::Neg for Val {
    type Output = ValR;
    fn neg(self) -> ValR {
        match self {
            Self::Num(n) => Ok(Self::Num(-n)),
            x => Err(Error::typ(x, "number")),
        }
    }
}

fn not_iterable(v: Val) -> Error {
    Error::typ(v, "iterable (array or object)")
}

impl jaq_core::ValT for Val {
    fn from_num(n: &str) -> ValR {
        // An integer as an integer (big if need be), else the decimal text.
        Ok(Self::Num(
            Num::from_str_radix(n, 10).unwrap_or_else(|| Num::Dec(Arc::new(n.to_owned()))),
        ))
    }

    /// An object of a jq construction (`{a: .x}`); the objects one
    /// construction makes share their list of keys (kept per thread).
    fn from_map<I: IntoIterator<Item = (Self, Self)>>(iter: I) -> ValR {
        thread_local! {
            static SHAPES: std::cell::RefCell<Shapes> = std::cell::RefCell::default();
        }
        let mut o = Obj::default();
        for (k, v) in iter {
            match k {
                Self::Str(k) => {
                    o.insert(k.to_arc(), v);
                }
                k => return Err(Error::typ(k, "string")),
            }
        }
        SHAPES.with(|s| s.borrow_mut().share(&mut o));
        Ok(Self::obj(o))
    }

    fn key_values(self) -> BoxIter<'static, Result<(Self, Self), Error>> {
        match self {
            Self::Arr(a) => Box::new(
                owned(a)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Ok((Self::from(i), v))),
            ),
            Self::Obj(o) => Box::new(
                owned(o)
                    .into_iter()
                    .map(|(k, v)| Ok((Self::Str(k.into()), v))),
            ),
            v => box_once(Err(not_iterable(v))),
        }
    }

    fn values(self) -> Box<dyn Iterator<Item = ValR>> {
        match self {
            Self::Arr(a) => Box::new(owned(a).into_iter().map(Ok)),
            Self::Obj(o) => Box::new(owned(o).into_iter().map(|(_, v)| Ok(v))),
            v => box_once(Err(not_iterable(v))),
        }
    }

    fn index(self, index: &Self) -> ValR {
        self.index_opt(index).map(Option::unwrap_or_default)
    }

    fn range(self, range: jaq_core::val::Range<&Self>) -> ValR {
        let bounds = Self::range_bounds(&range)?;
        match self {
            Self::Str(s) => {
                let (skip, take) = skip_take_chars(bounds, &s);
                Ok(Self::str(&s[skip..skip + take]))
            }
            Self::Arr(a) => {
                let (skip, take) = skip_take(bounds, a.len());
                Ok(a[skip..skip + take].iter().cloned().collect())
            }
            v => Err(Error::typ(v, "rangeable (array or string)")),
        }
    }

    fn map_values<'a, I: Iterator<Item = ValX<'a>>>(
        self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a> {
        match self {
            Self::Arr(a) => Ok(owned(a)
                .into_iter()
                .flat_map(f)
                .collect::<Result<Val, _>>()?),
            Self::Obj(o) => {
                let mut out = Obj::with_capacity(o.len());
                for (k, v) in owned(o) {
                    if let Some(y) = f(v).next() {
                        out.insert(k, y?);
                    }
                }
                Ok(Self::obj(out))
            }
            v => opt.fail(v, |v| Exn::from(not_iterable(v))),
        }
    }

    fn map_index<'a, I: Iterator<Item = ValX<'a>>>(
        mut self,
        index: &Self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a> {
        if let (Self::Str(_) | Self::Arr(_), Self::Obj(o)) = (&self, index) {
            let range = Self::range_of(o);
            return self.map_range(range, opt, f);
        }
        match (&mut self, index) {
            (Self::Obj(o), Self::Str(k)) => {
                let o = Arc::make_mut(o);
                let old = o.get_mut(k).map(std::mem::take);
                let found = old.is_some();
                match f(old.unwrap_or_default()).next().transpose()? {
                    Some(y) => {
                        o.insert(k.to_arc(), y);
                    }
                    None if found => {
                        o.remove(k);
                    }
                    None => {}
                }
                Ok(self)
            }
            (Self::Arr(a), _) => {
                let i = match index.as_pos().and_then(|p| {
                    p.inside(a.len())
                        .ok_or_else(|| Error::str(format_args!("index {index} out of bounds")))
                }) {
                    Ok(i) => i,
                    Err(e) => return opt.fail(self, |_| Exn::from(e)),
                };
                let a = Arc::make_mut(a);
                let x = std::mem::take(&mut a[i]);
                match f(x).next().transpose()? {
                    Some(y) => a[i] = y,
                    None => {
                        a.remove(i);
                    }
                }
                Ok(self)
            }
            (Self::Obj(_), _) => {
                let index = index.clone();
                opt.fail(self, |v| Exn::from(Error::index(v, index)))
            }
            _ => opt.fail(self, |v| Exn::from(not_iterable(v))),
        }
    }

    fn map_range<'a, I: Iterator<Item = ValX<'a>>>(
        mut self,
        range: jaq_core::val::Range<&Self>,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a> {
        let bounds = match Self::range_bounds(&range) {
            Ok(b) => b,
            Err(e) => return opt.fail(self, |_| Exn::from(e)),
        };
        match &mut self {
            Self::Arr(a) => {
                let (skip, take) = skip_take(bounds, a.len());
                let part: Val = a[skip..skip + take].iter().cloned().collect();
                let y = match f(part).next().transpose()? {
                    Some(Self::Arr(y)) => owned(y),
                    Some(y) => return Err(Exn::from(Error::typ(y, "array"))),
                    None => Vec::new(),
                };
                Arc::make_mut(a).splice(skip..skip + take, y);
                Ok(self)
            }
            Self::Str(s) => {
                let (skip, take) = skip_take_chars(bounds, s);
                let part = Self::str(&s[skip..skip + take]);
                let y = match f(part).next().transpose()? {
                    Some(Self::Str(y)) => y,
                    Some(y) => return Err(Exn::from(Error::typ(y, "string"))),
                    None => Str::from(""),
                };
                let out = format!("{}{y}{}", &s[..skip], &s[skip + take..]);
                Ok(Self::str(out))
            }
            _ => opt.fail(self, |v| Exn::from(Error::typ(v, "array"))),
        }
    }

    fn as_bool(&self) -> bool {
        !matches!(self, Self::Null | Self::Bool(false))
    }

    fn into_string(self) -> Self {
        match self {
            s @ Self::Str(_) => s,
            v => Self::str(v.to_string()),
        }
    }
}

impl jaq_std::ValT for Val {
    fn into_seq<S: FromIterator<Self>>(self) -> Result<S, Self> {
        match self {
            Self::Arr(a) => Ok(owned(a).into_iter().collect()),
            v => Err(v),
        }
    }

    fn is_int(&self) -> bool {
        self.as_num().is_some_and(is_int)
    }

    fn as_isize(&self) -> Option<isize> {
        self.as_num().and_then(Num::as_isize)
    }

    fn as_f64(&self) -> Option<f64> {
        self.as_num().map(num_f64)
    }

    fn is_utf8_str(&self) -> bool {
        matches!(self, Self::Str(_))
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        self.as_str().map(str::as_bytes)
    }

    fn as_sub_str(&self, sub: &[u8]) -> Self {
        Self::from_bytes(sub)
    }

    fn from_utf8_bytes(b: impl AsRef<[u8]> + Send + 'static) -> Self {
        Self::from_bytes(b.as_ref())
    }
}

impl Val {
    /// `length`: of a string its characters, of an array or object its
    /// elements, of a number its absolute value, of null 0.
    pub(crate) fn length(&self) -> ValR {
        match self {
            Self::Null => Ok(Self::from(0usize)),
            Self::Bool(_) => Err(Error::str(format_args!("{self} has no length"))),
            Self::Num(n) => Ok(Self::Num(if *n < Num::Int(0) {
                -n.clone()
            } else {
                n.clone()
            })),
            Self::Str(s) => Ok(Self::from(s.chars().count())),
            Self::Arr(a) => Ok(Self::from(a.len())),
            Self::Obj(o) => Ok(Self::from(o.len())),
        }
    }

    /// `contains`: whether `other` is in `self` (strings as substrings,
    /// arrays as every element of `other` contained in some element of
    /// `self`, objects key by key).
    pub(crate) fn contains(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Str(l), Self::Str(r)) => l.contains(&**r),
            (Self::Arr(l), Self::Arr(r)) => r.iter().all(|r| l.iter().any(|l| l.contains(r))),
            (Self::Obj(l), Self::Obj(r)) => r
                .iter()
                .all(|(k, r)| l.get(k).is_some_and(|l| l.contains(r))),
            _ => self == other,
        }
    }

    /// `has(k)`: whether an object has key `k`, an array index `k`
    /// (counted from its end when negative, as `.[k]` does).
    pub(crate) fn has(self, k: &Self) -> ValR {
        self.index_opt(k).map(|o| Self::Bool(o.is_some()))
    }

    /// `bsearch(x)`: the index of `x` in a sorted array, or `-1 - i` where
    /// it would be inserted at `i`.
    pub(crate) fn bsearch(&self, x: &Self) -> ValR {
        match self {
            Self::Arr(a) => Ok(Self::from(match a.binary_search(x) {
                Ok(i) => i as isize,
                Err(i) => -1 - i as isize,
            })),
            v => Err(Error::typ(v.clone(), "array")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_held_in_the_value_and_read_back_the_same() {
        for s in [
            "",
            "a",
            "é€𝄞",
            "exactly twenty-two b!!",
            "twenty-three bytes long",
            "x".repeat(100).as_str(),
        ] {
            let v = Val::from(s);
            assert_eq!(v.as_str(), Some(s));
            assert!(
                matches!(&v, Val::Str(t) if matches!(t.0, Repr::Inline(..)) == (s.len() <= Str::INLINE))
            );
            assert_eq!(Val::from(s.to_owned()), v);
        }
    }

    #[test]
    fn values_are_small() {
        assert!(std::mem::size_of::<Val>() <= 24);
    }
}
