//! A `script` call next to the same computation in jq, in the same run:
//! an order's total from its items. A script call makes a QuickJS runtime
//! of its own, parses its code and the data, runs and gives JSON back.
//! Run: `cargo bench -p sluice-script --bench call`.

use divan::{Bencher, black_box};
use serde_json::json;
use sluice_expr::{Limits, MapScope, Program};

/// The allocator the `sluice` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

fn order() -> serde_json::Value {
    json!({"orderId": "A-1001", "currency": "EUR",
        "items": [{"sku": "PEN-1", "qty": 2, "price": 1.25}, {"sku": "BOOK-9", "qty": 1, "price": 40}]})
}

const CODE: &str = "module.exports = function (data) {\n  return { orderId: data.orderId, total: data.items.reduce((s, i) => s + i.qty * i.price, 0) };\n};";

/// A call as the step makes it: the script compiled once, a runtime each.
#[divan::bench(sample_size = 200)]
fn script_call(b: Bencher) {
    let compiled = sluice_script::compile(CODE).unwrap();
    let data = order().to_string();
    b.bench_local(|| black_box(sluice_script::call(&compiled, black_box(&data)).unwrap()));
}

/// Compiling the script as well.
#[divan::bench(sample_size = 200)]
fn script_compile_and_call(b: Bencher) {
    let data = order().to_string();
    b.bench_local(|| {
        let compiled = sluice_script::compile(black_box(CODE)).unwrap();
        black_box(sluice_script::call(&compiled, black_box(&data)).unwrap())
    });
}

#[divan::bench(sample_size = 2000)]
fn jq_same_computation(b: Bencher) {
    let p = Program::compile("{orderId, total: ([.items[] | .qty * .price] | add)}", &[]).unwrap();
    let input = order();
    let scope = MapScope::default();
    let limits = Limits::default();
    b.bench_local(|| black_box(p.eval_json(black_box(&input), &scope, &limits).unwrap()));
}
