//! What `sluice run` reads and checks before a run starts: the flow
//! file, its input and its event, each refused with a clear error and exit
//! code 2 when it is not what the run needs.

use crate::{INVALID, load_flow, registry, reported};
use serde_json::Value;
use sluice_action::Registry;
use sluice_expr::Val;
use sluice_model::Flow;
use std::sync::Arc;

/// What `sluice run` reads before it runs: the flow, checked, its input
/// and its event.
pub(crate) type Prepared = (Arc<Registry>, Flow, Option<Val>, Option<Value>);

/// The flow at `path` (loaded, checked, enabled), the JSON of `--input`
/// and of `--event` (a CloudEvent that starts it): an exit code when one
/// of them is not what the run needs, the error printed.
pub(crate) fn prepare_run(
    path: &str,
    input: Option<&str>,
    event: Option<&str>,
) -> Result<Prepared, u8> {
    let registry = Arc::new(registry());
    let flow = reported(load_flow(path, &registry))?;
    enabled(&flow, path)?;
    // Read as webhook bodies are (keys kept once): the tree of a large
    // input is what a run's memory is made of.
    let input: Option<Val> = match read_input(input, |r| sluice_expr::data::parse_reader(r)) {
        Ok(i) => i,
        Err(m) => {
            eprintln!("error: {m}");
            return Err(INVALID);
        }
    };
    let event: Option<Value> = match read_input(event, |r| {
        serde_json::from_reader(std::io::BufReader::new(r))
    }) {
        Ok(e) => e,
        Err(m) => {
            eprintln!("error: {}", m.replace("the input", "the event"));
            return Err(INVALID);
        }
    };
    if event.is_none()
        && let Some(step) = flow
            .steps
            .iter()
            .find(|s| s.event_filter.is_some() && s.kind != "wait")
    {
        eprintln!(
            "error: step `{}` of flow `{}` consumes the event that starts the run; give one with --event FILE",
            step.key, flow.id
        );
        return Err(INVALID);
    }
    let mut event = event;
    if let Some(ev) = &mut event {
        if let Err(m) = sluice_action::core_ops::check_cloudevent(ev)
            .and_then(|()| sluice_action::core_ops::decode_cloudevent_data(ev))
        {
            eprintln!("error: --event: {m}");
            return Err(INVALID);
        }
        if !sluice_model::EVENT_TRIGGERS.contains(&flow.trigger.kind.as_str()) {
            eprintln!(
                "error: flow `{}` has a `{}` trigger; --event needs an event trigger ({})",
                flow.id,
                flow.trigger.kind,
                sluice_model::EVENT_TRIGGERS.join(", ")
            );
            return Err(INVALID);
        }
        if let Some(why) =
            sluice_action::core_ops::CloudEventTrigger::mismatch(&flow.trigger.options, ev)
        {
            eprintln!("error: the event does not start flow `{}`: {why}", flow.id);
            return Err(INVALID);
        }
    }
    Ok((registry, flow, input, event))
}

/// A disabled flow is not run from the command line either.
pub(crate) fn enabled(flow: &Flow, path: &str) -> Result<(), u8> {
    if flow.enabled {
        return Ok(());
    }
    eprintln!(
        "error: flow `{}` is disabled (`enabled: false` in {path}); set `enabled: true` to run it",
        flow.id
    );
    Err(INVALID)
}

/// The JSON of `--input FILE` (or `-`, standard input), read by `parse`
/// as it comes (the text is not held whole).
pub(crate) fn read_input<T>(
    input: Option<&str>,
    parse: impl FnOnce(&mut dyn std::io::Read) -> serde_json::Result<T>,
) -> Result<Option<T>, String> {
    let Some(src) = input else { return Ok(None) };
    let (name, parsed) = if src == "-" {
        ("<stdin>".to_owned(), parse(&mut std::io::stdin().lock()))
    } else {
        let mut file =
            std::fs::File::open(src).map_err(|e| format!("cannot read input file `{src}`: {e}"))?;
        (src.to_owned(), parse(&mut file))
    };
    parsed.map(Some).map_err(|e| {
        if e.is_io() {
            return format!("cannot read the input from {name}: {e}");
        }
        format!(
            "{name}:{}:{}: the input is not valid JSON: {} (expected one JSON value, such as an object)",
            e.line(),
            e.column(),
            strip_position(&e.to_string())
        )
    })
}

fn strip_position(msg: &str) -> &str {
    msg.split(" at line ").next().unwrap_or(msg)
}
