//! Rows read back as JSON, per backend: which column types are read as
//! they are and which as text, decimals made numbers again, times as
//! RFC 3339.

use crate::backend::{Backend, Table};
use serde_json::{Map, Value};
use sluice_action::ActionError;
use sqlx::{Column, Row, TypeInfo, ValueRef};
use std::collections::BTreeMap;

pub(crate) fn text_type(b: Backend) -> &'static str {
    match b {
        Backend::MySql => "CHAR",
        _ => "TEXT",
    }
}

/// Whether a PostgreSQL column of type `t` takes a value sent as text only
/// after a cast: text and varchar columns take text as it is.
pub(crate) fn pg_cast_from_text(t: &str) -> bool {
    !matches!(t, "text" | "varchar")
}

/// A PostgreSQL type as a cast target (array types start with `_`).
pub(crate) fn push_pg_cast_type(out: &mut String, udt: &str) {
    match udt.strip_prefix('_') {
        Some(elem) => {
            out.push_str(elem);
            out.push_str("[]");
        }
        None => out.push_str(udt),
    }
}

pub(crate) fn readable(b: Backend, t: &str) -> bool {
    match b {
        Backend::Sqlite => true,
        Backend::Postgres => matches!(
            t,
            "bool"
                | "int2"
                | "int4"
                | "int8"
                | "float4"
                | "float8"
                | "text"
                | "varchar"
                | "bpchar"
                | "name"
                | "json"
                | "jsonb"
        ),
        Backend::MySql => matches!(
            t,
            "tinyint"
                | "smallint"
                | "mediumint"
                | "int"
                | "bigint"
                | "float"
                | "double"
                | "varchar"
                | "char"
                | "text"
                | "tinytext"
                | "mediumtext"
                | "longtext"
                | "json"
        ),
    }
}

/// Whether a column of type `t` holds decimals, which some databases give
/// as text.
pub(crate) fn decimal(t: &str) -> bool {
    matches!(t, "numeric" | "decimal")
}

/// A decimal read as text becomes a number again.
pub(crate) fn number_again(v: &mut Value) {
    if let Value::String(s) = &*v {
        *v = number_from_text(s);
    }
}

/// The columns of `cols` that hold decimals.
pub(crate) fn decimal_columns(cols: &BTreeMap<String, String>) -> Vec<&String> {
    cols.iter()
        .filter(|(_, t)| decimal(t))
        .map(|(c, _)| c)
        .collect()
}

/// The decimals of `row` (in columns `decimals`) read as text become
/// numbers again.
pub(crate) fn row_numbers_again(row: &mut Map<String, Value>, decimals: &[&String]) {
    for c in decimals {
        if let Some(v) = row.get_mut(*c) {
            number_again(v);
        }
    }
}

/// Decimals read as text become numbers again.
pub(crate) fn numbers_again(
    mut rows: Vec<Map<String, Value>>,
    cols: &BTreeMap<String, String>,
) -> Vec<Map<String, Value>> {
    let decimals = decimal_columns(cols);
    if !decimals.is_empty() {
        for row in &mut rows {
            row_numbers_again(row, &decimals);
        }
    }
    rows
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

pub(crate) fn number_from_text(s: &str) -> Value {
    s.parse::<i64>()
        .map(Value::from)
        .or_else(|_| s.parse::<f64>().map(Value::from))
        .unwrap_or_else(|_| Value::String(s.to_owned()))
}

pub(crate) fn unreadable(col: &str, ty: &str) -> ActionError {
    ActionError::data(format!(
        "column `{col}` has type {ty}, which Sluice cannot read yet; cast it to text in the query"
    ))
}

pub(crate) fn decode_sqlite(
    row: &sqlx::sqlite::SqliteRow,
) -> Result<Map<String, Value>, ActionError> {
    let mut m = Map::with_capacity(row.columns().len());
    for (i, c) in row.columns().iter().enumerate() {
        let raw = row
            .try_get_raw(i)
            .map_err(|e| ActionError::external(e.to_string()))?;
        let v = if raw.is_null() {
            Value::Null
        } else if let Ok(x) = row.try_get::<i64, _>(i) {
            Value::from(x)
        } else if let Ok(x) = row.try_get::<f64, _>(i) {
            Value::from(x)
        } else if let Ok(x) = row.try_get::<String, _>(i) {
            Value::from(x)
        } else if let Ok(x) = row.try_get::<Vec<u8>, _>(i) {
            Value::from(String::from_utf8_lossy(&x).into_owned())
        } else {
            return Err(unreadable(c.name(), c.type_info().name()));
        };
        m.insert(c.name().to_owned(), v);
    }
    Ok(m)
}

/// The PostgreSQL types Sluice reads, by sqlx's (upper-case) names.
#[derive(Clone, Copy)]
pub(crate) enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Json,
    Numeric,
    Uuid,
    TimestampTz,
    Timestamp,
    Date,
    Time,
}

