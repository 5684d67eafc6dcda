//! The script connector: the `script` step, JavaScript as Directus's "Run
//! Script" has it (`module.exports = async function (data) { ... }`), on
//! QuickJS through rquickjs. Each call runs in a runtime of its own with a
//! memory limit and a deadline; the script reaches nothing but its data (no
//! file system, network or process; the clock is the time the step began).

mod alloc;
mod js;
mod step;

pub use step::{Script, ScriptOptions};

use sluice_action::Registry;

/// Add the script step type to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(Script);
}

/// The core step types and triggers with `script`.
pub fn registry() -> Registry {
    let mut r = Registry::core();
    register(&mut r);
    r
}
