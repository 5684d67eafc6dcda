//! Envelopes: patches written all-or-none in one transaction, with tokens
//! that later patches read (SEMANTICS.md section 5).

use crate::change::{Hooked, PatchOp, apply_in, new_id, plan_in};
use crate::db::{Db, Pools, Tx};
use crate::shared::StepTx;
pub mod bulk;
pub(crate) mod calls;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_action::hooks::Change;
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One patch of an envelope.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Patch {
    /// `create`, `update`, `upsert` or `delete`.
    pub op: PatchOp,
    /// The table.
    pub collection: String,
    /// Field values (templates allowed; `$tokens` holds tokens set so far).
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// For update, upsert and delete: what identifies the object.
    #[serde(default)]
    pub criteria: Map<String, Value>,
    /// Tokens to set from the patch's response: token name -> field.
    #[serde(default)]
    pub set_tokens: BTreeMap<String, String>,
    /// For a child patch: the field that receives the parent's new id.
    #[serde(default)]
    pub parent_key: Option<String>,
    /// Patches of objects that belong to this one, written after it.
    #[serde(default)]
    pub children: Vec<Patch>,
}

impl Patch {
    /// A patch from its JSON (a templated patch, once rendered). The usual
    /// shape is taken apart as it is: its `properties` and `criteria`
    /// become the patch's, where serde would build them again key by key
    /// (a good part of an import's cost). Anything else goes through serde,
    /// for its messages.
    pub fn from_json(v: Value) -> Result<Self, serde_json::Error> {
        let usual = |m: &Map<String, Value>| {
            m.contains_key("op")
                && m.contains_key("collection")
                && m.iter().all(|(k, v)| match k.as_str() {
                    "op" | "collection" => v.is_string(),
                    "properties" | "criteria" => v.is_object(),
                    "setTokens" => v
                        .as_object()
                        .is_some_and(|t| t.values().all(Value::is_string)),
                    "parentKey" => v.is_string() || v.is_null(),
                    "children" => v.is_array(),
                    _ => false,
                })
        };
        let mut m = match v {
            Value::Object(m) if usual(&m) => m,
            v => return serde_json::from_value(v),
        };
        let op = serde_json::from_value(m.remove("op").unwrap_or_default())?;
        let mut object = |k: &str| match m.remove(k) {
            Some(Value::Object(o)) => o,
            _ => Map::new(),
        };
        let (properties, criteria, set_tokens) = (
            object("properties"),
            object("criteria"),
            object("setTokens"),
        );
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(Self {
            op,
            collection: text(m.remove("collection")).unwrap_or_default(),
            properties,
            criteria,
            set_tokens: set_tokens
                .into_iter()
                .filter_map(|(k, v)| text(Some(v)).map(|s| (k, s)))
                .collect(),
            parent_key: text(m.remove("parentKey")),
            children: match m.remove("children") {
                Some(Value::Array(a)) => a
                    .into_iter()
                    .map(Self::from_json)
                    .collect::<Result<_, _>>()?,
                _ => Vec::new(),
            },
        })
    }
}

/// Options of `envelope`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvelopeOptions {
    /// The connection's name.
    pub connection: String,
    /// The patches, in order; all or none are written. Templated: a step
    /// of a flow receives them through `ActionCx::deferred` and renders each
    /// just before writing it.
    #[serde(default)]
    pub patches: Vec<EnvelopePatch>,
}

/// A patch of an envelope: a write, or a call of an API.
#[derive(Clone, Debug, JsonSchema)]
#[serde(untagged)]
pub enum EnvelopePatch {
    /// A call (`call`, `compensate`, `setTokens`).
    Call(calls::CallPatch),
    /// A write of the envelope's database.
    Write(Patch),
    /// A patch whose shape its templates decide (read when it is rendered).
    #[schemars(skip)]
    Templated,
}

