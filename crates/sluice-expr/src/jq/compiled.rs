//! The programs compiled in this process, by text and variables: a folder
//! of flows repeats its expressions (`.id`, `$trigger.body`, the same
//! template in every step), and compiling one is most of a flow's
//! loading (over a third of it jaq handing its natives to a new compiler).
//! A program is shared while something holds it; the table keeps no
//! program alive by itself.

use super::Compiled;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

type Key = (String, Vec<String>);

/// Entries past which the next insert first drops those of programs no
/// longer held (the bound then doubles with what is left).
const SWEEP_AT: usize = 4096;

#[derive(Default)]
struct Table {
    programs: HashMap<Key, Weak<Compiled>>,
    sweep_at: usize,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The program of `code` with `vars` compiled before, while it is held.
pub(super) fn get(code: &str, vars: &[String]) -> Option<Arc<Compiled>> {
    let t = table().lock().ok()?;
    // (The key is made only to look up: a lookup by borrowed parts would
    // need a key type of its own.)
    t.programs
        .get(&(code.to_owned(), vars.to_vec()))
        .and_then(Weak::upgrade)
}

/// Keep `program` for the next compilation of its text and variables.
pub(super) fn put(program: &Arc<Compiled>) {
    let Ok(mut t) = table().lock() else {
        return;
    };
    if t.programs.len() >= t.sweep_at.max(SWEEP_AT) {
        t.programs.retain(|_, p| p.strong_count() > 0);
        t.sweep_at = t.programs.len() * 2;
    }
    let key = (program.code.clone(), program.vars.clone());
    t.programs.insert(key, Arc::downgrade(program));
}

#[cfg(test)]
mod tests {
    use crate::{Limits, MapScope, Program};
    use serde_json::json;

    #[test]
    fn a_program_compiled_again_is_the_one_held() {
        // A text no other test compiles.
        let code = ".compiled_table_test + $x";
        let a = Program::compile(code, &["x", "y"]).unwrap();
        let b = Program::compile(code, &["x"]).unwrap();
        assert!(a.same_as(&b), "the same text and the variables it mentions");
        assert!(Program::compile(code, &["z"]).is_err(), "`$x` is not given");
        let c = Program::compile(".compiled_table_test + $y", &["y"]).unwrap();
        assert!(!a.same_as(&c));
        // Held by nothing, a program is compiled anew, and runs the same.
        drop((a, b));
        let d = Program::compile(code, &["x"]).unwrap();
        let scope = MapScope::from_json(json!({"x": 2}));
        let out = d.eval_json(
            &json!({"compiled_table_test": 1}),
            &scope,
            &Limits::default(),
        );
        assert_eq!(out.unwrap(), Some(json!(3)));
    }
}
