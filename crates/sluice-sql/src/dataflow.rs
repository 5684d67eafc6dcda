//! `dataflow`: a caller's document of envelopes, written all or none
//! (EngageIP's data-driven data flows: many operations per request, keys
//! managed by the caller through tokens).
//!
//! The document is data, never code: a value in it is written as it is
//! (`{{` in it is text), and a property or criterion whose value is exactly
//! `{"$token": "name"}` takes the value of a token that an earlier patch
//! set. Before anything is written the whole document is checked: its
//! shape, the flow's allow-list of collections and operations, every token
//! set before it is used, every field a column of its table. Then every
//! patch of every envelope is written in one transaction.

use crate::change::{Hooked, PatchOp};
use crate::db::Pools;
use crate::envelope::{
    Patch, Written, apply_patch, envelope_failure, global_tokens, set_tokens, token_ref,
};
use crate::shared::StepTx;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Options of `dataflow`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataflowOptions {
    /// The connection's name.
    pub connection: String,
    /// The document: `{"envelopes": [{"patches": [...]}, ...]}`, usually a
    /// template such as `"{{ . }}"`. Its values are data: nothing in it is
    /// evaluated.
    pub document: Value,
    /// What a caller may write: each collection with the operations
    /// (`create`, `update`, `upsert`, `delete`) allowed on it.
    pub allow: BTreeMap<String, Vec<PatchOp>>,
}

/// `dataflow`: a document of envelopes from data, checked whole, then
/// written in one transaction.
pub struct Dataflow(pub(crate) Arc<Pools>);

/// One patch of the document, with its place (`envelope 2, patch 3.1`).
struct Placed<'d> {
    place: String,
    patch: &'d Patch,
    is_child: bool,
}

/// Read the document's envelopes; a shape error names its place.
pub(crate) fn parse(doc: Value) -> Result<Vec<Vec<Patch>>, ActionError> {
    let bad = |m: String| ActionError::data(format!("the document: {m}"));
    let envelopes = match doc {
        Value::Object(mut m) => match (m.remove("envelopes"), m.keys().next()) {
            (_, Some(k)) => {
                return Err(bad(format!(
                    "unknown key `{k}` (a document is {{\"envelopes\": [...]}})"
                )));
            }
            (Some(Value::Array(a)), None) => a,
            (Some(v), None) => {
                return Err(bad(format!(
                    "`envelopes` must be a list, found {}",
                    sluice_expr::value::kind(&v)
                )));
            }
            (None, None) => return Err(bad("it has no `envelopes`".into())),
        },
        v => {
            return Err(bad(format!(
                "it must be an object {{\"envelopes\": [...]}}, found {}",
                sluice_expr::value::kind(&v)
            )));
        }
    };
    let mut out = Vec::with_capacity(envelopes.len());
    for (e, env) in envelopes.into_iter().enumerate() {
        let at = |m: String| ActionError::data(format!("envelope {}: {m}", e + 1));
        let patches = match env {
            Value::Object(mut m) => match (m.remove("patches"), m.keys().next()) {
                (_, Some(k)) => {
                    return Err(at(format!(
                        "unknown key `{k}` (an envelope is {{\"patches\": [...]}})"
                    )));
                }
                (Some(Value::Array(a)), None) => a,
                _ => return Err(at("`patches` must be a list".into())),
            },
            v => {
                return Err(at(format!(
                    "an envelope is {{\"patches\": [...]}}, found {}",
                    sluice_expr::value::kind(&v)
                )));
            }
        };
        let mut list = Vec::with_capacity(patches.len());
        for (p, v) in patches.into_iter().enumerate() {
            list.push(Patch::from_json(v).map_err(|err| {
                ActionError::data(format!("envelope {}, patch {}: {err}", e + 1, p + 1))
            })?);
        }
        out.push(list);
    }
    Ok(out)
}