impl<'de> Deserialize<'de> for EnvelopePatch {
    /// A patch with `call` is a call, any other a write: each read with
    /// its own messages, the place inside the patch named in them.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let read = if calls::is_call(&v) {
            serde_path_to_error::deserialize(&v).map(Self::Call)
        } else {
            serde_path_to_error::deserialize(&v).map(Self::Write)
        };
        read.or_else(|e| {
            // A template stands where the error is: its value is known
            // only when the step renders the patch (as `sluice check`
            // passes templated options).
            let mut at = Some(&v);
            for seg in e.path().iter() {
                at = match seg {
                    serde_path_to_error::Segment::Map { key } => at.and_then(|x| x.get(key)),
                    serde_path_to_error::Segment::Seq { index } => at.and_then(|x| x.get(index)),
                    _ => at,
                };
            }
            if at
                .and_then(Value::as_str)
                .is_some_and(sluice_expr::template::has_template)
            {
                return Ok(Self::Templated);
            }
            let path = e.path().to_string();
            let e = e.into_inner();
            Err(if path == "." {
                serde::de::Error::custom(e)
            } else {
                serde::de::Error::custom(format!("at `{path}`: {e}"))
            })
        })
    }
}

impl EnvelopePatch {
    /// The write, where a write is needed.
    pub(crate) fn write(self) -> Result<Patch, ActionError> {
        match self {
            Self::Write(p) => Ok(p),
            Self::Call(_) | Self::Templated => Err(ActionError::flow(
                "a call patch, or a patch still to be templated, is made by an envelope of a flow's step, not here",
            )),
        }
    }
}

/// `envelope`: patches written all or none, in one transaction.
pub struct Envelope(pub(crate) Arc<Pools>);

/// A scope with the envelope's tokens over the run's.
pub(crate) struct WithTokens<'a> {
    pub(crate) inner: &'a (dyn sluice_expr::Scope + Sync),
    /// The tokens (an object), and as jq value once a program needs that.
    pub(crate) tokens: &'a Value,
    pub(crate) tokens_val: &'a std::sync::OnceLock<sluice_expr::Val>,
}

impl sluice_expr::Scope for WithTokens<'_> {
    fn get(&self, name: &str) -> Option<sluice_expr::Val> {
        if name == "tokens" {
            let v = self
                .tokens_val
                .get_or_init(|| sluice_expr::to_val(self.tokens));
            Some(v.clone())
        } else {
            self.inner.get(name)
        }
    }

    fn get_json(&self, name: &str) -> Option<&Value> {
        if name == "tokens" {
            Some(self.tokens)
        } else {
            self.inner.get_json(name)
        }
    }
}

