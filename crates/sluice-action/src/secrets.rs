//! Secrets: `${secret:NAME}` and `${env:NAME}` in a flow's connections,
//! trigger settings and step options, and the scrubbing that keeps a
//! secret's value out of everything Sluice writes.
//!
//! `${secret:NAME}` reads the environment variable `SLUICE_SECRET_NAME`
//! (with `-` and `.` in the name read as `_`), or else the file `NAME` in
//! the secrets folder ([`set_dir`]; one trailing line break is dropped),
//! as container platforms mount them. A flow naming a secret that is set
//! nowhere is refused at load ([`resolve`]). Every secret read is
//! remembered for the life of the process, and [`scrub`] replaces its value
//! by `${secret:NAME}` wherever it appears: the store passes every value it
//! writes through it, and so does every line the server prints and every
//! answer it gives.
//!
//! `${env:NAME}` reads a plain environment variable; its value is not a
//! secret (a host name, a port) and is not scrubbed.
//!
//! A secret is replaced only in text written in the flow file: in a step's
//! options, only outside `{{ }}`, so that no data a run receives can name a
//! secret and have it sent out.

use sluice_model::node::Span;
use sluice_model::{Diagnostic, Diagnostics, Flow};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

static DIR: OnceLock<PathBuf> = OnceLock::new();
/// Every secret read: (value as written in JSON, value, name), longest
/// value first so that a secret containing another is replaced whole.
static KNOWN: RwLock<Vec<Known>> = RwLock::new(Vec::new());
static ANY: AtomicBool = AtomicBool::new(false);

struct Known {
    /// What the value is replaced by: `${secret:NAME}` (or `${env:NAME}`).
    label: String,
    value: String,
    escaped: String,
}

/// Read secrets from files in `dir` as well as from the environment
/// (first call wins).
pub fn set_dir(dir: PathBuf) {
    let _ = DIR.set(dir);
}

/// Whether `name` can name a secret: letters, digits, `_`, `-` and `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The environment variable a secret is read from.
pub fn env_name(name: &str) -> String {
    let mut v = String::from("SLUICE_SECRET_");
    v.extend(
        name.chars()
            .map(|c| if c == '-' || c == '.' { '_' } else { c }),
    );
    v
}

/// The value of secret `name`, remembered for [`scrub`].
pub fn secret(name: &str) -> Result<String, String> {
    if !valid_name(name) {
        return Err(format!(
            "`{name}` is not a secret's name (letters, digits, `_`, `-` and `.`)"
        ));
    }
    let value = match std::env::var(env_name(name)) {
        Ok(v) => v,
        Err(_) => from_file(name)?,
    };
    if value.is_empty() {
        return Err(format!("secret `{name}` is empty"));
    }
    remember(format!("${{secret:{name}}}"), &value);
    Ok(value)
}

fn from_file(name: &str) -> Result<String, String> {
    let unset = || match DIR.get() {
        Some(d) => format!(
            "secret `{name}` is not set: neither the environment variable `{}` nor the file `{}` holds it",
            env_name(name),
            d.join(name).display()
        ),
        None => format!(
            "secret `{name}` is not set: the environment variable `{}` is not set (and no secrets folder is given)",
            env_name(name)
        ),
    };
    let Some(dir) = DIR.get() else {
        return Err(unset());
    };
    match std::fs::read_to_string(dir.join(name)) {
        Ok(mut v) => {
            if v.ends_with('\n') {
                v.pop();
                if v.ends_with('\r') {
                    v.pop();
                }
            }
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(unset()),
        Err(e) => Err(format!(
            "secret `{name}`: cannot read `{}`: {e}",
            dir.join(name).display()
        )),
    }
}

fn remember(label: String, value: &str) {
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    if known.iter().any(|k| k.label == label && k.value == value) {
        return;
    }
    let json = serde_json::to_string(value).unwrap_or_default();
    let escaped = json[1..json.len().saturating_sub(1).max(1)].to_owned();
    known.push(Known {
        label,
        value: value.to_owned(),
        escaped,
    });
    known.sort_by_key(|k| std::cmp::Reverse(k.value.len()));
    ANY.store(true, Ordering::Release);
}

/// Whether any secret has been read (until then nothing is scrubbed).
pub fn any() -> bool {
    ANY.load(Ordering::Acquire)
}

/// `text` with every secret's value (as written, and as JSON writes it
/// inside a string) replaced by `${secret:NAME}`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    if !ANY.load(Ordering::Acquire) {
        return Cow::Borrowed(text);
    }
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for k in known.iter() {
        for needle in [&k.value, &k.escaped] {
            if out.contains(needle.as_str()) {
                out = Cow::Owned(out.replace(needle.as_str(), &k.label));
            }
        }
    }
    out
}

