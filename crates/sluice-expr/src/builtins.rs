//! Built-ins whose work on one large input could outlast an evaluation's
//! deadline, in versions that stop when told: sorting (`sort`, `sort_by`,
//! `group_by`, and so `unique` and `unique_by`) compares through a check
//! of the deadline, and `indices` (so `index` and `rindex`) searches in
//! time proportional to its input and the sought part together (jaq's
//! compares the sought part at every position).
//!
//! A sort told to stop finishes at once with its elements in some order;
//! the evaluation's next checkpoint then fails it ("ran longer than ..."),
//! so nothing stopped early is ever seen.

use crate::val::Val;
use std::cmp::Ordering;

/// Comparisons between two looks at the clock.
const EVERY: u32 = 4096;

/// Comparisons that give up (say "equal") once `stop` says so.
struct Stopping<'s> {
    stop: &'s dyn Fn() -> bool,
    count: u32,
    stopped: bool,
}

impl<'s> Stopping<'s> {
    fn new(stop: &'s dyn Fn() -> bool) -> Self {
        Self {
            stop,
            count: 0,
            stopped: false,
        }
    }

    fn cmp<T: Ord>(&mut self, a: &T, b: &T) -> Ordering {
        if self.stopped {
            return Ordering::Equal;
        }
        self.count = self.count.wrapping_add(1);
        if self.count.is_multiple_of(EVERY) && (self.stop)() {
            self.stopped = true;
            return Ordering::Equal;
        }
        a.cmp(b)
    }
}

/// `sort`.
pub(crate) fn sort(a: &mut [Val], stop: &dyn Fn() -> bool) {
    let mut s = Stopping::new(stop);
    a.sort_by(|x, y| s.cmp(x, y));
}

/// What is made of an array's elements and each one's outputs of a filter
/// (`sort_by`, `group_by`), told when to stop.
pub(crate) type ByKeys = fn(Vec<Val>, Vec<Vec<Val>>, &dyn Fn() -> bool) -> Val;

/// The elements with their outputs of `f` (`keys`), sorted by those (a
/// stable sort, as jq's).
fn keyed(xs: Vec<Val>, keys: Vec<Vec<Val>>, stop: &dyn Fn() -> bool) -> Vec<(Vec<Val>, Val)> {
    let mut pairs: Vec<(Vec<Val>, Val)> = keys.into_iter().zip(xs).collect();
    let mut s = Stopping::new(stop);
    pairs.sort_by(|(a, _), (b, _)| s.cmp(a, b));
    pairs
}

/// `sort_by(f)`, with each element's outputs of `f` in `keys`.
pub(crate) fn sort_by(xs: Vec<Val>, keys: Vec<Vec<Val>>, stop: &dyn Fn() -> bool) -> Val {
    keyed(xs, keys, stop).into_iter().map(|(_, x)| x).collect()
}

/// `group_by(f)`: the elements sorted by their outputs of `f` (`keys`),
/// each run of equal ones a group.
pub(crate) fn group_by(xs: Vec<Val>, keys: Vec<Vec<Val>>, stop: &dyn Fn() -> bool) -> Val {
    let pairs = keyed(xs, keys, stop);
    let mut groups: Vec<Val> = Vec::new();
    let mut group: Vec<Val> = Vec::new();
    let mut last: Option<Vec<Val>> = None;
    for (k, x) in pairs {
        if last.as_ref().is_some_and(|l| *l != k) {
            groups.push(std::mem::take(&mut group).into_iter().collect());
        }
        last = Some(k);
        group.push(x);
    }
    if !group.is_empty() {
        groups.push(group.into_iter().collect());
    }
    groups.into_iter().collect()
}

/// Where `needle` starts in `hay`, overlapping places too, in time
/// proportional to both (Knuth, Morris and Pratt's search).
pub(crate) fn find_all<T: PartialEq>(hay: &[T], needle: &[T]) -> Vec<usize> {
    let m = needle.len();
    if m == 0 || m > hay.len() {
        return Vec::new();
    }
    // For each prefix, the length of its longest proper prefix that is
    // also its suffix.
    let mut border = vec![0usize; m];
    let mut k = 0;
    for i in 1..m {
        while k > 0 && needle[i] != needle[k] {
            k = border[k - 1];
        }
        if needle[i] == needle[k] {
            k += 1;
        }
        border[i] = k;
    }
    let mut out = Vec::new();
    let mut k = 0;
    for (i, x) in hay.iter().enumerate() {
        while k > 0 && *x != needle[k] {
            k = border[k - 1];
        }
        if *x == needle[k] {
            k += 1;
        }
        if k == m {
            out.push(i + 1 - m);
            k = border[k - 1];
        }
    }
    out
}

/// `indices($y)` of `x`, as jaq gives them (of a string: the places in
/// characters where `$y` starts; of an array: where the array `$y` starts
/// as a part, or where the element `$y` is); `None` for kinds jaq refuses.
pub(crate) fn indices(x: &Val, y: &Val) -> Option<Vec<usize>> {
    match (x, y) {
        (Val::Str(x), Val::Str(y)) => {
            let at = find_all(x.as_bytes(), y.as_bytes());
            // Matches at character starts, counted in characters.
            let mut next = at.iter().peekable();
            let mut out = Vec::with_capacity(at.len());
            for (n, (start, _)) in x.char_indices().enumerate() {
                while next.peek().is_some_and(|&&p| p < start) {
                    next.next();
                }
                if next.peek().is_some_and(|&&p| p == start) {
                    out.push(n);
                }
            }
            Some(out)
        }
        (Val::Arr(x), Val::Arr(y)) => Some(find_all(x, y)),
        (Val::Arr(x), y) => Some(
            x.iter()
                .enumerate()
                .filter_map(|(i, v)| (v == y).then_some(i))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every place, the slow way.
    fn naive<T: PartialEq>(hay: &[T], needle: &[T]) -> Vec<usize> {
        if needle.is_empty() || needle.len() > hay.len() {
            return Vec::new();
        }
        hay.windows(needle.len())
            .enumerate()
            .filter_map(|(i, w)| (w == needle).then_some(i))
            .collect()
    }

    #[test]
    fn the_search_finds_every_place_the_slow_way_does() {
        let texts = [
            "",
            "a",
            "aa",
            "aaaa",
            "abab",
            "abaabab",
            "ababababa",
            "xyz",
            "abcabcab",
        ];
        for hay in texts {
            for needle in texts {
                assert_eq!(
                    find_all(hay.as_bytes(), needle.as_bytes()),
                    naive(hay.as_bytes(), needle.as_bytes()),
                    "{needle} in {hay}"
                );
            }
        }
    }

    #[test]
    fn a_search_of_a_long_repeated_text_ends_at_once() {
        // Each of a million places matches the first 99,999 bytes sought:
        // the slow way compares 10^11 bytes.
        let hay = vec![b'a'; 1_000_000];
        let mut needle = vec![b'a'; 99_999];
        needle.push(b'b');
        assert!(find_all(&hay, &needle).is_empty());
    }

    #[test]
    fn a_sort_told_to_stop_ends_and_one_not_told_sorts() {
        let mut a: Vec<Val> = (0..100_000).rev().map(|i| Val::from(i as isize)).collect();
        sort(&mut a, &|| true);
        assert_eq!(a.len(), 100_000);
        let mut b: Vec<Val> = (0..10_000).rev().map(|i| Val::from(i as isize)).collect();
        sort(&mut b, &|| false);
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
    }
}
