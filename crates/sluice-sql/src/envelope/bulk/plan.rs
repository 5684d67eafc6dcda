//! Which flows an import can write in batches: every write in an envelope,
//! every envelope through one connection; and when chunks may overlap.

use serde_json::Value;
use sluice_expr::TemplateValue;
use sluice_model::{Flow, Step};

/// Step types that write outside an envelope.
const WRITERS: &[&str] = &[
    "sql.create",
    "sql.update",
    "sql.upsert",
    "sql.delete",
    "sql.link",
    "sql.unlink",
    "sql.assertOption",
];

/// The value of option `key` when it is written out (not templated).
fn literal<'a>(options: &'a TemplateValue, key: &str) -> Result<Option<&'a Value>, ()> {
    match options {
        TemplateValue::Const(Value::Object(m)) => Ok(m.get(key)),
        TemplateValue::Object(fields) => match fields.iter().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, TemplateValue::Const(v))) => Ok(Some(v)),
            Some(_) => Err(()),
        },
        _ => Ok(None),
    }
}

/// The connection the flow's envelopes write through, after checking that
/// nothing else writes: why not, otherwise.
pub(super) fn connection(flow: &Flow) -> Result<Option<String>, String> {
    let mut found: Option<String> = None;
    for step in &flow.steps {
        if WRITERS.contains(&step.kind.as_str()) {
            return Err(format!(
                "step `{}` ({}) writes outside an envelope; in an import every write goes through an `envelope` step, so that each record lands whole and exactly once (an envelope with one patch does what this step does)",
                step.key, step.kind
            ));
        }
        if step.kind == "sql.query"
            && literal(&step.options, "mode").ok().flatten() == Some(&Value::from("statement"))
        {
            return Err(format!(
                "step `{}` (sql.query) runs a statement; in an import every write goes through an `envelope` step",
                step.key
            ));
        }
        if step.kind == "envelope"
            && step
                .deferred
                .get("patches")
                .is_some_and(|(raw, _)| sluice_model::calls_an_api(raw))
        {
            return Err(format!(
                "envelope `{}` calls an API; an import writes its records' envelopes in chunks, and a call cannot be undone with a chunk",
                step.key
            ));
        }
        if step.kind == "envelope" {
            let conn = match literal(&step.options, "connection") {
                Ok(Some(Value::String(c))) => c.clone(),
                _ => {
                    return Err(format!(
                        "envelope `{}`: in an import the connection is written out, not templated",
                        step.key
                    ));
                }
            };
            match &found {
                Some(c) if *c != conn => {
                    return Err(format!(
                        "envelope `{}` writes through `{conn}` and another through `{c}`; an import writes through one connection, so that each chunk commits in one transaction",
                        step.key
                    ));
                }
                _ => found = Some(conn),
            }
        }
    }
    Ok(found)
}

/// Whether a chunk may be written while the chunk before it commits (and,
/// kept apart position by position, while it writes: see `pipe`), in a
/// transaction of its own, with the same result as after that commit:
///
/// * a record's run hands over one envelope at most, so that once its chunk
///   has been written, nothing of the chunk writes again (else the chunk
///   before could wait on a row of the next one, which waits for its
///   commit): one `envelope` step without `retry` (flows have no cycles),
///   and no step that can run the steps after it more than once (`split`,
///   `emitIndividually`, a `mode` that is templated) or another flow;
/// * its patches only create (written out `op: create`, children too): an
///   insert that meets a key the chunk before inserted waits for that
///   commit and fails as it would after it, where an update or upsert would
///   not see the uncommitted row.
///
/// A foreign key to a row of the chunk before does not see it before that
/// commit either: a chunk's first write that fails while the chunk before
/// has not committed is made again once it has (the batch hands its
/// envelopes back), so that every failure is the one it would be after it.
pub(super) fn overlaps(flow: &Flow) -> bool {
    fn creates(patches: &Value) -> bool {
        patches.as_array().is_some_and(|a| {
            a.iter().all(|p| {
                p.get("op") == Some(&Value::from("create")) && p.get("children").is_none_or(creates)
            })
        })
    }
    let mut envelopes = flow.steps.iter().filter(|s| s.kind == "envelope");
    let one = envelopes
        .next()
        .is_some_and(|s| s.retry.is_none() && written_patches(s).is_some_and(creates))
        && envelopes.next().is_none();
    one && flow.steps.iter().all(|s| {
        !matches!(s.kind.as_str(), "split" | "flow")
            && match literal(&s.options, "mode") {
                Err(()) => false,
                Ok(mode) => mode != Some(&Value::from("emitIndividually")),
            }
    })
}

