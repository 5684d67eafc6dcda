//! Objects: their values in order, and their keys in a list that objects
//! with the same keys in the same order share (the objects of a list read
//! from one text, or made by one jq object construction, hold one list of
//! keys between them rather than a copy each).

use super::Val;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// The keys of objects in order, looked up through a hash table once they
/// are more than [`Obj::SMALL`].
#[derive(Clone, Debug, Default)]
struct Keys {
    names: Vec<Arc<str>>,
    // Boxed: most lists have none, and it costs them 8 bytes, not 48.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<Arc<str>, usize>>>,
}

impl Keys {
    fn position(&self, key: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.names.iter().position(|k| &**k == key),
        }
    }

    /// Add `key` (not there) last.
    fn push(&mut self, key: Arc<str>) {
        let at = self.names.len();
        match &mut self.index {
            Some(index) => {
                index.insert(key.clone(), at);
            }
            None if at >= Obj::SMALL => {
                let mut index = HashMap::with_capacity(at + 1);
                for (i, k) in self.names.iter().enumerate() {
                    index.insert(k.clone(), i);
                }
                index.insert(key.clone(), at);
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        self.names.push(key);
    }

    /// Take out the key at `i`, the others keeping their order.
    fn remove(&mut self, i: usize) {
        let key = self.names.remove(i);
        if self.names.len() <= Obj::SMALL {
            self.index = None;
        } else if let Some(index) = &mut self.index {
            index.remove(&key);
            for p in index.values_mut() {
                if *p > i {
                    *p -= 1;
                }
            }
        }
    }
}

/// The one list of no keys, which every empty object starts from.
static NO_KEYS: LazyLock<Arc<Keys>> = LazyLock::new(Arc::default);

/// An object: its entries in the order their keys came.
#[derive(Clone, Debug)]
pub struct Obj {
    keys: Arc<Keys>,
    values: Vec<Val>,
}

/// The entries of an object, in order.
pub type Iter<'a> = std::iter::Zip<std::slice::Iter<'a, Arc<str>>, std::slice::Iter<'a, Val>>;

impl Default for Obj {
    fn default() -> Self {
        Self {
            keys: NO_KEYS.clone(),
            values: Vec::new(),
        }
    }
}

impl Obj {
    /// The most keys an object looks through one by one.
    pub const SMALL: usize = 12;

    /// An empty object with room for `n` keys.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            keys: Arc::new(Keys {
                names: Vec::with_capacity(n),
                index: None,
            }),
            values: Vec::with_capacity(n),
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether it has no key.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Val> {
        self.keys.position(key).map(|i| &self.values[i])
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Val> {
        self.keys.position(key).map(|i| &mut self.values[i])
    }

    /// Whether it has `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.keys.position(key).is_some()
    }

    /// Set `key` to `v`, in its place if it is there, else last; gives back
    /// the value it replaced.
    pub fn insert(&mut self, key: Arc<str>, v: Val) -> Option<Val> {
        if let Some(i) = self.keys.position(&key) {
            return Some(std::mem::replace(&mut self.values[i], v));
        }
        Arc::make_mut(&mut self.keys).push(key);
        self.values.push(v);
        None
    }

    /// The value of `key`, to change: `null` put last first if it is not
    /// there.
    pub fn entry(&mut self, key: &str) -> &mut Val {
        let i = match self.keys.position(key) {
            Some(i) => i,
            None => {
                self.insert(key.into(), Val::Null);
                self.values.len() - 1
            }
        };
        &mut self.values[i]
    }

    /// Take `key` out, the other keys keeping their order.
    pub fn remove(&mut self, key: &str) -> Option<Val> {
        let i = self.keys.position(key)?;
        Arc::make_mut(&mut self.keys).remove(i);
        Some(self.values.remove(i))
    }

    /// Its entries, in order.
    pub fn iter(&self) -> Iter<'_> {
        self.keys.names.iter().zip(self.values.iter())
    }

    /// Its keys, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Arc<str>> + ExactSizeIterator {
        self.keys.names.iter()
    }

    /// Its values, in order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Val> + ExactSizeIterator {
        self.values.iter()
    }

    /// Its entries sorted by key.
    pub(crate) fn sorted(&self) -> Vec<(&Arc<str>, &Val)> {
        let mut s: Vec<_> = self.iter().collect();
        s.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s
    }

    /// An object of `self`'s keys (sharing its list) with `values` in their
    /// order; `None` when there are not as many values as keys.
    pub fn with_values(&self, values: Vec<Val>) -> Option<Obj> {
        (values.len() == self.len()).then(|| Obj {
            keys: self.keys.clone(),
            values,
        })
    }

    /// Give back spare room.
    pub(crate) fn shrink(&mut self) {
        self.values.shrink_to_fit();
        if let Some(keys) = Arc::get_mut(&mut self.keys) {
            keys.names.shrink_to_fit();
        }
    }

    /// jq's order of two objects: by their sorted keys, then by their
    /// values in that order.
    pub(crate) fn cmp_jq(&self, other: &Self) -> Ordering {
        let (l, r) = (self.sorted(), other.sorted());
        let keys = l.iter().map(|(k, _)| *k).cmp(r.iter().map(|(k, _)| *k));
        keys.then_with(|| l.iter().map(|(_, v)| *v).cmp(r.iter().map(|(_, v)| *v)))
    }
}

/// Lists of keys met, for objects with the same keys in the same order to
/// share one ([`Shapes::share`]).
#[derive(Default)]
pub struct Shapes(HashMap<Box<[Arc<str>]>, Arc<Keys>>);

impl Shapes {
    /// How many lists it keeps: past that it starts again (objects keyed
    /// by ids would otherwise fill it with lists met once).
    const MOST: usize = 1024;

