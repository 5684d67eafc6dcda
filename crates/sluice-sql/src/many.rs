//! `sql.lookupMany`: objects matching search terms, ordered and paged, in
//! the fetch-all, fetch-page and emit-individually modes.

use crate::actions::emit_individually;
use crate::db::{Pools, Stmt};
use crate::shared::Reads;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use std::sync::Arc;

/// A condition of a search term.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
pub enum Condition {
    /// Equal (`null` matches `IS NULL`).
    #[serde(rename = "=")]
    Eq,
    /// Not equal (`null` matches `IS NOT NULL`).
    #[serde(rename = "!=")]
    Ne,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// SQL `LIKE` (`%` and `_` wildcards).
    #[serde(rename = "like")]
    Like,
}

/// One search term (OIH's `fieldName`, `condition`, `fieldValue` and
/// `criteriaLink` are accepted as written there).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Term {
    /// The field (`fieldName` too).
    #[serde(alias = "fieldName")]
    pub field: String,
    /// The condition (default `=`).
    #[serde(default = "eq")]
    pub condition: Condition,
    /// The value (templates allowed; `fieldValue` too).
    #[serde(alias = "fieldValue")]
    pub value: Value,
    /// For a term after the first: `and` or `or` with the terms before it
    /// (default: `join`).
    pub criteria_link: Option<Join>,
}

pub(crate) fn eq() -> Condition {
    Condition::Eq
}

/// How terms are joined.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// All terms hold.
    #[default]
    And,
    /// Any term holds.
    Or,
}

/// How `sql.lookupMany` emits.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ManyMode {
    /// `{results}`; fails with "too many results" when the count reaches `maxResultSize`.
    #[default]
    FetchAll,
    /// One page: `{results, pageNumber, pageSize}`.
    FetchPage,
    /// Each result continues the flow on its own (a run per result).
    EmitIndividually,
}

/// Sort order.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Ascending.
    #[default]
    #[serde(alias = "ASC")]
    Asc,
    /// Descending.
    #[serde(alias = "DESC")]
    Desc,
}

/// One `orderBy` entry: `{field, order}`, or OIH's pair `[field, order]`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OrderBy {
    /// `{field, order}`.
    Named {
        /// The field.
        field: String,
        /// `asc` (default) or `desc`.
        #[serde(default)]
        order: Order,
    },
    /// `[field, order]`.
    Pair(String, Order),
}

impl OrderBy {
    /// The field.
    pub fn field(&self) -> &String {
        match self {
            Self::Named { field, .. } | Self::Pair(field, _) => field,
        }
    }

    /// The direction.
    pub fn order(&self) -> Order {
        match self {
            Self::Named { order, .. } | Self::Pair(_, order) => *order,
        }
    }
}

/// Options of `sql.lookupMany`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlLookupManyOptions {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// Search terms (none: every object).
    #[serde(default)]
    pub terms: Vec<Term>,
    /// `and` (default) or `or`.
    #[serde(default)]
    pub join: Join,
    /// `fetchAll` (default) or `fetchPage`.
    #[serde(default)]
    pub mode: ManyMode,
    /// With `fetchAll`: the count that fails (default 1000).
    #[serde(default = "crate::actions::default_max")]
    pub max_result_size: u32,
    /// With `fetchPage`: objects per page (default 100).
    #[serde(default = "default_page")]
    pub page_size: u32,
    /// With `fetchPage`: the page, from 0.
    #[serde(default)]
    pub page_number: u32,
    /// Sort order; with `fetchPage` the primary key breaks ties.
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    /// OIH's name of `orderBy`: pairs `[field, direction]` (either form).
    #[serde(default)]
    pub order: Vec<OrderBy>,
    /// With `emitIndividually`: how many rows' runs may be under way at
    /// once (default 1: one after another).
    pub concurrency: Option<usize>,
}

pub(crate) fn default_page() -> u32 {
    100
}

/// `sql.lookupMany`: every object matching the search terms.
pub struct SqlLookupMany(pub(crate) Arc<Pools>);

impl Action for SqlLookupMany {
    const KIND: &'static str = "sql.lookupMany";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlLookupManyOptions;

