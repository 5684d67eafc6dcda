//! Multi-row inserts: consecutive `create` patches of one collection with
//! the same fields written in as few statements as possible (on PostgreSQL,
//! `INSERT ... SELECT unnest(...)` of one array per field), their rows
//! matched back to the records by key.

use super::*;

/// A patch's fields as written: its properties and, for a child, its
/// parent's key (in its place among them when they name it, else after
/// them), read without copying the properties.
#[derive(Clone, Copy)]
pub(super) struct Fields<'p> {
    props: Props<'p>,
    parent: Option<(&'p String, &'p Value)>,
    /// Whether the parent's key is not among the properties.
    extra: bool,
}

impl<'p> Fields<'p> {
    pub(super) fn new(props: Props<'p>, parent: Option<(&'p String, &'p Value)>) -> Self {
        let extra = parent.is_some_and(|(k, _)| !props.contains_key(k));
        Self {
            props,
            parent,
            extra,
        }
    }

    pub(super) fn keys(self) -> impl Iterator<Item = &'p String> {
        let extra = self.parent.filter(|_| self.extra).map(|(k, _)| k);
        self.props.keys().chain(extra)
    }

    /// The values, in the order of [`Fields::keys`].
    pub(super) fn values(self) -> impl Iterator<Item = &'p Value> {
        let parent = self.parent;
        let extra = parent.filter(|_| self.extra).map(|(_, v)| v);
        self.props
            .iter()
            .map(move |(k, v)| match parent {
                Some((pk, pv)) if pk == k => pv,
                _ => v,
            })
            .chain(extra)
    }

    pub(super) fn get(self, key: &str) -> Option<&'p Value> {
        match self.parent {
            Some((k, v)) if k == key => Some(v),
            _ => self.props.get(key),
        }
    }

    pub(super) fn len(self) -> usize {
        self.props.len() + usize::from(self.extra)
    }

    pub(super) fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The fields as one map (a row written alone).
    pub(super) fn to_map(self) -> Cow<'p, Map<String, Value>> {
        match self.parent {
            None => self.props.to_map(),
            Some((k, v)) => {
                let mut m = self.props.to_map().into_owned();
                m.insert(k.clone(), v.clone());
                Cow::Owned(m)
            }
        }
    }
}

/// Whether the database generates values for an integer key of this type.
pub(super) fn integer_key(b: Backend, ty: Option<&String>) -> bool {
    let Some(ty) = ty else { return false };
    match b {
        // Only `INTEGER PRIMARY KEY` is the rowid.
        Backend::Sqlite => ty == "integer",
        Backend::Postgres => matches!(ty.as_str(), "int2" | "int4" | "int8"),
        Backend::MySql => matches!(
            ty.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
        ),
    }
}

pub(super) fn unmatched() -> ActionError {
    ActionError {
        blame: Blame::Bug,
        message: "the rows a multi-row insert returned do not match its records".into(),
        retry_after_ms: None,
        incident: false,
    }
}