/// The positions an envelope of `flow` writes, in the order a chunk writes
/// them (a patch, then its children, then the next patch), each with the
/// collection it writes; `None` when a collection is templated or the
/// patches are not written out. Only for flows whose chunks overlap.
pub(super) fn positions(flow: &Flow) -> Option<Vec<(Vec<usize>, String)>> {
    fn walk(patches: &Value, at: &mut Vec<usize>, out: &mut Vec<(Vec<usize>, String)>) -> bool {
        let Some(a) = patches.as_array() else {
            return false;
        };
        for (i, p) in a.iter().enumerate() {
            at.push(i);
            let ok = match p.get("collection") {
                Some(Value::String(c)) if !c.contains("{{") => {
                    out.push((at.clone(), c.clone()));
                    p.get("children").is_none_or(|c| walk(c, at, out))
                }
                _ => false,
            };
            at.pop();
            if !ok {
                return false;
            }
        }
        true
    }
    let step = flow.steps.iter().find(|s| s.kind == "envelope")?;
    let mut out = Vec::new();
    walk(written_patches(step)?, &mut Vec::new(), &mut out).then_some(out)
}

/// The patches of envelope step `step` as the flow writes them out (`None`:
/// they are templated as a whole).
fn written_patches(step: &Step) -> Option<&Value> {
    match step.deferred.get("patches") {
        Some((written, _)) => Some(written),
        None => literal(&step.options, "patches").ok().flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::{overlaps, positions};

    fn flow(patches: &str, more: &str) -> sluice_model::Flow {
        let text = format!(
            "id: t\nconnections:\n  db: {{url: \"sqlite::memory:\"}}\nsteps:\n  - key: write\n    type: envelope\n    options:\n      connection: db\n      patches: {patches}\n{more}"
        );
        sluice_model::load("t.yaml", &text, &crate::registry()).unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn chunks_overlap_only_when_a_record_can_only_create_once() {
        let create = r#"[{op: create, collection: a, properties: {x: "{{ .x }}"}, children: [{op: create, collection: b, parentKey: a_id}]}]"#;
        assert!(overlaps(&flow(create, "")));
        // An update would not see the rows the chunk before has not committed.
        let update =
            r#"[{op: create, collection: a}, {op: update, collection: a, criteria: {id: 1}}]"#;
        assert!(!overlaps(&flow(update, "")));
        let child_upsert = r#"[{op: create, collection: a, children: [{op: upsert, collection: b, criteria: {id: 1}}]}]"#;
        assert!(!overlaps(&flow(child_upsert, "")));
        let templated_op = r#"[{op: "{{ .op }}", collection: a}]"#;
        assert!(!overlaps(&flow(templated_op, "")));
        // A retry, a second envelope or a fan-out can write again.
        assert!(!overlaps(&flow(create, "    retry: {attempts: 3}\n")));
        let second = "  - key: again\n    type: envelope\n    options: {connection: db, patches: [{op: create, collection: c}]}\n";
        assert!(!overlaps(&flow(create, second)));
        let split = "  - key: each\n    type: split\n    options: {items: [1, 2]}\n";
        assert!(!overlaps(&flow(create, split)));
    }

    #[test]
    fn positions_are_listed_in_the_order_a_chunk_writes_them() {
        let p = r#"[{op: create, collection: a, children: [{op: create, collection: b, parentKey: a_id}, {op: create, collection: c, parentKey: a_id}]}, {op: create, collection: a}]"#;
        let got = positions(&flow(p, "")).unwrap_or_default();
        let want: Vec<(Vec<usize>, String)> = vec![
            (vec![0], "a".into()),
            (vec![0, 0], "b".into()),
            (vec![0, 1], "c".into()),
            (vec![1], "a".into()),
        ];
        assert_eq!(got, want);
        let templated = r#"[{op: create, collection: "{{ .table }}"}]"#;
        assert_eq!(positions(&flow(templated, "")), None);
    }
}