    fn check(options: &Value) -> Vec<sluice_model::OptionIssue> {
        let mut issues = crate::actions::concurrency_issues(options);
        if let Some(first) = options.get("terms").and_then(|t| t.get(0))
            && first.get("criteriaLink").is_some()
        {
            issues.push(sluice_model::OptionIssue {
                path: vec![
                    sluice_expr::PathSeg::Key("terms".into()),
                    sluice_expr::PathSeg::Index(0),
                    sluice_expr::PathSeg::Key("criteriaLink".into()),
                ],
                message: "the first term has no term before it to link to".into(),
                at_key: true,
                help: Some("give `criteriaLink` on the terms after the first".into()),
            });
        }
        issues
    }

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLookupManyOptions,
    ) -> Result<Outcome, ActionError> {
        let mut o = o;
        if !o.order.is_empty() {
            if !o.order_by.is_empty() {
                return Err(ActionError::flow(
                    "give `orderBy` or its OIH name `order`, not both",
                ));
            }
            o.order_by = std::mem::take(&mut o.order);
        }
        let db = self.0.db(cx.connections, &o.connection).await?;
        let mut via = Reads::of(&db, &cx, &o.connection).await?;
        let fields = o
            .terms
            .iter()
            .map(|t| &t.field)
            .chain(o.order_by.iter().map(OrderBy::field));
        let t = db.check_fields(&o.collection, fields).await?;
        let mut params = Vec::new();
        let conds: Vec<String> = o
            .terms
            .iter()
            .map(|term| {
                let col = db.backend.quote(&term.field);
                let op = match term.condition {
                    Condition::Eq if term.value.is_null() => return format!("{col} IS NULL"),
                    Condition::Ne if term.value.is_null() => return format!("{col} IS NOT NULL"),
                    Condition::Eq => "=",
                    Condition::Ne => "<>",
                    Condition::Lt => "<",
                    Condition::Le => "<=",
                    Condition::Gt => ">",
                    Condition::Ge => ">=",
                    Condition::Like => "LIKE",
                };
                let ty = t.cols.get(&term.field);
                params.push(db.param_value(&term.value, ty));
                let mark = if matches!(term.condition, Condition::Like) {
                    // LIKE compares text whatever the column's type.
                    let ty = Some("text".to_owned());
                    db.param(params.len(), ty.as_ref())
                } else {
                    db.param(params.len(), ty)
                };
                format!("{col} {op} {mark}")
            })
            .collect();
        // Each term joins those before it by its `criteriaLink` (or
        // `join`), left to right: `((a AND b) OR c)`.
        let word = |j: Join| match j {
            Join::And => "AND",
            Join::Or => "OR",
        };
        let mut condition = String::new();
        for (i, (c, term)) in conds.iter().zip(&o.terms).enumerate() {
            if i == 0 {
                condition.push_str(c);
            } else {
                let link = word(term.criteria_link.unwrap_or(o.join));
                condition = format!("({condition}) {link} ({c})");
            }
        }
        let mut sql = format!(
            "SELECT {} FROM {}",
            db.select_list(&t.cols),
            db.backend.quote(&o.collection)
        );
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&condition);
        }
        let mut order: Vec<String> = o
            .order_by
            .iter()
            .map(|b| {
                format!(
                    "{} {}",
                    db.backend.quote(b.field()),
                    if matches!(b.order(), Order::Desc) {
                        "DESC"
                    } else {
                        "ASC"
                    }
                )
            })
            .collect();
        match o.mode {
            ManyMode::FetchAll | ManyMode::EmitIndividually => {
                if !order.is_empty() {
                    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
                }
                sql.push_str(&format!(" LIMIT {}", o.max_result_size));
                let rows = via.table_rows(&Stmt { sql, params }, &t.cols).await?;
                via.done().await?;
                if rows.len() >= o.max_result_size as usize {
                    return Err(ActionError::data(format!(
                        "too many results: {} or more objects match (maxResultSize is {})",
                        o.max_result_size, o.max_result_size
                    )));
                }
                if o.mode == ManyMode::EmitIndividually {
                    return Ok(emit_individually(rows, o.concurrency));
                }
                Ok(Outcome::value(serde_json::json!({ "results": rows })))
            }
            ManyMode::FetchPage => {
                for k in &t.pk {
                    if !o.order_by.iter().any(|b| b.field() == k) {
                        order.push(db.backend.quote(k));
                    }
                }
                if !order.is_empty() {
                    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
                }
                let offset = u64::from(o.page_size) * u64::from(o.page_number);
                sql.push_str(&format!(" LIMIT {} OFFSET {offset}", o.page_size));
                let rows = via.table_rows(&Stmt { sql, params }, &t.cols).await?;
                via.done().await?;
                Ok(Outcome::value(
                    serde_json::json!({ "results": rows, "pageNumber": o.page_number, "pageSize": o.page_size }),
                ))
            }
        }
    }
}