/// The run's tokens, `$tokens`, as JSON.
pub(crate) fn global_tokens(scope: &dyn sluice_expr::Scope) -> Map<String, Value> {
    let tokens = match scope.get_json("tokens") {
        Some(v) => Some(sluice_expr::as_from_jq(v).into_owned()),
        None => scope
            .get("tokens")
            .and_then(|v| sluice_expr::from_val(&v).ok()),
    };
    match tokens {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The key of a token reference in a `dataflow` document's patch:
/// `{"$token": "name"}`.
pub(crate) const TOKEN_REF: &str = "$token";

/// The token a value refers to, if it is a token reference.
pub(crate) fn token_ref(v: &Value) -> Result<Option<&str>, String> {
    match v {
        Value::Object(m) if m.contains_key(TOKEN_REF) => match (m.len(), &m[TOKEN_REF]) {
            (1, Value::String(name)) => Ok(Some(name)),
            (1, other) => Err(format!(
                "`{TOKEN_REF}` must name a token, found {}",
                sluice_expr::value::kind(other)
            )),
            _ => Err(format!(
                "a token reference is {{\"{TOKEN_REF}\": \"name\"}} alone, with no other key"
            )),
        },
        _ => Ok(None),
    }
}

/// Replace every token reference among `values` by the token's value.
pub(crate) fn resolve_tokens(
    values: &mut Map<String, Value>,
    tokens: &Map<String, Value>,
) -> Result<(), ActionError> {
    for (field, v) in values.iter_mut() {
        let name = match token_ref(v) {
            Ok(Some(name)) => name.to_owned(),
            Ok(None) => continue,
            Err(m) => return Err(ActionError::data(format!("field `{field}`: {m}"))),
        };
        *v = tokens.get(&name).cloned().ok_or_else(|| {
            ActionError::data(format!("field `{field}`: token `{name}` is not set"))
        })?;
    }
    Ok(())
}

/// What an envelope's patches leave for the patches after them and for the
/// end of the envelope.
#[derive(Default)]
pub(crate) struct Written {
    /// The tokens set so far (over the run's).
    pub(crate) tokens: Map<String, Value>,
    /// The changes made, for after-hooks once the envelope commits.
    pub(crate) changes: Vec<Change>,
    /// Values `{"$token": name}` take the token's value (a `dataflow`
    /// document's patches, which are data and have no templates).
    pub(crate) token_refs: bool,
}

/// Write one patch and its children; `Err` carries the failing patch's label.
/// Its before-hooks run in the envelope's transaction, between finding the
/// row and writing it.
pub(crate) fn apply_patch<'a>(
    tx: &'a mut Tx,
    db: &'a Db,
    patch: &'a Patch,
    label: String,
    parent_id: Option<Value>,
    hooked: Option<Hooked<'a>>,
    written: &'a mut Written,
) -> sluice_action::BoxFuture<'a, Result<Value, (String, ActionError)>> {
    Box::pin(async move {
        let fail = |e: ActionError| {
            (
                format!("{label} ({} {})", patch.op.word(), patch.collection),
                e,
            )
        };
        let mut props = patch.properties.clone();
        let mut criteria = std::borrow::Cow::Borrowed(&patch.criteria);
        if written.token_refs {
            resolve_tokens(&mut props, &written.tokens).map_err(fail)?;
            resolve_tokens(criteria.to_mut(), &written.tokens).map_err(fail)?;
        }
        if let Some(k) = &patch.parent_key {
            let id = parent_id
                .ok_or_else(|| fail(ActionError::flow("`parentKey` is only for child patches")))?;
            props.insert(k.clone(), id);
        }
        let t = db
            .check_fields(&patch.collection, props.keys().chain(patch.criteria.keys()))
            .await
            .map_err(fail)?;
        let name = &patch.collection;
        let mut planned = plan_in(tx, db, name, &t, patch.op, &criteria, props)
            .await
            .map_err(fail)?;
        if let Some(h) = hooked {
            planned = h.before(db, planned).await.map_err(fail)?;
        }
        let (row, change) = apply_in(tx, db, name, &t, planned).await.map_err(fail)?;
        written.changes.extend(change);
        for (token, field) in &patch.set_tokens {
            let v = row.get(field).cloned().ok_or_else(|| {
                fail(ActionError::flow(format!(
                    "setTokens: the response has no field `{field}` for token `{token}`"
                )))
            })?;
            written.tokens.insert(token.clone(), v);
        }
        let id = new_id(&t, &row);
        let mut children = Vec::new();
        for (i, child) in patch.children.iter().enumerate() {
            children.push(
                apply_patch(
                    tx,
                    db,
                    child,
                    format!("{label}.{}", i + 1),
                    Some(id.clone()),
                    hooked,
                    written,
                )
                .await?,
            );
        }
        let mut out = row;
        if !children.is_empty() {
            out.insert("children".into(), Value::Array(children));
        }
        Ok(Value::Object(out))
    })
}

impl Action for Envelope {
    const KIND: &'static str = "envelope";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    const DEFERRED: &'static [&'static str] = &["patches"];
    type Options = EnvelopeOptions;

    /// `patches` is a list written in the flow: a template standing for the
    /// whole list would be taken from data, which is what `dataflow` does,
    /// with an allow-list.
    fn check(options: &Value) -> Vec<sluice_model::OptionIssue> {
        match options.get("patches") {
            Some(Value::Array(_)) | None => Vec::new(),
            Some(other) => vec![sluice_model::OptionIssue {
                path: vec![sluice_expr::PathSeg::Key("patches".into())],
                message: match other {
                    Value::String(s) if sluice_expr::template::has_template(s) => {
                        "`patches` is one template: an envelope's patches are a list written in the flow".into()
                    }
                    v => format!("`patches` must be a list of patches, found {}", sluice_expr::value::kind(v)),
                },
                at_key: false,
                help: Some(
                    "write each patch (its values may be templates), or take a caller's patches with a `dataflow` step, whose `allow` names the collections and operations they may use".into(),
                ),
            }],
        }
    }

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: EnvelopeOptions,
    ) -> Result<Outcome, ActionError> {
        match cx.batch {
            Some(b) => match b.batch.as_any().downcast_ref::<bulk::Batch>() {
                Some(batch) => {
                    let patches = o
                        .patches
                        .into_iter()
                        .map(EnvelopePatch::write)
                        .collect::<Result<Vec<_>, _>>()?;
                    batch.submit(&cx, b, &o.connection, patches).await
                }
                None => Err(ActionError {
                    blame: sluice_action::Blame::Bug,
                    message: "an envelope was handed another connector's batch".into(),
                    retry_after_ms: None,
                    incident: false,
                }),
            },
            // Boxed: this future is much larger than an import's, which
            // would otherwise copy its size for every record.
            None => Box::pin(write_envelope(&self.0, cx, o)).await,
        }
    }
}

