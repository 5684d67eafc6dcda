//! The script connector: the `script` step, JavaScript as Directus's "Run
//! Script" has it (`module.exports = async function (data) { ... }`), on
//! QuickJS through rquickjs. Each call runs in a runtime of its own with a
//! memory limit and a deadline; the script reaches nothing but its data (no
//! file system, network or process; the clock is the time the step began).

mod alloc;
mod js;
mod step;

pub use step::{Script, ScriptOptions};

/// A script compiled once (for benchmarks and tools: the step keeps its
/// own).
pub struct Compiled(Vec<u8>);

/// Compile `code`.
pub fn compile(code: &str) -> Result<Compiled, String> {
    js::compile(code)
        .map(Compiled)
        .map_err(|e| format!("{e:?}"))
}

/// One call of a compiled script, as the step makes it: its exported
/// function on `data` (JSON text); its result.
pub fn call(compiled: &Compiled, data: &str) -> Result<serde_json::Value, String> {
    let limits = js::Limits {
        time: std::time::Duration::from_secs(10),
        memory: 32 << 20,
    };
    js::call(&compiled.0, data, 0.0, limits)
        .map(|c| c.value)
        .map_err(|e| format!("{e:?}"))
}

use sluice_action::Registry;

/// Add the script step type to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(Script::default());
}

/// The core step types and triggers with `script`.
pub fn registry() -> Registry {
    let mut r = Registry::core();
    register(&mut r);
    r
}
