//! What the store does to every value and message before writing it: the
//! process installs a [`Scrub`] (the binary's takes secrets' values out,
//! see `sluice_action::secrets`); without one, values are written as given.

use serde_json::Value;
use sluice_expr::Val;
use std::borrow::Cow;
use std::sync::OnceLock;

/// How written text and values are cleaned.
#[derive(Clone, Copy)]
pub struct Scrub {
    /// A message or a JSON text, cleaned (borrowed back when clean).
    pub text: fn(&str) -> Cow<'_, str>,
    /// A value cleaned inside its strings and keys (called only when
    /// `text` found something in its JSON text).
    pub value: fn(&Value) -> Value,
}

static SCRUB: OnceLock<Scrub> = OnceLock::new();

/// Clean everything this process writes to a store with `scrub` (the
/// first call wins).
pub fn set_scrub(scrub: Scrub) {
    let _ = SCRUB.set(scrub);
}

/// The JSON text of `v`, cleaned.
pub(crate) fn json(v: &Value) -> String {
    // serde_json's writer is faster than `Display`.
    let text = serde_json::to_string(v).unwrap_or_default();
    match SCRUB.get() {
        Some(s) if matches!((s.text)(&text), Cow::Owned(_)) => {
            serde_json::to_string(&(s.value)(v)).unwrap_or_default()
        }
        _ => text,
    }
}

/// Whether a [`Scrub`] is installed.
pub(crate) fn active() -> bool {
    SCRUB.get().is_some()
}

/// Whether JSON text holds something to clean.
pub(crate) fn found(text: &[u8]) -> bool {
    match (SCRUB.get(), std::str::from_utf8(text)) {
        (Some(s), Ok(t)) => matches!((s.text)(t), Cow::Owned(_)),
        _ => false,
    }
}

/// A jq value cleaned inside its strings and keys.
pub(crate) fn val(v: &Val) -> Val {
    match SCRUB.get() {
        Some(s) => sluice_expr::data::into_val((s.value)(&sluice_expr::data::to_json(v))),
        None => v.clone(),
    }
}

/// A message, cleaned.
pub(crate) fn text(t: &str) -> String {
    match SCRUB.get() {
        Some(s) => (s.text)(t).into_owned(),
        None => t.to_owned(),
    }
}

/// An optional message, cleaned.
pub(crate) fn opt_text(t: &Option<String>) -> Option<String> {
    t.as_deref().map(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hide(t: &str) -> Cow<'_, str> {
        if t.contains("s3cret") {
            Cow::Owned(t.replace("s3cret", "***"))
        } else {
            Cow::Borrowed(t)
        }
    }

    fn hide_value(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(hide(s).into_owned()),
            Value::Array(a) => Value::Array(a.iter().map(hide_value).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (hide(k).into_owned(), hide_value(v)))
                    .collect(),
            ),
            v => v.clone(),
        }
    }

    #[test]
    fn values_and_messages_are_cleaned_once_installed() {
        let v = serde_json::json!({"a": ["x s3cret y", 1], "s3cret": true});
        set_scrub(Scrub {
            text: hide,
            value: hide_value,
        });
        assert_eq!(json(&v), r#"{"a":["x *** y",1],"***":true}"#);
        assert_eq!(json(&serde_json::json!({"b": 2})), r#"{"b":2}"#);
        assert_eq!(text("a s3cret"), "a ***");
        assert_eq!(opt_text(&None), None);
    }
}
