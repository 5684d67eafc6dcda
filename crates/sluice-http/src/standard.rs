//! The standardized actions over a REST API's collections (`rest.lookup`,
//! `rest.lookupMany`, `rest.create`, `rest.update`, `rest.upsert`,
//! `rest.delete`), with the rules of the `sql.*` actions: exactly one
//! match, or "not found" (or `{}` when zero results are allowed), or "more
//! than one matching object" with nothing written; criteria that say
//! nothing refused unless they may be omitted; upsert by an id that is
//! null creates.

use crate::client::Clients;
use crate::rest::{Api, Object, missing};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use std::sync::Arc;

/// `rest.lookup`.
pub struct RestLookup(pub(crate) Arc<Clients>);
/// `rest.lookupMany`.
pub struct RestLookupMany(pub(crate) Arc<Clients>);
/// `rest.create`.
pub struct RestCreate(pub(crate) Arc<Clients>);
/// `rest.update`.
pub struct RestUpdate(pub(crate) Arc<Clients>);
/// `rest.upsert`.
pub struct RestUpsert(pub(crate) Arc<Clients>);
/// `rest.delete`.
pub struct RestDelete(pub(crate) Arc<Clients>);

/// Options of `rest.lookup`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestLookupOptions {
    /// A connection of `type: http` that describes the collection.
    pub connection: String,
    /// The collection: a resource of the connection.
    pub collection: String,
    /// Field values that identify the object.
    #[serde(default)]
    pub criteria: Object,
    /// No match emits `{}` instead of failing.
    #[serde(default)]
    pub allow_zero_results: bool,
    /// Empty criteria (or all null) emit `{}` instead of failing.
    #[serde(default)]
    pub allow_criteria_to_be_omitted: bool,
}

/// Options of `rest.create`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestCreateOptions {
    /// A connection of `type: http` that describes the collection.
    pub connection: String,
    /// The collection: a resource of the connection.
    pub collection: String,
    /// The object's fields.
    pub properties: Object,
}

/// Options of `rest.update`, `rest.upsert` and `rest.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestWriteOptions {
    /// A connection of `type: http` that describes the collection.
    pub connection: String,
    /// The collection: a resource of the connection.
    pub collection: String,
    /// Field values that identify the object: its id or unique fields.
    pub criteria: Object,
    /// The fields to write (not for `rest.delete`).
    #[serde(default)]
    pub properties: Object,
}

/// One term of `rest.lookupMany`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Term {
    /// The field (OIH: `fieldName`).
    #[serde(alias = "fieldName")]
    pub field: String,
    /// `=` (default), `!=`, `<`, `<=`, `>`, `>=` or `like`, each as the
    /// resource's `filters` send it.
    #[serde(default = "eq")]
    pub condition: String,
    /// The value (OIH: `fieldValue`).
    #[serde(alias = "fieldValue")]
    pub value: Value,
    /// OIH's link to the terms before: only `and` (query parameters all
    /// hold at once).
    pub criteria_link: Option<String>,
}

fn eq() -> String {
    "=".into()
}

/// How `rest.lookupMany` emits.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ManyMode {
    /// `{results}`, failing with "too many results" at `maxResultSize`.
    #[default]
    FetchAll,
    /// One page: `{results, pageNumber, pageSize}`.
    FetchPage,
    /// Each object in a run of its own.
    EmitIndividually,
}

/// Options of `rest.lookupMany`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestLookupManyOptions {
    /// A connection of `type: http` that describes the collection.
    pub connection: String,
    /// The collection: a resource of the connection.
    pub collection: String,
    /// The conditions, all of which hold.
    #[serde(default)]
    pub terms: Vec<Term>,
    /// `fetchAll` (default), `fetchPage` or `emitIndividually`.
    #[serde(default)]
    pub mode: ManyMode,
    /// Objects a page (default 100).
    #[serde(default = "hundred")]
    pub page_size: u64,
    /// The page, from 0.
    #[serde(default)]
    pub page_number: u64,
    /// "Too many results" at this many (default 1000).
    #[serde(default = "thousand")]
    pub max_result_size: u64,
}

fn hundred() -> u64 {
    100
}

fn thousand() -> u64 {
    1000
}

fn api<'a>(
    clients: &Clients,
    cx: &ActionCx<'a>,
    connection: &'a str,
    collection: &'a str,
) -> Result<Api<'a>, ActionError> {
    let conn = clients.get(cx.connections, Some(connection))?;
    Api::new(conn, connection, collection, cx.idempotency_key)
}

impl Action for RestLookup {
    const KIND: &'static str = "rest.lookup";
    const CONNECTION: Option<&'static str> = Some("http");
    type Options = RestLookupOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: RestLookupOptions,
    ) -> Result<Outcome, ActionError> {
        let api = api(&self.0, &cx, &o.connection, &o.collection)?;
        if missing(&o.criteria) {
            return if o.allow_criteria_to_be_omitted {
                Ok(Outcome::value(json!({})))
            } else {
                Err(ActionError::data(
                    "the lookup criteria are missing (allowCriteriaToBeOmitted is false)",
                ))
            };
        }
        let mut found = api.find(&o.criteria).await?;
        match found.len() {
            1 => Ok(Outcome::value(Value::Object(found.remove(0)))),
            0 if o.allow_zero_results => Ok(Outcome::value(json!({}))),
            0 => Err(ActionError::data(format!(
                "not found: no object in `{}` matches the criteria",
                o.collection
            ))),
            _ => Err(ActionError::data(format!(
                "more than one matching object in `{}`",
                o.collection
            ))),
        }
    }
}