/// Write an envelope in a transaction of its own.
pub(crate) async fn write_envelope(
    pools: &Pools,
    cx: ActionCx<'_>,
    o: EnvelopeOptions,
) -> Result<Outcome, ActionError> {
    let attempt = crate::db::Attempt::of(&cx);
    let connection = o.connection.clone();
    let r = write_envelope_once(pools, cx, o).await;
    crate::db::or_completed(
        pools,
        attempt,
        &connection,
        r,
        crate::db::recorded_with_tokens,
    )
    .await
}

/// [`write_envelope`], once.
async fn write_envelope_once(
    pools: &Pools,
    cx: ActionCx<'_>,
    o: EnvelopeOptions,
) -> Result<Outcome, ActionError> {
    let db = pools.db(cx.connections, &o.connection).await?;
    let compiled = cx.deferred.get("patches").map(|(_, t)| t);
    let count = patch_count(compiled, &o.patches);
    let input = cx.program_input;
    let global = global_tokens(cx.scope);
    let hooked = Hooked::of(&cx, &o.connection);
    let mut written = Written {
        tokens: global.clone(),
        changes: Vec::new(),
        token_refs: false,
    };
    let mut step = StepTx::begin(&db, &cx, &o.connection).await?;
    // Run again after a crash, an envelope that committed takes its result.
    if let Some(done) = step.tx().completed(crate::db::completion_key(&cx)).await? {
        return Ok(crate::db::recorded_with_tokens(done));
    }
    let mut results = Vec::new();
    // The calls made so far, to undo if the envelope fails.
    let mut made = Vec::new();
    let render = |i: usize, t: &sluice_expr::TemplateValue, tokens: &Map<String, Value>| {
        let tokens = Value::Object(tokens.clone());
        let scope = WithTokens {
            inner: cx.scope,
            tokens: &tokens,
            tokens_val: &std::sync::OnceLock::new(),
        };
        t.render_item(i, input, &scope, cx.limits)
            .map(|v| v.unwrap_or(Value::Null))
    };
    for i in 0..count {
        // Each patch is templated just before it is written, so that it
        // sees the tokens the patches before it have set.
        let patch = match compiled {
            Some(t) => {
                let v = render(i, t, &written.tokens)?;
                if calls::is_call(&v) {
                    match calls::make(&cx, i, &v, &mut written).await {
                        Ok(answer) => {
                            results.push(answer);
                            let again = render(i, t, &written.tokens)?;
                            made.push(calls::undo_of(&cx, i, &v, &again));
                            continue;
                        }
                        Err((which, e)) => {
                            drop(step);
                            return Err(calls::undone(&cx, made, &which, e).await);
                        }
                    }
                }
                templated(i, v)?
            }
            None => o.patches[i].clone().write()?,
        };
        if let Err(e) = crate::change::refuse_hooks_in_flow_tx(&cx, hooked, &patch.collection) {
            drop(step);
            return Err(calls::undone(&cx, made, &format!("patch {}", i + 1), e).await);
        }
        match apply_patch(
            step.tx(),
            &db,
            &patch,
            format!("patch {}", i + 1),
            None,
            hooked,
            &mut written,
        )
        .await
        {
            Ok(v) => results.push(v),
            Err((which, e)) => {
                // Dropping the transaction rolls back every earlier patch;
                // the calls made are undone.
                drop(step);
                return Err(calls::undone(&cx, made, &which, e).await);
            }
        }
    }
    let mut outcome = envelope_outcome(&global, written.tokens, results);
    if let Some(payload) = &outcome.payload {
        let recorded = step
            .tx()
            .complete(crate::db::completion_key(&cx), payload)
            .await;
        if let Err(e) = recorded {
            drop(step);
            return Err(calls::undone(&cx, made, "recording the envelope", e).await);
        }
    }
    if let Err(e) = step.commit().await {
        return Err(calls::undone(&cx, made, "the commit", e).await);
    }
    if let Some(h) = hooked {
        outcome.logs = h.after(written.changes).await;
    }
    Ok(outcome)
}

