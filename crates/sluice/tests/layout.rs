//! The layout of the workspace, as docs/architecture.md states it, checked
//! so that it stays true:
//!
//! * every crate opens with a `//!` overview;
//! * a connector crate (one that depends on `sluice-action` and is none of
//!   the core crates) depends on no other connector, and neither the engine
//!   nor the server depends on a connector (tests and benches may);
//! * the modules of a crate import one another without a circle (a module's
//!   submodules count as the module; `#[cfg(test)]` modules are left out),
//!   and name what they import (no `use crate::*`);
//! * no source file is over 1,200 lines, and no function of the engine over
//!   120.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates that are not connectors.
const CORE: &[&str] = &[
    "sluice",
    "sluice-action",
    "sluice-engine",
    "sluice-expr",
    "sluice-model",
    "sluice-server",
    "sluice-store",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crates() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(_, p)| p.join("Cargo.toml").exists())
        .collect();
    out.sort();
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `[dependencies]` of a crate that are workspace crates (`sluice*`).
fn sluice_deps(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("sluice") {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn connectors_stand_alone_and_the_engine_knows_none() {
    let manifests: BTreeMap<String, String> = crates()
        .into_iter()
        .map(|(name, dir)| {
            let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
            (name, text)
        })
        .collect();
    let connectors: BTreeSet<&str> = manifests
        .iter()
        .filter(|(name, m)| {
            !CORE.contains(&name.as_str()) && sluice_deps(m).iter().any(|d| d == "sluice-action")
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        connectors.contains("sluice-sql"),
        "sluice-sql is a connector: {connectors:?}"
    );
    let mut problems = Vec::new();
    for (name, m) in &manifests {
        for dep in sluice_deps(m) {
            let knows_connector = connectors.contains(dep.as_str());
            let allowed = name == "sluice" || !knows_connector;
            if !allowed {
                problems.push(format!("{name} depends on connector {dep}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A source file's text without its `#[cfg(test)]` modules and comments.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the item that follows: up to the line that closes it at
            // the same indentation.
            let indent = line.len() - line.trim_start().len();
            let close = format!("{}}}", " ".repeat(indent));
            for inner in lines.by_ref() {
                if inner.trim_end() == close {
                    break;
                }
            }
            continue;
        }
        if !line.trim_start().starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Names a `use crate::...` statement (or an inline `crate::` path) brings
/// in: (first segment, last segment) pairs.
fn crate_refs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let prev = rest[..at].chars().last();
        rest = after;
        if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(list) = after.strip_prefix('{') {
            let end = matching_brace(list);
            for part in split_top(&list[..end]) {
                let segs: Vec<&str> = part.split("::").map(str::trim).collect();
                if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
                    out.push((first.to_string(), last.to_string()));
                }
            }
            continue;
        }
        let path: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
            // `crate::m::{A, B}`: the module is what counts.
            out.push((first.to_string(), last.to_string()));
        }
    }
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| {
            // `m::{A, B}` inside a list: the module.
            let p = p.trim();
            p.split("::{").next().unwrap_or(p).trim().to_owned()
        })
        .filter(|p| !p.is_empty() && p != "self")
        .collect()
}

/// Top-level items a module declares visible to the rest of its crate.
fn declared(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix("pub(crate) ")
            .or_else(|| line.strip_prefix("pub "))
        else {
            continue;
        };
        let rest = rest.strip_prefix("async ").unwrap_or(rest);
        for kw in [
            "fn ", "struct ", "enum ", "trait ", "type ", "const ", "static ",
        ] {
            if let Some(name) = rest.strip_prefix(kw) {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
    }
    out
}

/// A circle in `edges`, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn modules_import_one_another_without_a_circle() {
    let mut problems = Vec::new();
    for (name, dir) in crates() {
        let src = dir.join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        // Each file belongs to its top-level module (`lib.rs` and
        // `main.rs` are the crate's root).
        let module_of = |p: &Path| -> String {
            let rel = p.strip_prefix(&src).unwrap_or(p);
            let first = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            first.trim_end_matches(".rs").to_owned()
        };
        let mut texts: BTreeMap<String, String> = BTreeMap::new();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("source");
            let m = module_of(f);
            if m != "lib" && m != "main" && text.lines().any(|l| l.trim() == "use crate::*;") {
                problems.push(format!("{}: `use crate::*`", f.display()));
            }
            texts.entry(m).or_default().push_str(&without_tests(&text));
        }
        let modules: BTreeSet<String> = texts.keys().cloned().collect();
        let mut owner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (m, text) in &texts {
            for item in declared(text) {
                owner.entry(item).or_default().insert(m.clone());
            }
        }
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (m, text) in &texts {
            let to = edges.entry(m.clone()).or_default();
            for (first, last) in crate_refs(text) {
                let targets: BTreeSet<String> = if modules.contains(&first) {
                    [first].into()
                } else {
                    owner.get(&last).cloned().unwrap_or_default()
                };
                to.extend(targets.into_iter().filter(|t| t != m));
            }
        }
        // The root reaches its modules by their bare names (`use m::X`,
        // `m::f()`).
        for root in ["lib", "main"] {
            let Some(text) = texts.get(root) else {
                continue;
            };
            let used: BTreeSet<String> = modules
                .iter()
                .filter(|m| {
                    let pat = format!("{m}::");
                    text.match_indices(&pat).any(|(at, _)| {
                        !text[..at]
                            .chars()
                            .last()
                            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    })
                })
                .cloned()
                .collect();
            edges.entry(root.to_owned()).or_default().extend(used);
        }
        if let Some(c) = circle(&edges) {
            problems.push(format!(
                "{name}: modules import in a circle: {}",
                c.join(" -> ")
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn files_and_engine_functions_stay_small() {
    let mut problems = Vec::new();
    for (name, dir) in crates() {
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        let lib = ["lib.rs", "main.rs"]
            .iter()
            .map(|f| dir.join("src").join(f))
            .find(|p| p.exists());
        match lib.map(std::fs::read_to_string) {
            Some(Ok(text)) if text.starts_with("//!") => {}
            _ => problems.push(format!("{name}: no `//!` overview")),
        }
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source");
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() > 1200 {
                problems.push(format!("{}: {} lines", f.display(), lines.len()));
            }
            if name != "sluice-engine" {
                continue;
            }
            for (i, l) in lines.iter().enumerate() {
                let t = l.trim_start();
                let t = t
                    .strip_prefix("pub(crate) ")
                    .or_else(|| t.strip_prefix("pub "))
                    .unwrap_or(t);
                let t = t.strip_prefix("async ").unwrap_or(t);
                if !t.starts_with("fn ") || l.trim_end().ends_with(';') {
                    continue;
                }
                let indent = l.len() - l.trim_start().len();
                let close = format!("{}}}", " ".repeat(indent));
                let len = lines[i..]
                    .iter()
                    .position(|x| x.trim_end() == close)
                    .map_or(0, |n| n + 1);
                if len > 120 {
                    problems.push(format!(
                        "{}:{}: a function of {len} lines",
                        f.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
