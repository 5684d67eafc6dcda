//! A REST API's collection (a `resource` of an http connection) asked as
//! the standardized actions ask a table: objects found by criteria (by id
//! at `PATH/ID`, otherwise as query parameters, the answer checked to
//! match), created with `POST PATH`, updated with `PATCH` (or `PUT`) and
//! deleted with `DELETE` at `PATH/ID`.

use crate::call::{BodyType, Call, HttpRequestOptions, ResponseType, answer, target};
use crate::client::Conn;
use crate::connection::{Resource, UpdateVerb};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};
use sluice_action::ActionError;
use std::sync::Arc;

/// What an id escapes in a path: all but RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One collection of an API, for one step.
pub(crate) struct Api<'a> {
    conn: Arc<Conn>,
    connection: &'a str,
    pub(crate) name: &'a str,
    pub(crate) res: Resource,
    key: &'a str,
}

/// An object of a collection.
pub(crate) type Object = Map<String, Value>;

impl<'a> Api<'a> {
    /// Collection `name` of connection `connection`.
    pub(crate) fn new(
        conn: Arc<Conn>,
        connection: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> Result<Self, ActionError> {
        let res = conn
            .decl
            .as_ref()
            .and_then(|d| d.resources.get(name))
            .cloned()
            .ok_or_else(|| {
                ActionError::flow(format!(
                    "connection `{connection}` has no resource `{name}`: describe it under `resources`"
                ))
            })?;
        Ok(Self {
            conn,
            connection,
            name,
            res,
            key,
        })
    }

    fn path(&self) -> String {
        self.res
            .path
            .clone()
            .unwrap_or_else(|| format!("/{}", self.name))
    }

    fn object_path(&self, id: &Value) -> String {
        let id = match id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        format!(
            "{}/{}",
            self.path().trim_end_matches('/'),
            utf8_percent_encode(&id, SEGMENT)
        )
    }

    /// One request; its status and JSON body.
    async fn exchange(
        &self,
        method: &str,
        url: String,
        query: Map<String, Value>,
        body: Option<Value>,
        accept: Vec<u16>,
    ) -> Result<(u16, Value), ActionError> {
        let o = HttpRequestOptions {
            connection: Some(self.connection.to_owned()),
            method: method.to_owned(),
            url,
            query,
            headers: Map::new(),
            body,
            body_type: BodyType::Json,
            response_type: ResponseType::Auto,
            accept_statuses: accept,
            timeout_ms: None,
            max_response_bytes: None,
            max_redirects: None,
            pages: None,
        };
        let url = target(&self.conn, &o.url, &o.query)?;
        let call = Call::new(&self.conn, &o, method, self.key)?;
        let sent = call.send(&url).await?;
        let mut r = answer(method, &url, sent, &o)?;
        let status = r.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
        Ok((status, r.remove("body").unwrap_or(Value::Null)))
    }

    fn objects(&self, body: Value, what: &str) -> Result<Vec<Object>, ActionError> {
        let at = sluice_expr::path::json_path(&self.res.items).map_err(|e| {
            ActionError::flow(format!(
                "resource `{}`: `items` `{}` is not a JSONPath: {}",
                self.name, self.res.items, e.message
            ))
        })?;
        let items = crate::pages::items_of(&at, &body).ok_or_else(|| {
            ActionError::external(format!(
                "{what} of `{}` answered without a list at `{}`",
                self.name, self.res.items
            ))
        })?;
        items
            .into_iter()
            .map(|v| match v {
                Value::Object(o) => Ok(o),
                other => Err(ActionError::external(format!(
                    "{what} of `{}` answered with {other} where an object belongs",
                    self.name
                ))),
            })
            .collect()
    }

    /// The objects with the given query parameters (one page, or every
    /// page when `all` and the resource pages).
    pub(crate) async fn list(
        &self,
        query: Map<String, Value>,
        page: Option<(u64, u64)>,
    ) -> Result<Vec<Object>, ActionError> {
        let mut q = query;
        if let (Some(p), Some((number, size))) = (&self.res.paging, page) {
            q.insert(p.page.clone(), Value::from(p.start + number));
            q.insert(p.size.clone(), Value::from(size));
        }
        let (_, body) = self
            .exchange("GET", self.path(), q, None, Vec::new())
            .await?;
        self.objects(body, "the list")
    }

    /// The query parameter of `field` under `condition`.
    pub(crate) fn param(&self, field: &str, condition: &str) -> Result<String, ActionError> {
        let pattern = match self.res.filters.get(condition) {
            Some(p) => p.as_str(),
            None if condition == "=" => "{field}",
            None => {
                return Err(ActionError::flow(format!(
                    "resource `{}` has no filter for `{condition}`: give its query parameter under `filters` (such as `\"{condition}\": \"{{field}}_gte\"`)",
                    self.name
                )));
            }
        };
        Ok(pattern.replace("{field}", field))
    }

    /// The objects that match `criteria` (all of them `=`).
    pub(crate) async fn find(&self, criteria: &Object) -> Result<Vec<Object>, ActionError> {
        for (k, v) in criteria {
            if !(v.is_string() || v.is_number() || v.is_boolean()) {
                return Err(ActionError::data(format!(
                    "criterion `{k}` is {v}: a REST API is asked for text, numbers and booleans only"
                )));
            }
        }
        let id = &self.res.id_field;
        if criteria.len() == 1
            && let Some(v) = criteria.get(id)
        {
            let (status, body) = self
                .exchange("GET", self.object_path(v), Map::new(), None, vec![200, 404])
                .await?;
            return match (status, body) {
                (404, _) => Ok(Vec::new()),
                (_, Value::Object(o)) => Ok(vec![o]),
                (_, other) => Err(ActionError::external(format!(
                    "`{}` answered with {other} where an object belongs",
                    self.name
                ))),
            };
        }
        let mut query = Map::new();
        for (k, v) in criteria {
            query.insert(self.param(k, "=")?, v.clone());
        }
        let found = self.list(query, None).await?;
        // An API that ignores a parameter answers with objects that do not
        // match: refused, rather than taken for matches.
        if let Some((o, k)) = found.iter().find_map(|o| {
            criteria
                .iter()
                .find(|(k, v)| !same(o.get(*k), v))
                .map(|(k, _)| (o, k))
        }) {
            return Err(ActionError::flow(format!(
                "`{}` answered a search by `{k}` with an object whose `{k}` is {}: the API does not filter by `{k}` as asked (see the resource's `filters`)",
                self.name,
                o.get(k).unwrap_or(&Value::Null)
            )));
        }
        Ok(found)
    }

    /// Create an object; the object as the API answers with it.
    pub(crate) async fn create(&self, props: Object) -> Result<Object, ActionError> {
        let (_, body) = self
            .exchange(
                "POST",
                self.path(),
                Map::new(),
                Some(Value::Object(props.clone())),
                Vec::new(),
            )
            .await?;
        Ok(match body {
            Value::Object(o) => o,
            // An API that answers with no body: what was sent.
            _ => props,
        })
    }

    /// Update `found` with `props`; the object as the API answers with it.
    pub(crate) async fn update(
        &self,
        found: &Object,
        props: Object,
    ) -> Result<Object, ActionError> {
        let id = self.id_of(found)?;
        let (method, body) = match self.res.update {
            UpdateVerb::Patch => ("PATCH", props.clone()),
            UpdateVerb::Put => {
                let mut whole = found.clone();
                whole.extend(props.clone());
                ("PUT", whole)
            }
        };
        let (_, answer) = self
            .exchange(
                method,
                self.object_path(&id),
                Map::new(),
                Some(Value::Object(body)),
                Vec::new(),
            )
            .await?;
        Ok(match answer {
            Value::Object(o) => o,
            _ => {
                let mut after = found.clone();
                after.extend(props);
                after
            }
        })
    }

    /// Delete `found`; its id, as `{idField: id}`.
    pub(crate) async fn delete(&self, found: &Object) -> Result<Object, ActionError> {
        let id = self.id_of(found)?;
        self.exchange(
            "DELETE",
            self.object_path(&id),
            Map::new(),
            None,
            Vec::new(),
        )
        .await?;
        let mut key = Map::new();
        key.insert(self.res.id_field.clone(), id);
        Ok(key)
    }

    fn id_of(&self, o: &Object) -> Result<Value, ActionError> {
        o.get(&self.res.id_field)
            .filter(|v| !v.is_null())
            .cloned()
            .ok_or_else(|| {
                ActionError::external(format!(
                    "an object of `{}` has no `{}` (the resource's `idField`)",
                    self.name, self.res.id_field
                ))
            })
    }
}

/// Whether a found value is the one asked for (a number asked as text, or
/// text as a number, is the same when their text is).
fn same(found: Option<&Value>, asked: &Value) -> bool {
    let Some(f) = found else { return false };
    if f == asked {
        return true;
    }
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    text(f).is_some() && text(f) == text(asked)
}

/// Criteria that say nothing (empty, or every value `null`).
pub(crate) fn missing(criteria: &Object) -> bool {
    criteria.values().all(Value::is_null)
}
