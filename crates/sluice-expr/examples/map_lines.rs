//! The jq CLI's job, done by Sluice's expression engine: read JSON lines, map
//! each with `{orderId, sum: .totalPrice}`, write compact JSON lines. For a
//! same-run comparison with `jq -c` over the file of ../shared/peers/gen_orders.py.
//!
//! cargo run --release -p sluice-expr --example map_lines -- ORDERS.jsonl > /dev/null

use sluice_expr::{Limits, MapScope, Program, from_val, to_val};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: map_lines FILE")?;
    let p = Program::compile("{orderId, sum: .totalPrice}", &[])?;
    let scope = MapScope::default();
    let limits = Limits::default();
    let input = BufReader::new(std::fs::File::open(&path)?);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let start = Instant::now();
    let mut n = 0u64;
    let mut eval_ns = 0u128;
    for line in input.lines() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let val = to_val(&v);
        let t = Instant::now();
        let r = p.single(val, &scope, &limits)?.unwrap_or_default();
        eval_ns += t.elapsed().as_nanos();
        serde_json::to_writer(&mut out, &from_val(&r)?)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    let total = start.elapsed();
    eprintln!(
        "{n} lines in {:.2} s ({:.2} µs a line, of which the mapping {:.0} ns)",
        total.as_secs_f64(),
        total.as_secs_f64() * 1e6 / n.max(1) as f64,
        eval_ns as f64 / n.max(1) as f64
    );
    Ok(())
}