/// Create objects that have the same fields, as few statements as possible;
/// the stored rows, in the order given. `uniform`: every one has its fields
/// in the same order (they were made by one template).
pub(super) async fn create_many(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    props: &[Fields<'_>],
    uniform: bool,
    only: Option<&BTreeSet<&str>>,
) -> Result<Vec<Got>, ActionError> {
    let Some(&first) = props.first() else {
        return Ok(Vec::new());
    };
    let pk = match t.pk.as_slice() {
        [pk] => Some(pk),
        _ => None,
    };
    let given = pk.is_some_and(|k| first.get(k).is_some());
    let matchable = match pk {
        Some(k) if given => props.iter().all(|p| p.get(k).is_some_and(|v| !v.is_null())),
        Some(k) => integer_key(db.backend, t.cols.get(k)),
        None => false,
    };
    if props.len() == 1 || first.is_empty() || !matchable {
        let mut out = Vec::with_capacity(props.len());
        for p in props {
            out.push(Got::Map(create_in(tx, db, name, t, &p.to_map()).await?));
        }
        return Ok(out);
    }
    let Some(pk) = pk else {
        return Err(unmatched());
    };
    let keys: Vec<&String> = first.keys().collect();
    // What the insert returns (`RETURNING`): nothing when nothing is read.
    let returning = match only {
        None => Some(db.select_list(&t.cols)),
        Some(only) if only.is_empty() => None,
        Some(only) => {
            Some(db.select_list(t.cols.iter().filter(|(c, _)| only.contains(c.as_str()))))
        }
    };
    if db.backend == Backend::Postgres {
        // Only the generated key read (for children, or a token taking
        // it): the keys come back as one array, not a row each.
        let key_only = !given
            && only.is_some_and(|only| {
                let mut read = t.cols.keys().filter(|c| only.contains(c.as_str()));
                read.next() == Some(pk) && read.next().is_none()
            });
        let back = match &returning {
            None => Returning::Nothing,
            Some(_) if key_only => Returning::Keys(pk),
            Some(r) => Returning::Rows(r),
        };
        if let Some(rows) = create_many_pg(tx, name, t, props, &keys, uniform, back).await {
            return match rows? {
                Made::Rows(rows) => match_rows(props, pk, given, rows, t),
                Made::Count(n) => unread(n, props.len()),
            };
        }
    }
    let cols: Vec<String> = keys.iter().map(|k| db.backend.quote(k)).collect();
    let per = (MAX_PARAMS / keys.len()).max(1);
    let types: Vec<Option<&String>> = keys.iter().map(|k| t.cols.get(*k)).collect();
    let mut out = Vec::with_capacity(props.len());
    for chunk in props.chunks(per) {
        let mut params = Vec::with_capacity(chunk.len() * keys.len());
        let mut tuples = String::with_capacity(chunk.len() * keys.len() * 32);
        let mut values = Vec::with_capacity(keys.len());
        for (r, p) in chunk.iter().enumerate() {
            tuples.push_str(if r == 0 { "(" } else { ", (" });
            values_of(*p, &keys, uniform, &mut values);
            for (i, (v, ty)) in values.iter().zip(&types).enumerate() {
                let ty = *ty;
                params.push(db.param_value(v.unwrap_or(&Value::Null), ty));
                if i > 0 {
                    tuples.push_str(", ");
                }
                db.push_param(&mut tuples, params.len(), ty);
            }
            tuples.push(')');
        }
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {tuples}",
            db.backend.quote(name),
            cols.join(", "),
        );
        let Some(returning) = &returning else {
            let made = match tx.run(&Stmt { sql, params }, false).await? {
                Fetched::Affected(n) => n,
                Fetched::Rows(r) => r.len() as u64,
            };
            out.extend(unread(made, chunk.len())?);
            continue;
        };
        sql.push_str(" RETURNING ");
        sql.push_str(returning);
        let rows = tx.rows(&Stmt { sql, params }, t).await?;
        let rows = rows.into_iter().map(Got::Map).collect();
        out.extend(match_rows(chunk, pk, given, rows, t)?);
    }
    Ok(out)
}

/// The columns of `t` the writer reads of the rows it writes for
/// `patches`, when no record reads them (a multi-row insert returns only
/// those): the fields the patches' tokens take, and the key and `id` when
/// it needs the rows at all (for tokens, or for children, which take their
/// parent's key). Empty when it needs none.
pub(super) fn writer_reads<'a>(
    t: &'a Table,
    patches: impl Iterator<Item = PatchRef<'a>>,
) -> BTreeSet<&'a str> {
    let mut read = BTreeSet::new();
    let mut needed = false;
    for p in patches {
        needed |= !p.set_tokens().is_empty() || p.children() > 0;
        read.extend(p.set_tokens().values().map(String::as_str));
    }
    if needed {
        read.extend(t.pk.iter().map(String::as_str));
        read.insert("id");
    }
    read
}

/// The rows of a multi-row insert that returns none: as many as it made
/// (nothing of them is read).
pub(super) fn unread(made: u64, rows: usize) -> Result<Vec<Got>, ActionError> {
    if made != rows as u64 {
        return Err(unmatched());
    }
    Ok((0..rows).map(|_| Got::Map(Map::new())).collect())
}

/// The values of `p` for `keys`, in their order, into `out`: without
/// looking each up when `p` has exactly those keys in that order, as the
/// patches of one multi-row statement mostly have (`uniform`: they do).
pub(super) fn values_of<'a>(
    p: Fields<'a>,
    keys: &[&String],
    uniform: bool,
    out: &mut Vec<Option<&'a Value>>,
) {
    out.clear();
    if uniform || (p.len() == keys.len() && p.keys().zip(keys).all(|(a, b)| a == *b)) {
        out.extend(p.values().map(Some));
    } else {
        out.extend(keys.iter().map(|k| p.get(k)));
    }
}

