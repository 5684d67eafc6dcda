//! The batch's own tests: what a failure names, how groups shrink, what an
//! insert returns, a child's fields, lean patches and shapes.

use super::*;
use serde_json::json;

fn patch(v: Value) -> Patch {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_failure_names_its_key_and_patch() {
    let dup = "step failed: patch 1 (create customers) failed: postgres://u@h/db: error returned from database: duplicate key value violates unique constraint \"c_key\" (Key (external_id)=(C-9) already exists.)";
    assert_eq!(named_key(dup), Some(("external_id", "C-9")));
    let fk = "... (Key (customer_id)=(12) is not present in table \"customers\".)";
    assert_eq!(named_key(fk), Some(("customer_id", "12")));
    // A value with parentheses in it: up to the first ending.
    let odd = "x (Key (name)=(a) b (c)) already exists.)";
    assert_eq!(named_key(odd), Some(("name", "a) b (c)")));
    // Two columns, or no detail: nothing named.
    assert_eq!(named_key("(Key (a, b)=(1, 2) already exists.)"), None);
    assert_eq!(named_key("UNIQUE constraint failed: t.email"), None);
    let check = "... violates check constraint \"orders_total_check\" (Failing row contains (7, 3, SO-5, -1.00, EUR).)";
    assert_eq!(
        named(check),
        Some(Named::Row(vec!["7", "3", "SO-5", "-1.00", "EUR"]))
    );
    assert_eq!(named(dup), Some(Named::Key("external_id", "C-9")));
    assert_eq!(label(&[1]), "patch 2");
    assert_eq!(label(&[0, 0]), "patch 1.1");
    assert_eq!(label(&[9, 1, 0]), "patch 10.2.1");
}

/// Record `record`'s envelope, waiting with `patches` made alike as `shapes` say.
fn waiting(record: u64, patches: Vec<Pending>, shapes: Vec<Shape>) -> Waiting {
    Waiting {
        record,
        patches,
        shapes,
        input: Input::json(&Value::Null),
        scope: MapScope(BTreeMap::new()),
        global: Map::new(),
        results_read: false,
        reply: None,
    }
}

#[test]
fn the_suspect_is_the_record_with_the_named_key() {
    let job = |record: u64, id: &str| {
        let patches = vec![
            Pending::Ready(patch(json!({
                "op": "create", "collection": "customers",
                "properties": {"external_id": id},
                "children": [{"op": "create", "collection": "contacts", "properties": {"phone": id}}]
            }))),
            // Its customer's id comes from `$tokens`: unknown until written.
            Pending::Holes(
                patch(json!({
                    "op": "create", "collection": "orders",
                    "properties": {"customer_id": null, "number": format!("SO-{record}")}
                })),
                vec![Hole {
                    criteria: false,
                    key: "customer_id".into(),
                    value: TemplateValue::Const(Value::Null),
                }],
            ),
        ];
        waiting(record, patches, Vec::new())
    };
    let jobs = vec![job(1, "C-1"), job(2, "C-2"), job(3, "C-3"), job(4, "C-2")];
    let no_layouts = Layouts::new();
    let named = |at: &[usize], detail: String| Fail {
        error: ActionError::data(format!("... ({detail})")),
        patch: label(at),
        at: at.to_vec(),
    };
    let failed = |at: &[usize], key: &str| named(at, format!("Key {key} already exists."));
    // Taken before the group: the only record with it.
    let f = failed(&[0], "(external_id)=(C-3)");
    assert_eq!(suspect(&f, &jobs, &no_layouts), Some(2));
    // Twice in the group: the second found it taken.
    let f = failed(&[0], "(external_id)=(C-2)");
    assert_eq!(suspect(&f, &jobs, &no_layouts), Some(3));
    // A child's field.
    let f = failed(&[0, 0], "(phone)=(C-1)");
    assert_eq!(suspect(&f, &jobs, &no_layouts), Some(0));
    // A row: the first record whose values are all in it.
    let row = |at: &[usize], cells: &str| named(at, format!("Failing row contains ({cells})."));
    assert_eq!(
        suspect(&row(&[0], "9, C-2, x"), &jobs, &no_layouts),
        Some(1)
    );
    assert_eq!(suspect(&row(&[0], "9, C-7, x"), &jobs, &no_layouts), None);
    let f = row(&[1], "5, 12, SO-3");
    assert_eq!(
        suspect(&f, &jobs, &no_layouts),
        Some(2),
        "the hole is not compared"
    );
    // No record has it, no such patch, no key named: halves instead.
    let f = failed(&[0], "(external_id)=(C-9)");
    assert_eq!(suspect(&f, &jobs, &no_layouts), None);
    let f = failed(&[1], "(external_id)=(C-1)");
    assert_eq!(suspect(&f, &jobs, &no_layouts), None);
    let f = failed(&[2], "(external_id)=(C-1)");
    assert_eq!(suspect(&f, &jobs, &no_layouts), None);
    let f = Fail {
        error: ActionError::data("CHECK constraint failed"),
        patch: label(&[0]),
        at: vec![0],
    };
    assert_eq!(suspect(&f, &jobs, &no_layouts), None);
}

#[test]
fn groups_shrink_as_records_are_refused() {
    let (lite, pg) = (Backend::Sqlite, Backend::Postgres);
    // None refused yet: the whole chunk at once.
    assert_eq!(group_size(500, 0, 0, lite), 500);
    assert_eq!(group_size(500, 10_000, 0, pg), 500);
    // One in a hundred: groups of some tens; one in ten thousand: hundreds
    // (on PostgreSQL, where a group costs more, the whole chunk).
    assert_eq!(group_size(500, 10_000, 100, lite), 17);
    assert_eq!(group_size(500, 10_000, 100, pg), 63);
    assert_eq!(group_size(500, 100_000, 10, lite), 173);
    assert_eq!(group_size(500, 100_000, 10, pg), 500);
    // Never fewer than eight, never more than the chunk...
    assert_eq!(group_size(500, 100, 30, lite), 8);
    assert_eq!(group_size(100, 1_000_000, 1, lite), 100);
    // ...but one at a time once more than a third were refused.
    assert_eq!(group_size(500, 100, 33, pg), 11);
    assert_eq!(group_size(500, 100, 34, pg), 1);
    assert_eq!(group_size(500, 100, 50, lite), 1);
    assert_eq!(group_size(500, 20_000, 20_000, pg), 1);
    assert_eq!(group_size(0, 0, 0, pg), 1);
}

#[test]
fn an_insert_returns_only_what_the_writer_reads() {
    let t = Table {
        cols: [("id", "integer"), ("name", "text"), ("code", "text")]
            .into_iter()
            .map(|(c, ty)| (c.to_owned(), ty.to_owned()))
            .collect(),
        pk: vec!["id".to_owned()],
    };
    let plain = patch(json!({"op": "create", "collection": "t", "properties": {"name": "a"}}));
    let tokens = patch(
        json!({"op": "create", "collection": "t", "properties": {}, "setTokens": {"c": "code"}}),
    );
    let parent = patch(json!({"op": "create", "collection": "t", "properties": {},
        "children": [{"op": "create", "collection": "u", "parentKey": "t_id", "properties": {}}]}));
    // Nothing is read: the insert returns no rows.
    assert!(writer_reads(&t, [&plain, &plain].into_iter().map(PatchRef::Full)).is_empty());
    // A token's field, and the key to match the rows.
    let read: Vec<&str> = writer_reads(&t, [&plain, &tokens].into_iter().map(PatchRef::Full))
        .into_iter()
        .collect();
    assert_eq!(read, ["code", "id"]);
    // Children take their parent's key.
    let read: Vec<&str> = writer_reads(&t, [&parent].into_iter().map(PatchRef::Full))
        .into_iter()
        .collect();
    assert_eq!(read, ["id"]);
}

#[test]
fn a_childs_fields_hold_its_parents_key() {
    let props = json!({"name": "a", "customer_id": 0, "phone": "1"});
    let props = props.as_object().unwrap();
    let (key, id) = ("customer_id".to_owned(), json!(7));
    let other = "parent".to_owned();
    // Named among the properties: in its place, with the parent's key.
    let f = Fields::new(Props::Map(props), Some((&key, &id)));
    assert_eq!(
        f.keys().collect::<Vec<_>>(),
        ["name", "customer_id", "phone"]
    );
    assert_eq!(
        f.values().collect::<Vec<_>>(),
        [&json!("a"), &id, &json!("1")]
    );
    assert_eq!(
        (f.len(), f.get("customer_id"), f.get("name")),
        (3, Some(&id), Some(&json!("a")))
    );
    assert_eq!(f.to_map().get("customer_id"), Some(&id));
    // Not named: after them.
    let f = Fields::new(Props::Map(props), Some((&other, &id)));
    assert_eq!(
        f.keys().collect::<Vec<_>>(),
        ["name", "customer_id", "phone", "parent"]
    );
    assert_eq!(f.values().last(), Some(&id));
    assert_eq!(
        (f.len(), f.get("parent"), f.get("customer_id")),
        (4, Some(&id), Some(&json!(0)))
    );
    assert_eq!(
        f.to_map().keys().next_back().map(String::as_str),
        Some("parent")
    );
    // No parent: the properties as they are.
    let f = Fields::new(Props::Map(props), None);
    assert!(matches!(f.to_map(), Cow::Borrowed(_)));
    assert_eq!((f.len(), f.is_empty()), (3, false));
    let mut out = Vec::new();
    let keys: Vec<&String> = props.keys().rev().collect();
    values_of(f, &keys, false, &mut out);
    assert_eq!(out, [Some(&json!("1")), Some(&json!(0)), Some(&json!("a"))]);
}

#[test]
fn patches_made_alike_are_told_apart_from_others() {
    let (a, b) = (
        TemplateValue::Const(json!(1)),
        TemplateValue::Const(json!(2)),
    );
    let (sa, sb) = (Shape::of(&a), Shape::of(&b));
    assert!(sa.alike(Shape::of(&a)) && !sa.alike(sb));
    assert!(!Shape::NONE.alike(Shape::NONE), "unknown is never alike");
    // Children: by their place, at every depth.
    assert!(sa.child(0).alike(sa.child(0)));
    assert!(!sa.child(0).alike(sa.child(1)) && !sa.child(0).alike(sa));
    assert!(!sa.child(0).child(0).alike(sa.child(0)));
    assert!(!sa.child(0).alike(sb.child(0)));
    assert_eq!(Shape::NONE.child(0), Shape::NONE);
    // Past what the path holds: unknown.
    assert_eq!(sa.child(15), Shape::NONE);
    let mut deep = sa;
    for _ in 0..15 {
        deep = deep.child(14);
    }
    assert!(deep.alike(deep) && !deep.alike(sa));
    assert_eq!(deep.child(0), Shape::NONE);
}

#[test]
fn an_insert_that_returns_no_rows_must_have_made_them_all() {
    assert_eq!(unread(2, 2).map(|r| r.len()).ok(), Some(2));
    assert!(unread(1, 2).is_err());
}

#[test]
fn a_lean_patch_reads_as_the_patch_its_template_makes() {
    // Criteria before properties, a hole, a constant, a number, a child.
    let template = json!({
        "op": "upsert", "collection": "customers",
        "criteria": {"external_id": "{{ .id }}"},
        "properties": {"name": "{{ .name }}", "plan": "basic", "owner": "{{ $tokens.user }}", "n": "{{ .n }}"},
        "setTokens": {"customer": "id"},
        "children": [{"op": "create", "collection": "contacts", "parentKey": "customer_id",
                      "properties": {"email": "{{ .email }}", "kind": "{{ .kinds[0] }}"}}]
    });
    let tv = TemplateValue::compile(&template, &["tokens"]).unwrap();
    let record = json!({"id": "C-1", "name": "Ann", "n": 2.0, "email": "a@x", "kinds": ["main"]});
    let mut holes = Vec::new();
    let full = with_cx(&record, |cx| build(0, &tv, cx, &mut holes)).unwrap();
    let layout = Layout::of(&tv, true).expect("the usual shape has a layout");
    let (mut kept, mut reads_input) = (MapScope::default(), false);
    let lean = with_cx(&record, |cx| {
        Lean::build(&tv, cx, &mut kept, &mut reads_input)
    })
    .unwrap();
    let (a, b) = (PatchRef::Full(&full), PatchRef::Lean(&lean, &layout));
    assert_eq!((a.op(), a.collection()), (b.op(), b.collection()));
    fn pairs(p: Props<'_>) -> Vec<(&String, &Value)> {
        p.iter().collect()
    }
    for (x, y) in [(a, b), (a.child(0).unwrap(), b.child(0).unwrap())] {
        assert_eq!(pairs(x.properties()), pairs(y.properties()));
        assert_eq!(pairs(x.criteria()), pairs(y.criteria()));
        assert_eq!(x.properties().to_map(), y.properties().to_map());
        assert_eq!(
            (x.set_tokens(), x.parent_key()),
            (y.set_tokens(), y.parent_key())
        );
        assert_eq!(x.children(), y.children());
    }
    assert_eq!(b.properties().get("n"), Some(&json!(2)));
    assert_eq!(
        b.child(0).and_then(|c| c.properties().get("kind")),
        Some(&json!("main"))
    );
    assert!(b.child(1).is_none());
    // The hole: null in its place until written, and the same template.
    assert_eq!(b.properties().get("owner"), Some(&Value::Null));
    assert_eq!(holes.len(), 1);
    assert_eq!(
        layout.holes.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
        [2]
    );
    assert!(!reads_input, "`$tokens.user` does not read the input");
    // Not the usual shape, or a child written out: no layout.
    for other in [
        json!({"op": "create", "collection": "{{ .table }}", "properties": {"a": 1}}),
        json!({"op": "create", "collection": "t", "properties": {"a": "{{ .a }}"},
               "children": [{"op": "create", "collection": "u", "properties": {"b": 1}}]}),
    ] {
        let tv = TemplateValue::compile(&other, &["tokens"]).unwrap();
        assert!(Layout::of(&tv, true).is_none(), "{other}");
    }
}

/// `f` of the context of a step whose input is `record` (nothing else).
fn with_cx<R>(record: &Value, f: impl FnOnce(&sluice_action::ActionCx<'_>) -> R) -> R {
    let input = Input::json(record);
    let (scope, limits, deferred) = (MapScope::default(), Limits::default(), BTreeMap::new());
    let (connections, expressions) = (BTreeMap::new(), BTreeMap::new());
    let cx = sluice_action::ActionCx {
        run_id: "r",
        step_key: "write",
        program_input: &input,
        scope: &scope,
        expressions: &expressions,
        limits: &limits,
        connections: &connections,
        deferred: &deferred,
        batch: None,
        wake: None,
        attempt: 1,
        idempotency_key: "",
        hooks: None,
        flow_tx: None,
        calls: None,
        inbox: None,
    };
    f(&cx)
}

/// Record `record`'s lean patch from template `t`.
fn lean(t: &TemplateValue, record: &Value) -> Lean {
    let (mut kept, mut reads_input) = (MapScope::default(), false);
    with_cx(record, |cx| Lean::build(t, cx, &mut kept, &mut reads_input)).unwrap()
}

#[test]
fn the_suspect_among_lean_patches_is_found_by_their_values_but_holes() {
    let patches = TemplateValue::compile(
        &json!([
            {"op": "create", "collection": "customers", "properties": {"external_id": "{{ .id }}"},
             "children": [{"op": "create", "collection": "contacts", "properties": {"phone": "{{ .id }}"}}]},
            {"op": "create", "collection": "orders",
             "properties": {"customer_id": "{{ $tokens.customer }}", "number": "{{ .number }}"}}
        ]),
        &["tokens"],
    )
    .unwrap();
    let TemplateValue::Array(items) = &patches else {
        panic!("a list of patches");
    };
    let layouts: Layouts = items
        .iter()
        .map(|t| (Shape::of(t), Layout::of(t, true).map(Arc::new)))
        .collect();
    assert!(layouts.iter().all(|(_, l)| l.is_some()));
    let job = |record: u64, id: &str| {
        let data = json!({"id": id, "number": format!("SO-{record}")});
        let patches = items.iter().map(|t| Pending::Lean(lean(t, &data)));
        waiting(
            record,
            patches.collect(),
            items.iter().map(Shape::of).collect(),
        )
    };
    let jobs = vec![job(1, "C-1"), job(2, "C-2"), job(3, "C-3"), job(4, "C-2")];
    let named = |at: &[usize], detail: &str| Fail {
        error: ActionError::data(format!("... ({detail})")),
        patch: label(at),
        at: at.to_vec(),
    };
    let key = |at: &[usize], k: &str| named(at, &format!("Key {k} already exists."));
    assert_eq!(
        suspect(&key(&[0], "(external_id)=(C-3)"), &jobs, &layouts),
        Some(2)
    );
    assert_eq!(
        suspect(&key(&[0], "(external_id)=(C-2)"), &jobs, &layouts),
        Some(3)
    );
    assert_eq!(
        suspect(&key(&[0, 0], "(phone)=(C-1)"), &jobs, &layouts),
        Some(0)
    );
    // The order's customer is a hole (null until written): not compared.
    let row = named(&[1], "Failing row contains (5, 12, SO-3).");
    assert_eq!(suspect(&row, &jobs, &layouts), Some(2));
    // Without the layouts, a lean patch is never the suspect.
    assert_eq!(suspect(&row, &jobs, &Layouts::new()), None);
}
