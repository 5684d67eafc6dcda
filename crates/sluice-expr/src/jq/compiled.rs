//! The programs compiled in this process, by text and variables: a folder
//! of flows repeats its expressions (`.id`, `$trigger.body`, the same
//! template in every step), and compiling one is most of a flow's
//! loading (over a third of it jaq handing its natives to a new compiler).
//! A program is shared while something holds it; the table keeps no
//! program alive by itself.

use super::Compiled;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Texts past which the next insert first drops the programs no longer
/// held (the bound then doubles with what is left).
const SWEEP_AT: usize = 4096;

/// The programs of each text (one per set of variables it mentions).
#[derive(Default)]
struct Table {
    programs: HashMap<String, Vec<Weak<Compiled>>>,
    sweep_at: usize,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The program of `code` with `vars` compiled before, while it is held.
pub(super) fn get(code: &str, vars: &[String]) -> Option<Arc<Compiled>> {
    let t = table().lock().ok()?;
    t.programs
        .get(code)?
        .iter()
        .filter_map(Weak::upgrade)
        .find(|p| p.vars == vars)
}

/// Keep `program` for the next compilation of its text and variables.
pub(super) fn put(program: &Arc<Compiled>) {
    let Ok(mut t) = table().lock() else {
        return;
    };
    if t.programs.len() >= t.sweep_at.max(SWEEP_AT) {
        t.programs.retain(|_, ps| {
            ps.retain(|p| p.strong_count() > 0);
            !ps.is_empty()
        });
        t.sweep_at = t.programs.len() * 2;
    }
    let same = t.programs.entry(program.code.clone()).or_default();
    same.retain(|p| p.strong_count() > 0);
    same.push(Arc::downgrade(program));
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