/// The rows a multi-row insert of `props` returned, in the order of `props`:
/// matched by the key given (`given`), or else by the generated integer
/// key, assigned in increasing order.
pub(super) fn match_rows(
    props: &[Fields<'_>],
    pk: &str,
    given: bool,
    rows: Vec<Got>,
    t: &Table,
) -> Result<Vec<Got>, ActionError> {
    if rows.len() != props.len() {
        return Err(unmatched());
    }
    if given {
        let mut by: HashMap<String, Got> = HashMap::with_capacity(rows.len());
        for r in rows {
            let id = id_text(&r.field(pk, &t.cols)?.unwrap_or(Value::Null));
            by.insert(id, r);
        }
        props
            .iter()
            .map(|p| {
                let id = id_text(p.get(pk).unwrap_or(&Value::Null));
                by.remove(&id).ok_or_else(unmatched)
            })
            .collect()
    } else {
        let ids = rows
            .iter()
            .map(|r| {
                r.field(pk, &t.cols)?
                    .and_then(|v| v.as_i64())
                    .ok_or_else(unmatched)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_sorted() {
            // As they mostly come: in the order they were inserted.
            return Ok(rows);
        }
        let mut keyed: Vec<(i64, Got)> = ids.into_iter().zip(rows).collect();
        keyed.sort_by_key(|(id, _)| *id);
        Ok(keyed.into_iter().map(|(_, r)| r).collect())
    }
}

/// PostgreSQL: create objects that have the same fields in one statement,
/// `INSERT ... SELECT` of `unnest(...)` of one text array per field, each
/// cast to its column's type as [`Db::param`] does. The `unnest`s are in
/// the select list, where PostgreSQL walks the arrays row by row (in
/// `FROM`, it gathers the rows in a tuplestore first: inserting 200,000
/// rows of four fields took 13% longer). Its text is the
/// same for any number of rows, so it is prepared once per connection.
/// `None` when a column's type is not known.
pub(super) async fn create_many_pg(
    tx: &mut Tx,
    name: &str,
    t: &Table,
    props: &[Fields<'_>],
    keys: &[&String],
    uniform: bool,
    returning: Returning<'_>,
) -> Option<Result<Made, ActionError>> {
    let types = keys
        .iter()
        .map(|k| t.cols.get(*k).filter(|ty| !ty.is_empty()))
        .collect::<Option<Vec<_>>>()?;
    // Every value, row by row, and those that are not text as PostgreSQL
    // reads them from text (one after another in `text`, each at its span).
    let mut all: Vec<Option<&Value>> = Vec::with_capacity(props.len() * keys.len());
    let mut text = String::new();
    let mut spans = Vec::new();
    let mut values = Vec::with_capacity(keys.len());
    for p in props {
        values_of(*p, keys, uniform, &mut values);
        for v in &values {
            if let Some(v) = v
                && !matches!(v, Value::Null | Value::String(_))
            {
                let start = text.len();
                // Writing to a String cannot fail.
                let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{v}"));
                spans.push(start..text.len());
            }
        }
        all.extend_from_slice(&values);
    }
    let mut texts = spans.into_iter().map(|r| text.get(r).unwrap_or_default());
    let mut arrays: Vec<Vec<Option<&str>>> = keys
        .iter()
        .map(|_| Vec::with_capacity(props.len()))
        .collect();
    for row in all.chunks(keys.len().max(1)) {
        for (v, a) in row.iter().zip(&mut arrays) {
            a.push(match v {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => texts.next(),
            });
        }
    }
    let mut sql = String::with_capacity(128 + keys.len() * 48);
    sql.push_str("INSERT INTO ");
    sql.push_str(&Backend::Postgres.quote(name));
    sql.push_str(" (");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&Backend::Postgres.quote(k));
    }
    sql.push_str(") SELECT ");
    for (i, ty) in types.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        // As `Db::push_param` does.
        if crate::decode::pg_cast_from_text(ty) {
            sql.push_str(&format!("CAST(c{i} AS "));
            crate::decode::push_pg_cast_type(&mut sql, ty);
            sql.push(')');
        } else {
            sql.push_str(&format!("c{i}"));
        }
    }
    sql.push_str(" FROM (SELECT ");
    for i in 0..keys.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("unnest(${}::text[]) AS c{i}", i + 1));
    }
    sql.push_str(") AS u");
    match returning {
        Returning::Nothing => tx.pg_rows_of_arrays(sql, &arrays, t, false).await,
        Returning::Rows(r) => {
            sql.push_str(" RETURNING ");
            sql.push_str(r);
            tx.pg_rows_of_arrays(sql, &arrays, t, true).await
        }
        Returning::Keys(key) => {
            let k = Backend::Postgres.quote(key);
            let sql = format!(
                "WITH made AS ({sql} RETURNING {k}) SELECT CAST(array_agg({k}) AS int8[]) FROM made"
            );
            let pk: Arc<str> = Arc::from(key);
            // Matched to the records as rows are (`match_rows`).
            Some(tx.pg_keys_of_arrays(sql, &arrays).await?.map(|ids| {
                Made::Rows(ids.into_iter().map(|id| Got::Key(pk.clone(), id)).collect())
            }))
        }
    }
}

/// What a multi-row insert on PostgreSQL returns: nothing, the rows (its
/// `RETURNING` list), or only the keys the database generated (this key
/// column's), as one array.
#[derive(Clone, Copy)]
pub(super) enum Returning<'a> {
    Nothing,
    Rows(&'a str),
    Keys(&'a str),
}
