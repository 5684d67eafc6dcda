//! The jq mapping `{orderId, sum: .totalPrice}` on one parsed order, as the
//! engine evaluates it: compiled once, run with the flow object bound.
//! Goal: under 1 µs. Run: `cargo bench -p sluice-expr --bench mapping`.

use divan::{Bencher, black_box};
use serde_json::json;
use sluice_expr::{Limits, MapScope, Program, TemplateValue, to_val};

/// The allocator the `sluice` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

fn order() -> serde_json::Value {
    json!({
        "orderId": "A-1001", "totalPrice": 42.5, "currency": "EUR",
        "items": [{"sku": "PEN-1", "qty": 2, "price": 1.25}, {"sku": "BOOK-9", "qty": 1, "price": 40}]
    })
}

/// The mapping on a parsed value (jaq's own value type), output kept as jq value.
#[divan::bench(sample_size = 2000)]
fn jq_mapping_on_parsed_value(bencher: Bencher) {
    let scope = MapScope::from_json(json!({"trigger": {}, "last": null, "accountability": null}));
    let p = Program::compile(
        "{orderId, sum: .totalPrice}",
        &["trigger", "last", "accountability"],
    )
    .unwrap();
    let input = to_val(&order());
    let limits = Limits::default();
    bencher.bench_local(|| {
        black_box(p.single(black_box(input.clone()), &scope, &limits).unwrap());
    });
}

/// The same, from and to serde_json values (what a step's options go through).
#[divan::bench(sample_size = 2000)]
fn jq_mapping_json_in_json_out(bencher: Bencher) {
    let scope = MapScope::default();
    let p = Program::compile("{orderId, sum: .totalPrice}", &[]).unwrap();
    let input = order();
    let limits = Limits::default();
    bencher.bench_local(|| {
        black_box(p.eval_json(black_box(&input), &scope, &limits).unwrap());
    });
}

/// A templated option value with two templates, rendered.
#[divan::bench(sample_size = 2000)]
fn template_render(bencher: Bencher) {
    let scope = MapScope::default();
    let t = TemplateValue::compile(
        &json!({"orderId": "{{ .orderId }}", "sum": "{{ .totalPrice }}"}),
        &[],
    )
    .unwrap();
    let order = order();
    let input = sluice_expr::Input::json(&order);
    let limits = Limits::default();
    bencher.bench_local(|| {
        black_box(t.render(black_box(&input), &scope, &limits).unwrap());
    });
}

#[divan::bench(sample_size = 2000, args = [".", ".orderId", "{a: 1}", "{orderId}", "{orderId, sum: .totalPrice}", "1 + 1"])]
fn probe(bencher: Bencher, code: &str) {
    let scope = MapScope::default();
    let p = Program::compile(code, &[]).unwrap();
    let input = to_val(&order());
    let limits = Limits::default();
    bencher.bench_local(|| {
        black_box(p.first(black_box(input.clone()), &scope, &limits).unwrap());
    });
}

/// Compiling a template's program, as loading a flow does for each one
/// (only the standard library's definitions it reaches are compiled).
#[divan::bench(args = ["{orderId, sum: .totalPrice}", "[.items[] | select(.qty > 1) | .sku] | join(\", \")", "to_entries | map(\"\\(.key)=\\(.value)\") | join(\"&\")"])]
fn compile_program(bencher: Bencher, code: &str) {
    bencher
        .bench(|| Program::compile(black_box(code), &["trigger", "last"]).map(|p| p.is_direct()));
}