pub(crate) fn pg_kind(ty: &str) -> Option<PgKind> {
    Some(match ty {
        "BOOL" => PgKind::Bool,
        "INT2" => PgKind::Int2,
        "INT4" => PgKind::Int4,
        "INT8" => PgKind::Int8,
        "FLOAT4" => PgKind::Float4,
        "FLOAT8" => PgKind::Float8,
        "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" => PgKind::Text,
        "JSON" | "JSONB" => PgKind::Json,
        "NUMERIC" => PgKind::Numeric,
        "UUID" => PgKind::Uuid,
        "TIMESTAMPTZ" => PgKind::TimestampTz,
        "TIMESTAMP" => PgKind::Timestamp,
        "DATE" => PgKind::Date,
        "TIME" => PgKind::Time,
        _ => return None,
    })
}

/// Cell `i` of a PostgreSQL row.
pub(crate) fn decode_pg_cell(row: &sqlx::postgres::PgRow, i: usize) -> Result<Value, ActionError> {
    use sqlx::Decode;
    use sqlx::postgres::{PgValueRef, Postgres};
    /// Decode a value of the type sqlx names (checked here): no second
    /// lookup and type check as `Row::try_get` does per cell.
    fn de<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T, ActionError> {
        T::decode(raw).map_err(|e| ActionError::external(e.to_string()))
    }
    let raw = row
        .try_get_raw(i)
        .map_err(|e| ActionError::external(e.to_string()))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let c = &row.columns()[i];
    let ty = c.type_info().name();
    let Some(kind) = pg_kind(ty) else {
        return Err(unreadable(c.name(), ty));
    };
    Ok(match kind {
        PgKind::Bool => Value::from(de::<bool>(raw)?),
        PgKind::Int2 => Value::from(de::<i16>(raw)?),
        PgKind::Int4 => Value::from(de::<i32>(raw)?),
        PgKind::Int8 => Value::from(de::<i64>(raw)?),
        PgKind::Float4 => Value::from(de::<f32>(raw)?),
        PgKind::Float8 => Value::from(de::<f64>(raw)?),
        PgKind::Text => Value::from(de::<String>(raw)?),
        PgKind::Json => de::<sqlx::types::Json<Value>>(raw)?.0,
        PgKind::Numeric => number_from_text(&de::<sqlx::types::BigDecimal>(raw)?.to_string()),
        PgKind::Uuid => Value::from(de::<sqlx::types::Uuid>(raw)?.to_string()),
        PgKind::TimestampTz => Value::from(rfc3339(de::<time::OffsetDateTime>(raw)?)),
        PgKind::Timestamp => Value::from(
            rfc3339(de::<time::PrimitiveDateTime>(raw)?.assume_utc())
                .trim_end_matches('Z')
                .to_owned(),
        ),
        PgKind::Date => Value::from(de::<time::Date>(raw)?.to_string()),
        PgKind::Time => Value::from(de::<time::Time>(raw)?.to_string()),
    })
}

pub(crate) fn decode_pg(row: &sqlx::postgres::PgRow) -> Result<Map<String, Value>, ActionError> {
    let mut m = Map::with_capacity(row.columns().len());
    for (i, c) in row.columns().iter().enumerate() {
        m.insert(c.name().to_owned(), decode_pg_cell(row, i)?);
    }
    Ok(m)
}

/// A row a statement of the bulk writer returned: decoded, or (PostgreSQL)
/// as it came, each cell decoded where it is needed: the writer reads the
/// key and the fields tokens take, the record's own task the rest.
pub(crate) enum Got {
    Map(Map<String, Value>),
    /// Every column of a type Sluice reads (so decoding it cannot fail
    /// but for a broken connection); the cell decoded first, kept (the
    /// writer reads a row's key up to three times: to match the row, for
    /// its children, for a token).
    Pg(sqlx::postgres::PgRow, std::sync::OnceLock<(usize, Value)>),
    /// Only the integer key the database generated (its column and value):
    /// a row the writer reads nothing else of (see `create_many`).
    Key(std::sync::Arc<str>, i64),
}