    /// Make `o` hold the list of keys met before that has its keys, or
    /// keep its own for the next ones.
    pub fn share(&mut self, o: &mut Obj) {
        if o.is_empty() {
            o.keys = NO_KEYS.clone();
            return;
        }
        if let Some(keys) = self.0.get(o.keys.names.as_slice()) {
            o.keys = keys.clone();
            return;
        }
        if self.0.len() >= Self::MOST {
            self.0.clear();
        }
        o.shrink();
        self.0
            .insert(o.keys.names.as_slice().into(), o.keys.clone());
    }
}

impl Shapes {
    /// The object of `keys` and `values` in order (a key given twice: its
    /// last value at its first place), holding the list of keys met before
    /// that has them.
    pub fn object(&mut self, keys: &[Arc<str>], values: Vec<Val>) -> Obj {
        if let Some(shared) = self.0.get(keys) {
            // A list kept has no key twice, so neither has `keys`.
            return Obj {
                keys: shared.clone(),
                values,
            };
        }
        let mut o: Obj = keys.iter().cloned().zip(values).collect();
        self.share(&mut o);
        o
    }
}

impl IntoIterator for Obj {
    type Item = (Arc<str>, Val);
    type IntoIter = std::iter::Zip<std::vec::IntoIter<Arc<str>>, std::vec::IntoIter<Val>>;
    fn into_iter(self) -> Self::IntoIter {
        let names = match Arc::try_unwrap(self.keys) {
            Ok(keys) => keys.names,
            Err(keys) => keys.names.clone(),
        };
        names.into_iter().zip(self.values)
    }
}

impl FromIterator<(Arc<str>, Val)> for Obj {
    /// Of a key given twice, the last value at the first place.
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Val)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut o = Self::with_capacity(iter.size_hint().0);
        o.extend(iter);
        o
    }
}

impl Extend<(Arc<str>, Val)> for Obj {
    fn extend<I: IntoIterator<Item = (Arc<str>, Val)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl PartialEq for Obj {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && (Arc::ptr_eq(&self.keys, &other.keys) && self.values == other.values
                || self.iter().all(|(k, v)| other.get(k) == Some(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(entries: &[(&str, isize)]) -> Obj {
        entries
            .iter()
            .map(|(k, v)| (Arc::from(*k), Val::from(*v)))
            .collect()
    }

    #[test]
    fn objects_keep_their_order_and_find_keys_past_their_index_threshold() {
        let mut o = Obj::default();
        for i in (0..40).rev() {
            o.insert(Arc::from(format!("k{i}")), Val::from(i as isize));
        }
        assert!(o.keys.index.is_some());
        assert_eq!(o.get("k7"), Some(&Val::from(7isize)));
        assert_eq!(o.insert("k7".into(), Val::Null), Some(Val::from(7isize)));
        assert_eq!(o.keys().next().map(|k| &**k), Some("k39"));
        assert_eq!(o.remove("k39"), Some(Val::from(39isize)));
        assert_eq!(
            o.get("k0"),
            Some(&Val::from(0isize)),
            "the index follows a removal"
        );
        assert_eq!(o.keys().next().map(|k| &**k), Some("k38"));
        while o.len() > 3 {
            let k = o.keys().next().cloned().unwrap_or_else(|| Arc::from(""));
            o.remove(&k);
        }
        assert!(o.keys.index.is_none());
        let keys: Vec<_> = o.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["k2", "k1", "k0"]);
        assert_eq!(o.get("k1"), Some(&Val::from(1isize)));
        // equality in any order, jq's order by sorted keys
        let (a, b) = (obj(&[("a", 1), ("b", 2)]), obj(&[("b", 2), ("a", 1)]));
        assert_eq!(a, b);
        assert_eq!(Val::obj(a.clone()), Val::obj(b));
        assert!(Val::obj(a) < Val::obj(obj(&[("a", 1), ("c", 0)])));
    }

    #[test]
    fn objects_with_the_same_keys_share_them_and_part_when_one_changes() {
        let mut shapes = Shapes::default();
        let mut a = obj(&[("id", 1), ("name", 2)]);
        let mut b = obj(&[("id", 3), ("name", 4)]);
        let mut c = obj(&[("name", 5), ("id", 6)]);
        for o in [&mut a, &mut b, &mut c] {
            shapes.share(o);
        }
        assert!(Arc::ptr_eq(&a.keys, &b.keys));
        assert!(
            !Arc::ptr_eq(&a.keys, &c.keys),
            "another order is another list"
        );
        b.insert("extra".into(), Val::Null);
        b.remove("id");
        assert_eq!(a.keys().map(|k| &**k).collect::<Vec<_>>(), ["id", "name"]);
        assert_eq!(
            b.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["name", "extra"]
        );
        assert_eq!(a.get("id"), Some(&Val::from(1isize)));
        assert_eq!(b.get("name"), Some(&Val::from(4isize)));
        let entries: Vec<_> = a.clone().into_iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(entries, ["id", "name"]);
        let fresh = a
            .with_values(vec![Val::from(7isize), Val::Null])
            .unwrap_or_default();
        assert!(Arc::ptr_eq(&a.keys, &fresh.keys));
        assert_eq!(fresh.get("id"), Some(&Val::from(7isize)));
        assert!(a.with_values(vec![Val::Null]).is_none());
        // a key given twice: the last value at the first place
        let twice = obj(&[("a", 1), ("b", 2), ("a", 3)]);
        assert_eq!(twice, obj(&[("a", 3), ("b", 2)]));
        assert_eq!(twice.keys().next().map(|k| &**k), Some("a"));
    }
}