/// Patch `i` (from 0) of an envelope, from its templated value.
pub(crate) fn templated(i: usize, v: Value) -> Result<Patch, ActionError> {
    Patch::from_json(v)
        .map_err(|e| ActionError::data(format!("patch {}: after templating: {e}", i + 1)))
}

/// How many patches an envelope has: its compiled template's (a step of a
/// flow), or else those given in its options.
pub(crate) fn patch_count(
    compiled: Option<&sluice_expr::TemplateValue>,
    given: &[EnvelopePatch],
) -> usize {
    compiled.map_or(given.len(), |t| t.array_len().unwrap_or(0))
}

/// The error of an envelope whose patch `which` failed.
pub(crate) fn envelope_failure(which: &str, e: ActionError) -> ActionError {
    ActionError {
        blame: e.blame,
        message: format!(
            "{which} failed: {}; the envelope was rolled back, none of its patches was written",
            e.message
        ),
        retry_after_ms: None,
        incident: false,
    }
}

/// What an envelope emits: its patches' results and the tokens it set
/// (they shadow the run's from now on).
pub(crate) fn envelope_outcome(
    global: &Map<String, Value>,
    tokens: Map<String, Value>,
    results: Vec<Value>,
) -> Outcome {
    envelope_payload(set_tokens(global, tokens), results)
}

/// The tokens an envelope set: those that are not the run's as they were.
pub(crate) fn set_tokens(
    global: &Map<String, Value>,
    mut tokens: Map<String, Value>,
) -> Map<String, Value> {
    // Usually none is: the map is kept (an import's writer makes one per record).
    if tokens.iter().any(|(k, v)| global.get(k) == Some(v)) {
        tokens.retain(|k, v| global.get(k) != Some(v));
    }
    tokens
}

/// [`envelope_outcome`], of the tokens it set.
pub(crate) fn envelope_payload(set_tokens: Map<String, Value>, results: Vec<Value>) -> Outcome {
    let mut payload = Map::with_capacity(2);
    payload.insert("results".into(), Value::Array(results));
    payload.insert("tokens".into(), Value::Object(set_tokens.clone()));
    Outcome {
        payload: Some(Value::Object(payload)),
        logs: Vec::new(),
        tokens: Some(set_tokens),
        items: None,
        concurrency: 0,
        effect: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rendered_patch_reads_as_serde_reads_it() {
        let same = |v: Value| {
            let fast = Patch::from_json(v.clone()).map(|p| format!("{p:?}"));
            let serde = serde_json::from_value::<Patch>(v).map(|p| format!("{p:?}"));
            match (fast, serde) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{a:?} against {b:?}"),
            }
        };
        same(json!({
            "op": "create", "collection": "customers",
            "properties": {"name": "Ada", "n": 1, "z": null, "a": [1]},
            "setTokens": {"customer": "id"},
            "children": [{"op": "upsert", "collection": "contacts", "parentKey": "customer_id",
                          "criteria": {"email": "a@x"}, "properties": {"b": 2}}]
        }));
        same(json!({"op": "delete", "collection": "t", "criteria": {"id": 1}, "parentKey": null}));
        // Refused as serde refuses them, with its messages.
        same(json!({"op": "merge", "collection": "t"}));
        same(json!({"op": "create", "collection": "t", "extra": 1}));
        same(json!({"op": "create"}));
        same(json!({"op": "create", "collection": "t", "setTokens": {"a": 1}}));
        same(json!({"op": "create", "collection": "t", "properties": [1]}));
        same(json!({"op": "create", "collection": "t", "children": [{"op": "create"}]}));
        same(json!("create"));
    }

    #[test]
    fn the_tokens_set_are_those_the_run_did_not_hold_already() {
        let map = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let global = map(json!({"tenant": 7, "customer": 1}));
        // The run's own tokens, unchanged, are not set; a new value is, in order.
        let set = set_tokens(
            &global,
            map(json!({"tenant": 7, "order": 3, "customer": 2, "a": null})),
        );
        assert_eq!(
            serde_json::to_string(&set).ok(),
            Some(r#"{"order":3,"customer":2,"a":null}"#.to_owned())
        );
        // None held already: the map as it was.
        let set = set_tokens(&Map::new(), map(json!({"z": 1, "a": 2})));
        assert_eq!(
            serde_json::to_string(&set).ok(),
            Some(r#"{"z":1,"a":2}"#.to_owned())
        );
        assert!(set_tokens(&global, map(json!({"tenant": 7}))).is_empty());
    }
}
