//! Answered steps: in a test, a step that reaches outside is not run; its
//! result (or error) is the case's answer for its key.
//!
//! A step's answers are taken in order, each once, except that an answer
//! with `options` answers only a call whose options (after templating)
//! hold those, and a single answer written as a mapping answers every
//! call. A `sleep` with no answer ends at once. Any other call with no
//! answer fails its step, naming the step and its options, and fails the
//! case whatever it expects.

use crate::file::{Answer, StepAnswers};
use serde_json::Value;
use sluice_action::{ActionCx, ActionError, BoxFuture, DynAction, Outcome};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Whether a step type runs as written in a test (the rest are answered):
/// the pure ones, which reach nothing outside, and `split`.
pub fn runs_as_written(kind: &str, pure: bool) -> bool {
    pure || kind == "split"
}

/// Whether steps of type `kind` are answered in a test (a type the
/// registry does not know is not).
pub fn answered(registry: &sluice_action::Registry, kind: &str) -> bool {
    registry
        .get(kind)
        .is_some_and(|e| !runs_as_written(kind, e.pure))
}

#[derive(Default)]
struct Slot {
    answers: Vec<Answer>,
    used: Vec<bool>,
    every: bool,
}

/// The answers of one case, and the calls that found none.
#[derive(Default)]
pub struct Answers {
    slots: Mutex<HashMap<String, Slot>>,
    unanswered: Mutex<Vec<String>>,
}

impl Answers {
    /// The answers a case gives.
    pub fn new(given: &[StepAnswers]) -> Arc<Self> {
        let slots = given
            .iter()
            .map(|s| {
                (
                    s.key.clone(),
                    Slot {
                        used: vec![false; s.answers.len()],
                        answers: s.answers.clone(),
                        every: s.every,
                    },
                )
            })
            .collect();
        Arc::new(Self {
            slots: Mutex::new(slots),
            unanswered: Mutex::new(Vec::new()),
        })
    }

    /// Calls that no answer covered, each as a message naming the step and
    /// its options.
    pub fn unanswered(&self) -> Vec<String> {
        self.unanswered
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }

    fn take(&self, key: &str, kind: &str, options: &Value) -> Result<Outcome, ActionError> {
        let found = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.get_mut(key).and_then(|slot| pick(slot, options))
        };
        match found {
            Some(Answer { outcome: Ok(v), .. }) => Ok(Outcome::value(v)),
            Some(Answer {
                outcome: Err((message, blame)),
                ..
            }) => Err(ActionError::new(blame, message)),
            None if kind == "sleep" => Ok(Outcome::none()),
            None => {
                let message = format!(
                    "step `{key}` ({kind}) was called with options {options}, and the case gives no answer for that call"
                );
                if let Ok(mut u) = self.unanswered.lock() {
                    u.push(message.clone());
                }
                Err(ActionError::flow(format!("in a test: {message}")))
            }
        }
    }
}

/// The answer for a call with `options`: the first unused one whose
/// `options` the call's hold, else the first unused one without `options`.
fn pick(slot: &mut Slot, options: &Value) -> Option<Answer> {
    if slot.every {
        return slot.answers.first().cloned();
    }
    let fits = |a: &Answer| a.options.as_ref().is_some_and(|o| holds(options, o));
    let i = (0..slot.answers.len())
        .find(|&i| !slot.used[i] && fits(&slot.answers[i]))
        .or_else(|| {
            (0..slot.answers.len()).find(|&i| !slot.used[i] && slot.answers[i].options.is_none())
        })?;
    slot.used[i] = true;
    Some(slot.answers[i].clone())
}

/// Whether `value` holds `part`: equal, or for objects every key of `part`
/// held by the same key of `value`.
pub fn holds(value: &Value, part: &Value) -> bool {
    match (value, part) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| holds(vv, pv))),
        _ => sluice_expr::merge::json_eq(value, part),
    }
}

/// The action of an answered step type.
pub struct Answered {
    /// The step type.
    pub kind: &'static str,
    /// The case's answers.
    pub answers: Arc<Answers>,
}

impl DynAction for Answered {
    fn run_json<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: &'a Value,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move { self.answers.take(cx.step_key, self.kind, options) })
    }

    fn result_of(&self, _options: &sluice_expr::Val) -> Option<sluice_expr::Val> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(options: Option<Value>, v: Value) -> Answer {
        Answer {
            options,
            outcome: Ok(v),
        }
    }

    #[test]
    fn answers_go_in_order_or_by_options_or_to_every_call() {
        let a = Answers::new(&[
            StepAnswers {
                key: "s".into(),
                span: 0..0,
                answers: vec![
                    answer(None, json!(1)),
                    answer(Some(json!({"to": "b"})), json!("b")),
                    answer(None, json!(2)),
                ],
                every: false,
            },
            StepAnswers {
                key: "e".into(),
                span: 0..0,
                answers: vec![answer(None, json!("same"))],
                every: true,
            },
        ]);
        let got = |key: &str, o: Value| {
            a.take(key, "sql.query", &o)
                .map(|o| o.payload.unwrap_or(Value::Null))
                .map_err(|e| e.message)
        };
        assert_eq!(got("s", json!({"to": "b", "n": 1})), Ok(json!("b")));
        assert_eq!(got("s", json!({})), Ok(json!(1)));
        assert_eq!(got("s", json!({})), Ok(json!(2)));
        assert!(
            got("s", json!({"q": 1}))
                .unwrap_err()
                .contains(r#"options {"q":1}"#)
        );
        assert_eq!(got("e", json!({})), Ok(json!("same")));
        assert_eq!(got("e", json!({})), Ok(json!("same")));
        assert_eq!(a.unanswered().len(), 1);
        assert!(
            a.take("z", "sleep", &json!({})).is_ok(),
            "a sleep needs no answer"
        );
    }

    #[test]
    fn holds_is_a_subset_of_objects() {
        assert!(holds(
            &json!({"a": 1, "b": {"c": 2, "d": 3}}),
            &json!({"b": {"c": 2}})
        ));
        assert!(!holds(&json!({"a": 1}), &json!({"a": 2})));
        assert!(holds(&json!([1, 2]), &json!([1, 2])));
        assert!(holds(&json!(1.0), &json!(1)));
    }
}