impl Got {
    /// PostgreSQL rows kept as they came when every column is of a type
    /// Sluice reads; decoded now otherwise (for the error).
    pub(crate) fn pg(
        rows: Vec<sqlx::postgres::PgRow>,
        cols: &BTreeMap<String, String>,
    ) -> Result<Vec<Got>, ActionError> {
        let readable = rows.first().is_none_or(|r| {
            r.columns()
                .iter()
                .all(|c| pg_kind(c.type_info().name()).is_some())
        });
        if readable {
            return Ok(rows
                .into_iter()
                .map(|r| Got::Pg(r, std::sync::OnceLock::new()))
                .collect());
        }
        let rows = rows.iter().map(decode_pg).collect::<Result<Vec<_>, _>>()?;
        Ok(numbers_again(rows, cols)
            .into_iter()
            .map(Got::Map)
            .collect())
    }

    /// Field `name` of the row.
    pub(crate) fn field(
        &self,
        name: &str,
        cols: &BTreeMap<String, String>,
    ) -> Result<Option<Value>, ActionError> {
        match self {
            Got::Map(m) => Ok(m.get(name).cloned()),
            Got::Key(k, id) => Ok((**k == *name).then(|| Value::from(*id))),
            Got::Pg(r, first) => match r.columns().iter().position(|c| c.name() == name) {
                None => Ok(None),
                Some(i) => {
                    if let Some((at, v)) = first.get()
                        && *at == i
                    {
                        return Ok(Some(v.clone()));
                    }
                    let mut v = decode_pg_cell(r, i)?;
                    if cols.get(name).is_some_and(|t| decimal(t)) {
                        number_again(&mut v);
                    }
                    let _ = first.set((i, v.clone()));
                    Ok(Some(v))
                }
            },
        }
    }

    /// The row's new id: its key, or else its field `id`.
    pub(crate) fn new_id(&self, t: &Table) -> Result<Value, ActionError> {
        for k in t.pk.first().map(String::as_str).into_iter().chain(["id"]) {
            if let Some(v) = self.field(k, &t.cols)? {
                return Ok(v);
            }
        }
        Ok(Value::Null)
    }

    /// The whole row.
    pub(crate) fn into_map(
        self,
        cols: &BTreeMap<String, String>,
    ) -> Result<Map<String, Value>, ActionError> {
        match self {
            Got::Map(m) => Ok(m),
            Got::Key(k, id) => Ok(Map::from_iter([(k.to_string(), Value::from(id))])),
            Got::Pg(r, _) => {
                let mut m = decode_pg(&r)?;
                row_numbers_again(&mut m, &decimal_columns(cols));
                Ok(m)
            }
        }
    }
}

pub(crate) fn decode_mysql(row: &sqlx::mysql::MySqlRow) -> Result<Map<String, Value>, ActionError> {
    let mut m = Map::with_capacity(row.columns().len());
    for (i, c) in row.columns().iter().enumerate() {
        let raw = row
            .try_get_raw(i)
            .map_err(|e| ActionError::external(e.to_string()))?;
        let ty = c.type_info().name().to_ascii_uppercase();
        let get = |e: sqlx::Error| ActionError::external(e.to_string());
        let v = if raw.is_null() {
            Value::Null
        } else if ty == "BOOLEAN" {
            Value::from(row.try_get::<bool, _>(i).map_err(get)?)
        } else if ty.ends_with("UNSIGNED") {
            Value::from(row.try_get::<u64, _>(i).map_err(get)?)
        } else if matches!(
            ty.as_str(),
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT"
        ) {
            Value::from(row.try_get::<i64, _>(i).map_err(get)?)
        } else if ty == "FLOAT" {
            Value::from(row.try_get::<f32, _>(i).map_err(get)?)
        } else if ty == "DOUBLE" {
            Value::from(row.try_get::<f64, _>(i).map_err(get)?)
        } else if ty == "DECIMAL" {
            number_from_text(
                &row.try_get::<sqlx::types::BigDecimal, _>(i)
                    .map_err(get)?
                    .to_string(),
            )
        } else if ty == "DATETIME" {
            Value::from(
                rfc3339(
                    row.try_get::<time::PrimitiveDateTime, _>(i)
                        .map_err(get)?
                        .assume_utc(),
                )
                .trim_end_matches('Z')
                .to_owned(),
            )
        } else if ty == "TIMESTAMP" {
            Value::from(rfc3339(
                row.try_get::<time::OffsetDateTime, _>(i).map_err(get)?,
            ))
        } else if ty == "DATE" {
            Value::from(row.try_get::<time::Date, _>(i).map_err(get)?.to_string())
        } else if ty == "JSON" {
            row.try_get::<sqlx::types::Json<Value>, _>(i)
                .map_err(get)?
                .0
        } else if let Ok(s) = row.try_get::<String, _>(i) {
            Value::from(s)
        } else {
            return Err(unreadable(c.name(), &ty));
        };
        m.insert(c.name().to_owned(), v);
    }
    Ok(m)
}