/// `v` with every secret's value replaced in its strings and keys (what
/// the store writes when [`scrub`] finds a secret in a value's JSON text:
/// the replacement happens inside strings only, so the JSON stays valid).
pub fn scrub_value(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(scrub(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(scrub_value).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (scrub(k).into_owned(), scrub_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Print a line on standard error, scrubbed of secrets.
pub fn warn(line: std::fmt::Arguments<'_>) {
    eprintln!("{}", scrub(&line.to_string()));
}

/// Replace `${env:NAME}` by the environment variable's value and
/// `${secret:NAME}` by the secret's.
pub fn expand(text: &str) -> Result<String, String> {
    expand_with(text, Env::Read)
}

/// [`expand`] for a value that is a credential by its place (a webhook's
/// secret): a value read from `${env:NAME}` is scrubbed as a secret's is.
pub fn expand_credential(text: &str) -> Result<String, String> {
    expand_with(text, Env::Credential)
}

/// What `${env:NAME}` does in a text being expanded.
#[derive(Clone, Copy, PartialEq)]
enum Env {
    /// Replaced by the variable's value.
    Read,
    /// Replaced, and the value scrubbed as a secret's.
    Credential,
    /// Left as written (a step's options take secrets only).
    Keep,
}

fn expand_with(text: &str, env: Env) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some((i, kind)) = next_ref(rest, env != Env::Keep) {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2 + kind.len() + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{{kind}:`"))?;
        let name = &after[..end];
        let value = if kind == "env" {
            let v = std::env::var(name)
                .map_err(|_| format!("environment variable `{name}` is not set"))?;
            if env == Env::Credential && !v.is_empty() {
                remember(format!("${{env:{name}}}"), &v);
            }
            v
        } else {
            secret(name)?
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the next `${secret:` (or, `with_env`, `${env:`) starts, and which.
fn next_ref(text: &str, with_env: bool) -> Option<(usize, &'static str)> {
    let e = text.find("${env:").filter(|_| with_env).map(|i| (i, "env"));
    let s = text.find("${secret:").map(|i| (i, "secret"));
    match (e, s) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Every `${secret:NAME}` in `text`: its byte range and name.
fn references(text: &str) -> Vec<(Span, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("${secret:") {
        let start = from + i;
        let name_at = start + "${secret:".len();
        match text[name_at..].find('}') {
            Some(end) => {
                out.push((start..name_at + end + 1, &text[name_at..name_at + end]));
                from = name_at + end + 1;
            }
            None => {
                out.push((start..text.len(), ""));
                break;
            }
        }
    }
    out
}

/// Read every secret `flow`'s file names, and put their values in the
/// text of its steps' options (outside `{{ }}`). A secret that is not set
/// refuses the flow, naming it where it is written.
pub fn resolve(flow: &mut Flow) -> Result<(), Diagnostics> {
    let source = flow.source.clone();
    let mut items = Vec::new();
    for (span, name) in references(&source.text) {
        if let Err(e) = secret(name) {
            let help = match DIR.get() {
                Some(_) => format!(
                    "set {} or add the file `{name}` to the secrets folder",
                    env_name(name)
                ),
                None => format!(
                    "set {} or give the server a folder of secret files (--secrets-dir)",
                    env_name(name)
                ),
            };
            items.push(Diagnostic::new(span, e, "this secret").with_help(help));
        }
    }
    if !items.is_empty() {
        return Err(Diagnostics {
            file: source,
            items,
        });
    }
    if !source.text.contains("${secret:") {
        return Ok(());
    }
    let mut put = |s: &mut String| {
        if s.contains("${secret:")
            && let Ok(v) = expand_with(s, Env::Keep)
        {
            *s = v;
        }
    };
    for step in &mut flow.steps {
        step.options.map_text(&mut put);
        for (_, (written, compiled)) in step.deferred.iter_mut() {
            sluice_expr::map_strings(written, &mut put);
            compiled.map_text(&mut put);
        }
        for v in step.verbatim.values_mut() {
            sluice_expr::map_strings(v, &mut put);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_env_and_secrets_and_scrubs_them() {
        // SAFETY: this test alone sets these variables.
        unsafe {
            std::env::set_var("SLUICE_SECRET_T_API-KEY".replace('-', "_"), "k\"ey-123456");
            std::env::set_var("SLUICE_SECRETS_T_HOST", "db.example");
        }
        let got = expand("https://${env:SLUICE_SECRETS_T_HOST}/?k=${secret:T_API-KEY}").unwrap();
        assert_eq!(got, "https://db.example/?k=k\"ey-123456");
        assert_eq!(
            scrub("a k\"ey-123456 b"),
            "a ${secret:T_API-KEY} b",
            "the value as written"
        );
        let json = serde_json::to_string(&serde_json::json!({"v": "x k\"ey-123456"})).unwrap();
        assert_eq!(
            scrub(&json),
            r#"{"v":"x ${secret:T_API-KEY}"}"#,
            "inside JSON"
        );
        assert_eq!(
            scrub("db.example"),
            "db.example",
            "env values are not secrets"
        );
        let e = expand("${secret:T_NOT_SET_ANYWHERE}").unwrap_err();
        assert!(e.contains("SLUICE_SECRET_T_NOT_SET_ANYWHERE"), "{e}");
        assert!(
            expand("${secret:a b}")
                .unwrap_err()
                .contains("not a secret's name")
        );
        assert!(expand("x${env:SLUICE_NOT_SET_ANYWHERE}").is_err());
        assert!(expand("x${env:UNCLOSED").is_err());
    }

    #[test]
    fn references_are_found_with_their_place() {
        let text = "a: ${secret:ONE}\nb: x${secret:TWO}y\nc: ${secret:";
        let got: Vec<_> = references(text)
            .into_iter()
            .map(|(s, n)| (s.start, s.end, n))
            .collect();
        assert_eq!(got, vec![(3, 16, "ONE"), (21, 34, "TWO"), (39, 48, "")]);
    }
}