impl Action for RestCreate {
    const KIND: &'static str = "rest.create";
    const CONNECTION: Option<&'static str> = Some("http");
    type Options = RestCreateOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: RestCreateOptions,
    ) -> Result<Outcome, ActionError> {
        let api = api(&self.0, &cx, &o.connection, &o.collection)?;
        Ok(Outcome::value(Value::Object(
            api.create(o.properties).await?,
        )))
    }
}

/// The one object the criteria of a write match, if any; `what` the
/// write, for "nothing was `what`".
async fn one(api: &Api<'_>, criteria: &Object, what: &str) -> Result<Option<Object>, ActionError> {
    if missing(criteria) {
        return Err(ActionError::data(
            "the criteria are missing: give the object's id or unique fields",
        ));
    }
    let mut found = api.find(criteria).await?;
    if found.len() > 1 {
        return Err(ActionError::data(format!(
            "more than one matching object in `{}`; nothing was {what}",
            api.name
        )));
    }
    Ok(found.pop())
}

fn not_found(name: &str) -> ActionError {
    ActionError::data(format!(
        "not found: no object in `{name}` matches the criteria"
    ))
}

impl Action for RestUpdate {
    const KIND: &'static str = "rest.update";
    const CONNECTION: Option<&'static str> = Some("http");
    type Options = RestWriteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: RestWriteOptions,
    ) -> Result<Outcome, ActionError> {
        let api = api(&self.0, &cx, &o.connection, &o.collection)?;
        let found = one(&api, &o.criteria, "written")
            .await?
            .ok_or_else(|| not_found(&o.collection))?;
        Ok(Outcome::value(Value::Object(
            api.update(&found, o.properties).await?,
        )))
    }
}

impl Action for RestUpsert {
    const KIND: &'static str = "rest.upsert";
    const CONNECTION: Option<&'static str> = Some("http");
    type Options = RestWriteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: RestWriteOptions,
    ) -> Result<Outcome, ActionError> {
        let api = api(&self.0, &cx, &o.connection, &o.collection)?;
        // Upsert by id, the id not given: create, the API giving the id.
        let by_id = o.criteria.keys().all(|k| *k == api.res.id_field);
        if by_id && missing(&o.criteria) {
            return Ok(Outcome::value(Value::Object(
                api.create(o.properties).await?,
            )));
        }
        let out = match one(&api, &o.criteria, "written").await? {
            Some(found) => api.update(&found, o.properties).await?,
            None => {
                let mut all = o.criteria.clone();
                all.extend(o.properties);
                api.create(all).await?
            }
        };
        Ok(Outcome::value(Value::Object(out)))
    }
}

impl Action for RestDelete {
    const KIND: &'static str = "rest.delete";
    const CONNECTION: Option<&'static str> = Some("http");
    type Options = RestWriteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: RestWriteOptions,
    ) -> Result<Outcome, ActionError> {
        let api = api(&self.0, &cx, &o.connection, &o.collection)?;
        let out = match one(&api, &o.criteria, "deleted").await? {
            Some(found) => api.delete(&found).await?,
            None => Map::new(),
        };
        Ok(Outcome::value(Value::Object(out)))
    }
}

impl Action for RestLookupMany {
    const KIND: &'static str = "rest.lookupMany";
    const CONNECTION: Option<&'static str> = Some("http");
    type Options = RestLookupManyOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: RestLookupManyOptions,
    ) -> Result<Outcome, ActionError> {
        let api = api(&self.0, &cx, &o.connection, &o.collection)?;
        let mut query = Map::new();
        for t in &o.terms {
            if t.criteria_link
                .as_deref()
                .is_some_and(|l| !l.eq_ignore_ascii_case("and"))
            {
                return Err(ActionError::flow(
                    "a REST API's query parameters all hold at once: `criteriaLink` can only be `and`",
                ));
            }
            query.insert(api.param(&t.field, &t.condition)?, t.value.clone());
        }
        let paged = api.res.paging.is_some();
        match o.mode {
            ManyMode::FetchPage => {
                if !paged {
                    return Err(ActionError::flow(format!(
                        "resource `{}` says nothing of pages: give it `paging` for `mode: fetchPage`",
                        o.collection
                    )));
                }
                let results = api.list(query, Some((o.page_number, o.page_size))).await?;
                Ok(Outcome::value(json!({
                    "results": results,
                    "pageNumber": o.page_number,
                    "pageSize": o.page_size,
                })))
            }
            ManyMode::FetchAll | ManyMode::EmitIndividually => {
                let mut all = Vec::new();
                let mut number = 0;
                loop {
                    let page = api
                        .list(query.clone(), paged.then_some((number, o.page_size)))
                        .await?;
                    let last = !paged || (page.len() as u64) < o.page_size;
                    all.extend(page.into_iter().map(Value::Object));
                    if all.len() as u64 >= o.max_result_size {
                        return Err(ActionError::data(format!(
                            "too many results: {} or more objects match (maxResultSize is {})",
                            o.max_result_size, o.max_result_size
                        )));
                    }
                    if last {
                        break;
                    }
                    number += 1;
                }
                if o.mode == ManyMode::EmitIndividually {
                    return Ok(Outcome::each(all, None));
                }
                Ok(Outcome::value(json!({ "results": all })))
            }
        }
    }
}
