//! Which record of a failed group to write alone first, and how large a
//! group to write at once.

use super::*;

/// The envelope of `jobs` that the failure `f` most likely came from, by
/// what PostgreSQL's detail names in the failed patch: a key's value (`Key
/// (external_id)=(C-9) already exists.`: the second record that has it, as
/// the first landed and the second found it taken, else the only one), or
/// the row (`Failing row contains (7, C-9, -1.00).`: the first record all
/// of whose values are in it). None when it names neither, or no patch
/// has it as written (a value templated from `$tokens`, a parent's key).
pub(super) fn suspect(f: &Fail, jobs: &[Waiting], layouts: &Layouts) -> Option<usize> {
    let named = named(&f.error.message)?;
    let (first, children) = f.at.split_first()?;
    let mut having = jobs.iter().enumerate().filter(|(_, w)| {
        // Values rendered only when written (`$tokens`) are not known
        // here: a full patch's holes by key, a lean one's by place.
        let shape = w.shapes.get(*first).copied().unwrap_or(Shape::NONE);
        let (mut p, holes, lean_holes) = match w.patches.get(*first) {
            Some(Pending::Ready(p)) => (PatchRef::Full(p), &[][..], &[][..]),
            Some(Pending::Holes(p, holes)) => (PatchRef::Full(p), &holes[..], &[][..]),
            Some(Pending::Lean(b)) => match layout_of(layouts, shape) {
                Some(l) => (PatchRef::Lean(b, l), &[][..], &l.holes[..]),
                None => return false,
            },
            _ => return false,
        };
        // (A child has none.)
        let (holes, lean_holes) = if children.is_empty() {
            (holes, lean_holes)
        } else {
            (&[][..], &[][..])
        };
        let known = |at: usize, k: &String| {
            !holes.iter().any(|h| !h.criteria && h.key == *k)
                && !lean_holes.iter().any(|(i, _)| *i == at)
        };
        for c in children {
            match p.child(*c) {
                Some(child) => p = child,
                None => return false,
            }
        }
        match &named {
            Named::Key(field, value) => p
                .properties()
                .get(field)
                .is_some_and(|v| !v.is_null() && id_text(v) == *value),
            Named::Row(cells) => {
                let mut values = p
                    .properties()
                    .iter()
                    .enumerate()
                    .filter(|(at, (k, _))| known(*at, k))
                    .peekable();
                values.peek().is_some()
                    && values.all(|(_, (_, v))| {
                        let text = if v.is_null() {
                            "null".into()
                        } else {
                            id_text(v)
                        };
                        cells.contains(&text.as_str())
                    })
            }
        }
    });
    let once = having.next()?.0;
    if matches!(named, Named::Row(_)) {
        return Some(once);
    }
    Some(having.next().map_or(once, |(k, _)| k))
}

/// What a PostgreSQL detail names.
#[derive(Debug, PartialEq)]
pub(super) enum Named<'m> {
    /// One column's value: `Key (COLUMN)=(VALUE) ...`.
    Key(&'m str, &'m str),
    /// A row's values as PostgreSQL writes them: `Failing row contains
    /// (A, B, ...).` (a value with `, ` in it is split too, and so is not
    /// found: no suspect then).
    Row(Vec<&'m str>),
}

pub(super) fn named(message: &str) -> Option<Named<'_>> {
    const ROW: &str = "(Failing row contains (";
    if let Some(at) = message.rfind(ROW) {
        let rest = &message[at + ROW.len()..];
        let cells = &rest[..rest.rfind(").)")?];
        return Some(Named::Row(cells.split(", ").collect()));
    }
    named_key(message).map(|(k, v)| Named::Key(k, v))
}

/// The column and value of a PostgreSQL detail naming one key: `Key
/// (COLUMN)=(VALUE) ...`.
pub(super) fn named_key(message: &str) -> Option<(&str, &str)> {
    let rest = &message[message.rfind("(Key (")? + "(Key (".len()..];
    let (field, rest) = rest.split_once(")=(")?;
    let end = [") already exists.", ") is not present in table"]
        .iter()
        .filter_map(|t| rest.find(t))
        .min()?;
    let value = &rest[..end];
    (crate::valid_ident(field)).then_some((field, value))
}

/// How many of `n` waiting envelopes to write as one group (one savepoint,
/// one statement per patch position), when `refused` of the `tried`
/// envelopes before were refused. A group costs a few statements of its
/// own; a group with a bad record is written again around that record, so
/// its good records are written again. With a share `p` of bad records,
/// groups of about `sqrt(c / p)` balance the two (`c`: [`group_cost`]): all
/// `n` at once until a record is refused. That balance assumes few bad
/// records per group: once more than a third of the records were refused,
/// a group fails at nearly every record and is written again after each
/// (a group of eight all refused took sixteen writes), so each record is
/// written alone, once.
pub(super) fn group_size(n: usize, tried: u64, refused: u64, backend: Backend) -> usize {
    if refused == 0 || tried == 0 {
        return n.max(1);
    }
    if refused.saturating_mul(3) > tried {
        return 1;
    }
    let p = refused as f64 / tried as f64;
    ((group_cost(backend) / p).sqrt().round() as usize).clamp(8, n.max(8))
}

/// A group's own cost in records' writes, over how many times the good
/// records of a failed group are written again. On PostgreSQL a group's
/// savepoint and statements are round trips to another process, and the
/// database names the row it refused, so a failed group's records are
/// written about once more (those before that row, the row alone, those
/// after). `bench/import` into PostgreSQL: with one bad record in a
/// hundred, 20 to 150 took within a few percent of each other and 3 a
/// third longer; with one in ten thousand, anything from 30 up (whole
/// chunks) a tenth less than 3. Elsewhere a failed group is written again
/// in halves down to the bad record (about three writes of each good one),
/// and a group was measured to cost about eight records' writes.
fn group_cost(backend: Backend) -> f64 {
    match backend {
        Backend::Postgres => 40.0,
        Backend::Sqlite | Backend::MySql => 3.0,
    }
}
