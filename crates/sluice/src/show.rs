//! Readable text for runs: tables and step data.

use sluice_store::{RunDetail, RunFilter, RunStatus, RunSummary, Store};
use std::fmt::Write;

/// `2026-11-23T08:55:31.123Z` from microseconds since the epoch.
pub fn timestamp(us: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| us.to_string())
}

/// A duration in readable units.
pub fn duration(us: i64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(&c);
            } else {
                let pad = widths[i] - c.chars().count();
                out.push_str(&c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

/// The table of `sluice runs list`.
pub fn runs_table(runs: &[RunSummary]) -> String {
    if runs.is_empty() {
        return "no runs\n".to_owned();
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.flow_id.clone(),
                r.status.as_str().to_owned(),
                timestamp(r.started_at),
                r.ended_at
                    .map(|e| duration(e - r.started_at))
                    .unwrap_or_else(|| "-".into()),
                r.steps.to_string(),
                r.error
                    .as_deref()
                    .map(|e| one_line(e, 60))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "RUN", "FLOW", "STATUS", "STARTED", "DURATION", "STEPS", "ERROR",
        ],
        &rows,
    )
}

/// Compact JSON when it fits on a line, indented otherwise.
fn pretty(v: &sluice_expr::Val) -> String {
    let v = &sluice_expr::data::to_json(v);
    let compact = v.to_string();
    if compact.chars().count() <= 100 {
        return compact;
    }
    serde_json::to_string_pretty(v).unwrap_or(compact)
}

fn block(out: &mut String, label: &str, text: &str) {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let _ = writeln!(out, "  {label:<8} {first}");
    for l in lines {
        let _ = writeln!(out, "  {:<8} {l}", "");
    }
}

/// The text of `sluice runs show`.
pub fn run_detail(d: &RunDetail) -> String {
    let s = &d.summary;
    let mut out = String::new();
    let _ = writeln!(out, "run       {}", s.id);
    let _ = writeln!(out, "flow      {}", s.flow_id);
    let _ = writeln!(out, "status    {}", s.status.as_str());
    let _ = writeln!(out, "started   {}", timestamp(s.started_at));
    if let Some(e) = s.ended_at {
        let _ = writeln!(
            out,
            "ended     {} ({})",
            timestamp(e),
            duration(e - s.started_at)
        );
    }
    if let Some((parent, item)) = &d.parent {
        let _ = writeln!(out, "item      {} of the fan-out of run {parent}", item + 1);
    }
    if let Some(step) = &d.next_step {
        let _ = writeln!(out, "next      {step}");
    }
    if let Some(e) = &s.error {
        let _ = writeln!(out, "error     {e}");
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .steps
        .iter()
        .map(|st| {
            vec![
                st.seq.to_string(),
                st.step_key.clone(),
                st.kind.clone(),
                if st.ok { "ok".into() } else { "failed".into() },
                duration(st.ended_at - st.started_at),
                st.error
                    .as_deref()
                    .map(|e| one_line(e, 60))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["#", "STEP", "TYPE", "STATUS", "DURATION", "ERROR"],
        &rows,
    ));
    out.push('\n');
    block(&mut out, "trigger", &pretty(&d.trigger));
    block(&mut out, "input", &pretty(&d.input));
    if let Some(o) = &d.output {
        block(&mut out, "output", &pretty(o));
    }
    for st in &d.steps {
        let _ = writeln!(
            out,
            "\n── {} {} ({}) {}, {} ──",
            st.seq,
            st.step_key,
            st.kind,
            if st.ok { "ok" } else { "failed" },
            duration(st.ended_at - st.started_at)
        );
        block(&mut out, "options", &pretty(&st.options));
        block(&mut out, "input", &pretty(&st.input));
        match &st.result {
            Some(r) => block(&mut out, "result", &pretty(r)),
            None if st.ok => block(&mut out, "result", "(no payload)"),
            None => {}
        }
        if let Some(o) = &st.output {
            block(&mut out, "output", &pretty(o));
        }
        for l in &st.logs {
            block(&mut out, "log", l);
        }
        if let Some(e) = &st.error {
            let who = st
                .blame
                .as_deref()
                .map(|b| format!(" [{b}]"))
                .unwrap_or_default();
            block(&mut out, "error", &format!("{e}{who}"));
        }
    }
    out
}

/// `sluice runs list`.
pub async fn list(store_url: &str, flow: Option<String>, status: Option<String>, limit: u32) -> u8 {
    let status = match status.as_deref().map(|s| RunStatus::parse(s).ok_or(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(s)) => {
            let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            eprintln!(
                "error: unknown status `{s}` (expected one of: {})",
                all.join(", ")
            );
            return crate::INVALID;
        }
    };
    let store = match crate::open_store(store_url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store
        .list_runs(&RunFilter {
            flow_id: flow,
            status,
            limit,
            ..Default::default()
        })
        .await
    {
        Ok(runs) => {
            print!("{}", runs_table(&runs));
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::FAILED
        }
    }
}

/// A run's output on standard output, indented: written as it is made
/// (a large output is never held as text), unless a secret's value may be
/// in it, which is then cleaned where it is.
pub(crate) fn print_output(out: &sluice_expr::Val) {
    use std::io::Write;
    let json = sluice_expr::data::Json(out);
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    if !sluice_action::secrets::any() {
        let _ = serde_json::to_writer_pretty(&mut stdout, &json);
        let _ = writeln!(stdout);
        return;
    }
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    let text = match sluice_action::secrets::scrub(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(_) => {
            let clean = sluice_action::secrets::scrub_value(&sluice_expr::data::to_json(out));
            serde_json::to_string_pretty(&clean).unwrap_or_default()
        }
    };
    let _ = writeln!(stdout, "{text}");
}
