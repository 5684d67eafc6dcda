//! The jq programs' tests: results, limits and the outside world.

use super::*;
use crate::MapScope;
use serde_json::json;

fn eval(code: &str, input: Value) -> Result<Option<Value>, Error> {
    let scope = MapScope::from_json(json!({"trigger": {"t": 1}, "last": [1, 2], "k": "v"}));
    let p = Program::compile(code, &scope.names()).expect("compiles");
    p.eval_json(&input, &scope, &Limits::default())
}

#[test]
fn maps_an_order() {
    let out = eval(
        "{orderId, sum: .totalPrice}",
        json!({"orderId": "A1", "totalPrice": 12.5, "x": 1}),
    );
    assert_eq!(out.unwrap(), Some(json!({"orderId": "A1", "sum": 12.5})));
}

#[test]
fn variables_are_bound_by_name() {
    assert_eq!(
        eval("[$trigger.t, $last[1], $k]", json!(null)).unwrap(),
        Some(json!([1, 2, "v"]))
    );
}

#[test]
fn a_program_keeps_only_the_variables_it_mentions() {
    let all = ["trigger", "last", "k"];
    let vars = |code: &str| {
        Program::compile(code, &all)
            .expect("compiles")
            .vars()
            .to_vec()
    };
    assert_eq!(vars(".a"), Vec::<String>::new());
    assert_eq!(vars("[$last, $k]"), ["last", "k"]);
    // In a string too, and through interpolation.
    assert_eq!(vars(r#""\($trigger.t)""#), ["trigger"]);
    // `$lastly` is another variable: undefined, still refused.
    let err = Program::compile("$lastly", &all).unwrap_err();
    assert!(err.issues[0].message.contains("$lastly"), "{err:?}");
}

#[test]
fn std_library_works() {
    assert_eq!(
        eval("[range(3)]", json!(null)).unwrap(),
        Some(json!([0, 1, 2]))
    );
    assert_eq!(
        eval("[range(5; 0; -2)]", json!(null)).unwrap(),
        Some(json!([5, 3, 1]))
    );
    assert_eq!(
        eval("[limit(3; repeat(1))]", json!(null)).unwrap(),
        Some(json!([1, 1, 1]))
    );
    assert_eq!(
        eval("[.[] | select(. > 1)] | map(. * 2)", json!([1, 2, 3])).unwrap(),
        Some(json!([4, 6]))
    );
    assert_eq!(
        eval("[paths]", json!({"a": [1]})).unwrap(),
        Some(json!([["a"], ["a", 0]]))
    );
    assert_eq!(
        eval(
            "walk(if type == \"number\" then . + 1 else . end)",
            json!({"a": [1]})
        )
        .unwrap(),
        Some(json!({"a": [2]}))
    );
    assert_eq!(
        eval("[recurse(if . < 3 then . + 1 else empty end)]", json!(0)).unwrap(),
        Some(json!([0, 1, 2, 3]))
    );
    assert_eq!(
        eval("until(. > 100; . * 2)", json!(1)).unwrap(),
        Some(json!(128))
    );
    assert_eq!(
        eval("\"a-b\" | test(\"a.b\")", json!(null)).unwrap(),
        Some(json!(true))
    );
}

#[test]
fn runtime_errors_name_the_expression() {
    let err = eval(".a + 1", json!({"a": "x"})).unwrap_err();
    assert!(
        matches!(err, Error::Runtime { ref code, .. } if code == ".a + 1"),
        "{err}"
    );
    let err = eval("error(\"boom\")", json!(null)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "jq expression `error(\"boom\")` failed: boom"
    );
}

#[test]
fn runaway_loops_stop_at_the_deadline() {
    let scope = MapScope::default();
    let limits = Limits {
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    for code in [
        "last(range(1e12))",
        "[repeat(1)] | length",
        "until(false; .)",
        "last(recurse(. + 1))",
        "reduce range(1e12) as $x (0; . + $x)",
        "try last(range(1e12)) catch 0",
    ] {
        let p = Program::compile(code, &[]).unwrap();
        let err = p.first(Val::from(0isize), &scope, &limits).unwrap_err();
        assert!(
            matches!(err, Error::Timeout { .. } | Error::TooDeep { .. }),
            "{code}: {err}"
        );
    }
}

#[test]
fn user_recursion_is_refused_at_compile_time() {
    for code in [
        "def f: 1 + f; f",
        "def f: def g: f; g; f",
        "def a(x): x | a(x); a(.)",
    ] {
        let err = Program::compile(code, &[]).unwrap_err();
        assert!(
            err.issues[0].message.contains("calls itself"),
            "{code}: {err}"
        );
    }
    assert!(Program::compile("def inc: . + 1; inc | inc", &[]).is_ok());
    // The definition the expression is compiled as is not the expression's
    // to call (it ran forever, past every deadline: found by the fuzzer).
    for code in [
        "__sluice_main",
        "1 + __sluice_main",
        "def f: __sluice_main; f",
    ] {
        let err = Program::compile(code, &[]).unwrap_err();
        assert!(
            err.issues[0].message.contains("cannot call itself"),
            "{code}: {err}"
        );
    }
}

#[test]
fn the_outside_world_is_not_reachable() {
    for code in [
        "env",
        "$ENV",
        "input",
        "inputs",
        "halt",
        "debug",
        "stderr",
        "include \"x\"; .",
        "import \"x\" as x; .",
    ] {
        assert!(Program::compile(code, &[]).is_err(), "{code} compiled");
    }
}

#[test]
fn compile_errors_point_inside_the_expression() {
    let err = Program::compile(".a | $nope", &["trigger"]).unwrap_err();
    assert_eq!(err.issues[0].span, 5..10);
    assert_eq!(err.issues[0].undefined_var.as_deref(), Some("nope"));
    let err = Program::compile("{a: }", &[]).unwrap_err();
    assert!(!err.issues.is_empty());
    let err = Program::compile("nosuchfn(1)", &[]).unwrap_err();
    assert_eq!(err.issues[0].span, 0..8);
}

#[test]
fn direct_evaluation_agrees_with_jaq() {
    let programs = [
        ".",
        ".a",
        ".a.b",
        ".[0]",
        ".[-1]",
        ".[5]",
        ".a[1].c",
        ".[\"a b\"]",
        "$k",
        "$trigger.t",
        "$last[0]",
        "$last[-3]",
        "{orderId, sum: .totalPrice}",
        "{a: .a.b, b: 1, c: null, d: true, e: \"s\\n\", $k}",
        "{}",
        "1",
        "\"x\"",
        "null",
        "false",
    ];
    let inputs = [
        json!(null),
        json!({"a": {"b": 1, "c": [1]}, "orderId": "x", "totalPrice": 2.5}),
        json!([1, 2, 3]),
        json!("str"),
        json!(3),
        json!({"a": [1, {"c": 2}]}),
        json!({"a b": 1}),
        json!({"a": "text"}),
        json!({"a": null}),
        json!({"a": {"b": 2.0}, "totalPrice": 3.0, "orderId": [1.5, 4.0]}),
        json!({"a": {"b": 18446744073709551615u64}}),
    ];
    let vars = json!({"trigger": {"t": 1.0}, "last": [1, 2.0], "k": "v"});
    let scope = MapScope::from_json(vars.clone());
    // The same variables, also at hand as JSON.
    let json_scope = JsonScope(vars);
    let limits = Limits::default();
    for code in programs {
        let p = Program::compile(code, &scope.names()).unwrap();
        assert!(p.is_direct(), "{code} should run directly");
        let slow = p.without_fast();
        for input in &inputs {
            let a = p.run(crate::to_val(input), &scope, &limits);
            let b = slow.run(crate::to_val(input), &scope, &limits);
            assert_eq!(a, b, "{code} on {input}");
            // On JSON, the direct evaluator gives what jaq gives, as JSON.
            let on_json = Input::json(input);
            let c = p.single_json(&on_json, &json_scope, &limits);
            let d = slow.single_json(&on_json, &scope, &limits);
            assert_eq!(c, d, "{code} on JSON {input}");
            // An input that is a jq value: programs that do not read
            // it still read their variables as JSON.
            let on_val = Input::val(crate::to_val(input));
            let e = p.single_json(&on_val, &json_scope, &limits);
            assert_eq!(e, d, "{code} on {input} as jq value");
        }
    }
    for code in [
        ".a?",
        ".[]",
        "{(.a): 1}",
        ".a + 1",
        "{a: .b?}",
        "1.5",
        "\"\\(.a)\"",
    ] {
        assert!(
            !Program::compile(code, &scope.names()).unwrap().is_direct(),
            "{code} should go to jaq"
        );
    }
}

/// A scope that holds its variables as JSON.
struct JsonScope(Value);

impl Scope for JsonScope {
    fn get(&self, name: &str) -> Option<Val> {
        self.0.get(name).map(crate::to_val)
    }
    fn get_json(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
}

#[test]
fn what_a_program_reads() {
    let reads = |code: &str| Program::compile(code, &["k"]).unwrap().reads_input();
    assert!(reads(".a"));
    assert!(reads("."));
    assert!(reads("{x: $k, y: .a}"));
    assert!(reads("$k + 1"), "a program jaq runs may read anything");
    assert!(!reads("$k.a"));
    assert!(!reads("{x: $k, y: 1}"));
    assert!(!reads("\"s\""));
}

#[test]
fn single_rejects_several_outputs() {
    let p = Program::compile(".[]", &[]).unwrap();
    assert!(matches!(
        p.single(
            crate::to_val(&json!([1, 2])),
            &MapScope::default(),
            &Limits::default()
        ),
        Err(Error::MultipleOutputs { .. })
    ));
    assert_eq!(
        p.single(
            crate::to_val(&json!([])),
            &MapScope::default(),
            &Limits::default()
        )
        .unwrap(),
        None
    );
}

fn run_limited(code: &str, limits: &Limits) -> Result<Option<Value>, Error> {
    let p = Program::compile(code, &[]).expect("compiles");
    p.eval_json(&json!(null), &MapScope::default(), limits)
}

#[test]
fn deep_values_are_freed_without_crashing_and_never_leave() {
    // (Unoptimised builds are slow: time is not what is tested here.)
    let limits = Limits {
        timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    // A million levels made by a fold: freed inside the evaluation (this
    // aborted the process with a stack overflow), or refused as an output.
    let code = "reduce range(200000) as $i (null; [.]) | length";
    assert_eq!(run_limited(code, &limits), Ok(Some(json!(1))));
    let err = run_limited("reduce range(200000) as $i (null; [.])", &limits).unwrap_err();
    assert!(matches!(err, Error::TooDeepValue { max: 127, .. }), "{err}");
    // As deep as a JSON body may be is fine, and reads back as JSON.
    let ok = run_limited("reduce range(127) as $i (0; [.])", &limits)
        .unwrap()
        .unwrap();
    let text = ok.to_string();
    assert!(serde_json::from_str::<Value>(&text).is_ok());
    let err = run_limited("reduce range(128) as $i (0; [.])", &limits).unwrap_err();
    assert!(matches!(err, Error::TooDeepValue { .. }), "{err}");
}

#[test]
fn a_recursion_that_builds_a_deep_value_fails_and_the_process_lives() {
    // `last(recurse([.])) | 0` aborted the process: the value it built
    // was freed on too little stack.
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let err = run_limited("last(recurse([.])) | 0", &limits).unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. } | Error::TooDeep { .. }),
        "{err}"
    );
}

#[test]
fn fromjson_refuses_text_nested_too_deep() {
    let limits = Limits::default();
    let code = r#"("[" * 100000) + ("]" * 100000) | fromjson"#;
    let err = run_limited(code, &limits).unwrap_err();
    assert!(
        err.to_string().contains("nested 100000 levels deep"),
        "{err}"
    );
    // Brackets inside strings do not count; several values still parse.
    let code = r#""[\"[[[[\", 1] {\"a\": 2}" | [fromjson]"#;
    assert_eq!(
        run_limited(code, &limits),
        Ok(Some(json!([["[[[[", 1], {"a": 2}])))
    );
    for code in [
        r#""[1," | fromjson"#,
        r#""abc" | fromjson"#,
        r#""1 x" | [fromjson]"#,
        r#""abc" | tonumber"#,
    ] {
        let err = run_limited(code, &limits).unwrap_err();
        assert!(err.to_string().contains("cannot parse"), "{code}: {err}");
    }
    assert_eq!(
        run_limited(
            r#"["12" | tonumber, ("x" | try tonumber catch "no")]"#,
            &limits
        ),
        Ok(Some(json!([12, "no"])))
    );
}

#[test]
fn string_repetition_is_checked_before_it_is_made() {
    let limits = Limits::default();
    for code in [
        r#""x" * 100000000000"#,
        r#""x" * 100000000000000000000000"#,
        r#"100000000000 * "x""#,
        r#"{"a": "x"} | .a *= 100000000000"#,
    ] {
        let err = run_limited(code, &limits).unwrap_err();
        assert!(err.to_string().contains("memory budget"), "{code}: {err}");
    }
    // Multiplication is otherwise unchanged, outputs in jaq's order.
    for (code, want) in [
        (r#""ab" * 3"#, json!("ababab")),
        (r#""ab" * 0"#, json!(null)),
        (r#""ab" * -2"#, json!(null)),
        (r#"[(1,2) * (10,20)]"#, json!([10, 20, 20, 40])),
        (
            r#"{"a":{"b":1}} * {"a":{"c":2}}"#,
            json!({"a": {"b": 1, "c": 2}}),
        ),
        (r#"[1,2] | .[] *= 3"#, json!([3, 6])),
        (r#"{"a": 2} | .a *= (3, 4)"#, json!({"a": 6})),
        (r#"2.5 * 2"#, json!(5)),
    ] {
        let got = run_limited(&format!("[{code}] | first"), &limits);
        assert_eq!(got, Ok(Some(want)), "{code}");
    }
}

#[test]
fn memory_is_bounded_inside_built_ins_and_folds() {
    let limits = Limits {
        memory: 16 << 20,
        timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    for code in [
        // The issue's reproduction, smaller: `add` is a fold.
        r#"("x" * 3000000) as $s | [$s,$s,$s,$s,$s,$s,$s,$s,$s,$s] | add | length"#,
        r#"("x" * 3000000) as $s | reduce range(10) as $i (""; . + $s) | length"#,
        r#"("x" * 1000000) as $s | [range(30) | $s + "y"] | length"#,
        // Shared parts stand for far more than they hold.
        r#"reduce range(40) as $i ([1]; [., .]) | tojson | length"#,
        r#"reduce range(40) as $i ([1]; [., .])"#,
        r#"reduce range(40) as $i ([1]; [., .]) | "\(.)" | length"#,
        r#"[range(30000) | {a: ., b: [., [.]]}] | [recurse(.[]?)]"#,
    ] {
        let err = run_limited(code, &limits).unwrap_err();
        assert!(
            matches!(err, Error::TooMuchMemory { .. }) || err.to_string().contains("memory budget"),
            "{code}: {err}"
        );
    }
    // What fits is computed.
    let code = r#"("x" * 1000000) as $s | [$s,$s,$s] | add | length"#;
    assert_eq!(run_limited(code, &limits), Ok(Some(json!(3_000_000))));
}

#[test]
fn constant_fields_read_of_a_variable_are_found_with_their_places() {
    let code = r#"$env.API + $env["REGION"] + ($env | .[$k]) + "\($env.HOST)" + {a: $env.PORT?}.a + $trigger.x"#;
    let p = Program::compile(code, &["env", "trigger", "k"]).expect("compiles");
    let found: Vec<(String, &str)> = p
        .fields_read("env")
        .into_iter()
        .map(|(f, r)| (f, &code[r]))
        .collect();
    let names: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["API", "REGION", "HOST", "PORT"]);
    assert!(found.iter().all(|(f, at)| at == f));
    assert_eq!(p.fields_read("trigger").len(), 1);
    // A program that does not read the variable reads none of its fields.
    let q = Program::compile(".a", &["env"]).expect("compiles");
    assert!(q.fields_read("env").is_empty());
}

#[test]
fn programs_compile_with_only_the_definitions_they_reach() {
    let all = prelude::std_lib().defs.len();
    for code in [
        ".a",
        "map(.qty * .price) | add",
        "[.[] | select(.ok)] | length",
        "to_entries | map(\"\\(.key)=\\(.value)\") | join(\"&\")",
        "[..] | length",
        "@base64 \"x\\(.a)\"",
        "[range(3)] | first, last",
        "[limit(2; .[])]",
        "group_by(.k) | map({k: .[0].k, n: length}) | sort_by(.n)",
        "test(\"^a\") and (ascii_downcase | startswith(\"a\"))",
        "paths(type == \"number\")",
        "walk(if type == \"string\" then ascii_upcase else . end)",
        "reduce .[] as $x (0; . + $x)",
        "try error(\"x\") catch .",
        ".a as {b: $c} | $c",
        "tostream | fromstream(.)",
        "now | todate",
        "input_line_number? // 0",
        "getpath([\"a\"]) // empty",
        "[splits(\", *\")]",
        "env.HOME? // null",
    ] {
        let Some(term) = load::parse(code, |p| p.term()) else {
            continue;
        };
        let main = guard::guard_program(term);
        let reached = prelude::std_lib().reached(&main);
        assert!(reached.len() < all, "{code}: {} of {all}", reached.len());
        let called = called_by(&main, &reached);
        let shaken = compile_with(code, Some(reached), Some(main.clone()), &[], Some(&called));
        let full = compile_with(code, None, Some(main), &[], None);
        assert_eq!(
            shaken.is_ok(),
            full.is_ok(),
            "{code}: shaken {:?}, full {:?}",
            shaken.err(),
            full.err()
        );
    }
}

#[test]
fn no_definition_of_the_library_is_a_native() {
    // A program that calls only natives is compiled without the library,
    // which is right only while no definition shadows a native.
    let natives = prelude::natives();
    let both: Vec<String> = prelude::std_lib()
        .defs
        .iter()
        .filter(|d| natives.contains(&(d.name, d.args.len())))
        .map(|d| format!("{}/{}", d.name, d.args.len()))
        .collect();
    assert!(both.is_empty(), "{both:?}");
}

#[test]
fn programs_of_natives_alone_compile_without_the_library() {
    for code in [
        ".a + .b",
        "{orderId, sum: .totalPrice}",
        "length",
        ".[0] | length",
    ] {
        let term = load::parse(code, |p| p.term()).expect("parses");
        let main = guard::guard_program(term);
        assert!(prelude::reached(&main).is_empty(), "{code}");
        let called = called_by(&main, &[]);
        assert!(
            compile_with(code, Some(Vec::new()), Some(main), &[], Some(&called)).is_ok(),
            "{code}"
        );
    }
    for code in ["add", "map(.a)", "to_entries"] {
        let term = load::parse(code, |p| p.term()).expect("parses");
        assert!(
            !prelude::reached(&guard::guard_program(term)).is_empty(),
            "{code}"
        );
    }
}

#[test]
fn sorts_and_searches_give_what_jq_gives() {
    let limits = Limits::default();
    for (code, want) in [
        (
            "[3, 1, null, \"a\", [1], {}, 2] | sort",
            json!([null, 1, 2, 3, "a", [1], {}]),
        ),
        (
            "[{a: 2, b: 1}, {a: 1, b: 2}, {a: 2, b: 3}] | sort_by(.a)",
            json!([{"a": 1, "b": 2}, {"a": 2, "b": 1}, {"a": 2, "b": 3}]),
        ),
        (
            "[{a: 2}, {a: 1}, {a: 2}] | sort_by(.a, -.a) | map(.a)",
            json!([1, 2, 2]),
        ),
        (
            "[{a: 2, b: 1}, {a: 1}, {a: 2, b: 3}] | group_by(.a) | map(length)",
            json!([1, 2]),
        ),
        ("[3, 1, 3, 2, 1] | unique", json!([1, 2, 3])),
        (
            "[\"ab\", \"c\", \"de\"] | unique_by(length)",
            json!(["c", "ab"]),
        ),
        ("[] | sort, group_by(.)", json!([])),
        ("\"a,b, cd, efg\" | indices(\", \")", json!([3, 7])),
        ("\"aaaa\" | indices(\"aa\")", json!([0, 1, 2])),
        ("\"äbcäb\" | indices(\"b\")", json!([1, 4])),
        ("\"abc\" | indices(\"\")", json!([])),
        ("[0, 1, 2, 1, 3, 1, 4] | indices(1)", json!([1, 3, 5])),
        ("[0, 1, 2, 3, 1, 2] | indices([1, 2])", json!([1, 4])),
        ("[1, 2] | indices([])", json!([])),
        (
            "\"a,b, cd, efg\" | index(\", \"), rindex(\", \") | tostring",
            json!("3"),
        ),
    ] {
        let got = run_limited(&format!("[{code}] | first"), &limits);
        assert_eq!(got, Ok(Some(want)), "{code}");
    }
    assert!(run_limited("1 | indices(1)", &limits).is_err());
    assert!(run_limited("[1, {}] | sort_by(error(\"no\"))", &limits).is_err());
}

/// A sort of a large input stops at the deadline instead of running to
/// its end (with it, the evaluation fails as out of time); so does a
/// search whose every place almost matches.
#[test]
fn sorts_stop_at_the_deadline() {
    let limits = Limits {
        timeout: Duration::from_millis(1),
        ..Limits::default()
    };
    let big = Val::Arr(std::sync::Arc::new(
        (0..2_000_000)
            .rev()
            .map(|i| Val::from(i as isize))
            .collect(),
    ));
    for code in ["sort", "sort_by(-.)", "group_by(. % 7) | length"] {
        let p = Program::compile(code, &[]).expect("compiles");
        let r = p.single(big.clone(), &MapScope::default(), &limits);
        assert!(matches!(r, Err(Error::Timeout { .. })), "{code}: {r:?}");
    }
    let code = r#"("a" * 1000000) | indices(("a" * 99999) + "b") | length"#;
    let generous = Limits {
        timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    assert_eq!(run_limited(code, &generous), Ok(Some(json!(0))));
}