/// Every patch in the order it is written (a patch, then its children).
fn placed(envelopes: &[Vec<Patch>]) -> Vec<Placed<'_>> {
    fn walk<'d>(p: &'d Patch, place: &str, out: &mut Vec<Placed<'d>>) {
        for (i, c) in p.children.iter().enumerate() {
            let place = format!("{place}.{}", i + 1);
            out.push(Placed {
                place: place.clone(),
                patch: c,
                is_child: true,
            });
            walk(c, &place, out);
        }
    }
    let mut out = Vec::new();
    for (e, env) in envelopes.iter().enumerate() {
        for (i, p) in env.iter().enumerate() {
            let place = format!("envelope {}, patch {}", e + 1, i + 1);
            out.push(Placed {
                place: place.clone(),
                patch: p,
                is_child: false,
            });
            walk(p, &place, &mut out);
        }
    }
    out
}

/// Check the document before anything is written: the allow-list, child
/// keys, criteria, and every token set before it is used.
fn check(
    envelopes: &[Vec<Patch>],
    allow: &BTreeMap<String, Vec<PatchOp>>,
    run_tokens: &Map<String, Value>,
) -> Result<(), ActionError> {
    let mut tokens: BTreeSet<&str> = run_tokens.keys().map(String::as_str).collect();
    for Placed {
        place,
        patch,
        is_child,
    } in placed(envelopes)
    {
        let fail = |m: String| {
            ActionError::data(format!(
                "{place} ({} {}): {m}; nothing was written",
                patch.op.word(),
                patch.collection
            ))
        };
        match allow.get(&patch.collection) {
            None => {
                return Err(fail(format!(
                    "collection `{}` is not one the flow allows (it allows {})",
                    patch.collection,
                    allow.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            Some(ops) if !ops.contains(&patch.op) => {
                let words: Vec<&str> = ops.iter().map(|o| o.word()).collect();
                return Err(fail(format!(
                    "`{}` is not allowed on `{}` (allowed: {})",
                    patch.op.word(),
                    patch.collection,
                    words.join(", ")
                )));
            }
            Some(_) => {}
        }
        if patch.parent_key.is_some() && !is_child {
            return Err(fail("`parentKey` is only for child patches".into()));
        }
        if matches!(patch.op, PatchOp::Update | PatchOp::Delete) && patch.criteria.is_empty() {
            return Err(fail(format!(
                "`{}` needs `criteria` naming the object",
                patch.op.word()
            )));
        }
        for (field, v) in patch.properties.iter().chain(&patch.criteria) {
            match token_ref(v) {
                Err(m) => return Err(fail(format!("field `{field}`: {m}"))),
                Ok(Some(t)) if !tokens.contains(t) => {
                    return Err(fail(format!(
                        "field `{field}` uses token `{t}` before any patch sets it"
                    )));
                }
                Ok(_) => {}
            }
        }
        tokens.extend(patch.set_tokens.keys().map(String::as_str));
    }
    Ok(())
}

impl Action for Dataflow {
    const KIND: &'static str = "dataflow";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = DataflowOptions;

    /// The allow-list names collections and at least one operation each.
    fn check(options: &Value) -> Vec<OptionIssue> {
        let mut issues = Vec::new();
        let Some(allow) = options.get("allow").and_then(Value::as_object) else {
            return issues;
        };
        let issue = |path: Vec<PathSeg>, message: String, help: &str| OptionIssue {
            path,
            message,
            at_key: false,
            help: Some(help.to_owned()),
        };
        if allow.is_empty() {
            issues.push(issue(
                vec![PathSeg::Key("allow".into())],
                "`allow` names no collection: no document could write anything".into(),
                "name each collection a caller may write, with its operations: `allow: {accounts: [create, upsert]}`",
            ));
        }
        for (name, ops) in allow {
            let path = vec![PathSeg::Key("allow".into()), PathSeg::Key(name.clone())];
            if !sluice_action::valid_ident(name) {
                issues.push(issue(
                    path,
                    format!("`{name}` is not a collection name"),
                    "letters, digits and `_`",
                ));
            } else if ops.as_array().is_some_and(Vec::is_empty) {
                issues.push(issue(
                    path,
                    format!("`{name}` allows no operation"),
                    "list at least one of create, update, upsert, delete, or leave the collection out",
                ));
            }
        }
        issues
    }

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: DataflowOptions,
    ) -> Result<Outcome, ActionError> {
        let attempt = crate::db::Attempt::of(&cx);
        let connection = o.connection.clone();
        let r = self.run_once(cx, o).await;
        crate::db::or_completed(
            &self.0,
            attempt,
            &connection,
            r,
            crate::db::recorded_with_tokens,
        )
        .await
    }
}

impl Dataflow {
    /// [`Action::run`], once.
    async fn run_once(&self, cx: ActionCx<'_>, o: DataflowOptions) -> Result<Outcome, ActionError> {
        let envelopes = parse(o.document)?;
        let global = global_tokens(cx.scope);
        check(&envelopes, &o.allow, &global)?;
        let db = self.0.db(cx.connections, &o.connection).await?;
        // Every field a column, before anything is written.
        for Placed { place, patch, .. } in placed(&envelopes) {
            let fields = patch
                .properties
                .keys()
                .chain(patch.criteria.keys())
                .chain(&patch.parent_key);
            db.check_fields(&patch.collection, fields)
                .await
                .map_err(|e| ActionError {
                    blame: e.blame,
                    message: format!(
                        "{place} ({} {}): {}; nothing was written",
                        patch.op.word(),
                        patch.collection,
                        e.message
                    ),
                    retry_after_ms: None,
                    incident: false,
                })?;
        }
        let hooked = Hooked::of(&cx, &o.connection);
        let mut written = Written {
            tokens: global.clone(),
            changes: Vec::new(),
            token_refs: true,
        };
        for Placed { patch, .. } in placed(&envelopes) {
            crate::change::refuse_hooks_in_flow_tx(&cx, hooked, &patch.collection)?;
        }
        let mut step = StepTx::begin(&db, &cx, &o.connection).await?;
        // Run again after a crash, a document that committed takes its result.
        if let Some(done) = step.tx().completed(crate::db::completion_key(&cx)).await? {
            return Ok(crate::db::recorded_with_tokens(done));
        }
        let mut out = Vec::with_capacity(envelopes.len());
        for (e, env) in envelopes.iter().enumerate() {
            let mut results = Vec::with_capacity(env.len());
            for (i, patch) in env.iter().enumerate() {
                let label = format!("envelope {}, patch {}", e + 1, i + 1);
                match apply_patch(step.tx(), &db, patch, label, None, hooked, &mut written).await {
                    Ok(v) => results.push(v),
                    Err((which, err)) => {
                        drop(step);
                        let e = envelope_failure(&which, err);
                        return Err(ActionError {
                            blame: e.blame,
                            message: e.message.replace("the envelope was", "the document was"),
                            retry_after_ms: None,
                            incident: false,
                        });
                    }
                }
            }
            let mut m = Map::with_capacity(1);
            m.insert("results".into(), Value::Array(results));
            out.push(Value::Object(m));
        }
        let tokens = set_tokens(&global, written.tokens);
        let mut payload = Map::with_capacity(2);
        payload.insert("envelopes".into(), Value::Array(out));
        payload.insert("tokens".into(), Value::Object(tokens.clone()));
        let payload = Value::Object(payload);
        step.tx()
            .complete(crate::db::completion_key(&cx), &payload)
            .await?;
        step.commit().await?;
        let logs = match hooked {
            Some(h) => h.after(written.changes).await,
            None => Vec::new(),
        };
        Ok(Outcome {
            payload: Some(payload),
            logs,
            tokens: Some(tokens),
            ..Outcome::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::resolve_tokens;
    use serde_json::json;

    fn allow() -> BTreeMap<String, Vec<PatchOp>> {
        BTreeMap::from([
            ("accounts".into(), vec![PatchOp::Create, PatchOp::Upsert]),
            ("orders".into(), vec![PatchOp::Update]),
            ("contacts".into(), vec![PatchOp::Create]),
        ])
    }

    fn checked(doc: Value) -> Result<(), String> {
        let env = parse(doc).map_err(|e| e.message)?;
        check(&env, &allow(), &Map::new()).map_err(|e| e.message)
    }

    #[test]
    fn a_good_document_passes_and_tokens_flow_forward() {
        let doc = json!({"envelopes": [
            {"patches": [{"op": "create", "collection": "accounts", "properties": {"name": "Ada"},
                          "setTokens": {"acc": "id"},
                          "children": [{"op": "create", "collection": "contacts", "parentKey": "account_id",
                                        "properties": {"email": "a@x", "owner": {"$token": "acc"}}}]}]},
            {"patches": [{"op": "upsert", "collection": "accounts", "criteria": {"id": {"$token": "acc"}},
                          "properties": {"name": "{{ not a template }}"}}]}
        ]});
        assert_eq!(checked(doc), Ok(()));
    }

    #[test]
    fn bad_documents_are_refused_with_the_patch_place() {
        for (doc, want) in [
            (json!([]), "the document: it must be an object"),
            (json!({"envelopes": [], "x": 1}), "unknown key `x`"),
            (
                json!({"envelopes": [{"patches": [{"op": "create"}]}]}),
                "envelope 1, patch 1: missing field `collection`",
            ),
            (
                json!({"envelopes": [{"patches": []}, {"patches": [{"op": "drop", "collection": "accounts"}]}]}),
                "envelope 2, patch 1: unknown variant `drop`",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "create", "collection": "users"}]}]}),
                "envelope 1, patch 1 (create users): collection `users` is not one the flow allows (it allows accounts, contacts, orders)",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "create", "collection": "accounts"}, {"op": "delete", "collection": "accounts", "criteria": {"id": 1}}]}]}),
                "envelope 1, patch 2 (delete accounts): `delete` is not allowed on `accounts` (allowed: create, upsert)",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "create", "collection": "accounts", "properties": {"owner": {"$token": "acc"}}, "setTokens": {"acc": "id"}}]}]}),
                "envelope 1, patch 1 (create accounts): field `owner` uses token `acc` before any patch sets it",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "create", "collection": "accounts", "children": [{"op": "create", "collection": "contacts", "children": [{"op": "upsert", "collection": "contacts"}]}]}]}]}),
                "envelope 1, patch 1.1.1 (upsert contacts): `upsert` is not allowed on `contacts`",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "update", "collection": "orders"}]}]}),
                "`update` needs `criteria`",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "create", "collection": "accounts", "parentKey": "x"}]}]}),
                "`parentKey` is only for child patches",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "create", "collection": "accounts", "properties": {"a": {"$token": "t", "b": 1}}}]}]}),
                "field `a`: a token reference is",
            ),
            (
                json!({"envelopes": [{"patches": [{"op": "create", "collection": "accounts", "properties": {"a": {"$token": 3}}}]}]}),
                "field `a`: `$token` must name a token, found number",
            ),
        ] {
            let got = checked(doc.clone()).expect_err(&doc.to_string());
            assert!(got.contains(want), "{doc}: {got}");
        }
    }

    #[test]
    fn token_references_are_replaced_and_other_values_kept() {
        let mut m = json!({"a": {"$token": "t"}, "b": "{{ $tokens.t }}", "c": {"x": 1}})
            .as_object()
            .cloned()
            .unwrap();
        let tokens = json!({"t": 7}).as_object().cloned().unwrap();
        resolve_tokens(&mut m, &tokens).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": 7, "b": "{{ $tokens.t }}", "c": {"x": 1}})
        );
    }
}
