//! One call of a script on QuickJS: a runtime of its own with a memory
//! limit and a deadline (checked by QuickJS's interrupt handler, so a loop
//! that never ends is stopped), `Date` fixed to the time given, `console`
//! collected into the step's log, and the exported function's value (a
//! promise is driven to its end) back as JSON.

use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object, Runtime, Value,
    WriteOptions,
};
use std::time::{Duration, Instant};

/// What a call may use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) time: Duration,
    pub(crate) memory: usize,
}

/// Why a call failed.
#[derive(Debug, PartialEq)]
pub(crate) enum Failure {
    /// The code does not parse.
    Syntax(Place),
    /// The script threw (or its promise was rejected).
    Thrown(Place),
    /// It ran past its deadline.
    Timeout,
    /// It needed more memory than it may have.
    Memory,
    /// It does not export a function, or its promise never settles.
    Shape(String),
}

/// A message and where in the script it comes from, when known.
#[derive(Debug, PartialEq)]
pub(crate) struct Place {
    pub(crate) message: String,
    pub(crate) line: Option<u32>,
    pub(crate) column: Option<u32>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            (Some(l), None) => write!(f, "line {l}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// What a call gave back.
#[derive(Debug)]
pub(crate) struct Called {
    pub(crate) value: serde_json::Value,
    pub(crate) logs: Vec<String>,
}

const FILE: &str = "script.js";

/// The script inside a function of `module`, `exports` and `console`: one
/// line before the script's first.
fn wrapped(code: &str) -> String {
    format!("export default (function (module, exports, console) {{\n{code}\n}});")
}

/// Sets up the global scope, then runs a script's wrapper and calls what it
/// exports.
const PRELUDE: &str = r#"(function (now) {
  const RealDate = Date;
  function FixedDate(...args) {
    if (!new.target) return new RealDate(now).toString();
    return args.length ? new RealDate(...args) : new RealDate(now);
  }
  FixedDate.now = () => now;
  FixedDate.parse = RealDate.parse;
  FixedDate.UTC = RealDate.UTC;
  FixedDate.prototype = RealDate.prototype;
  globalThis.Date = FixedDate;
  const show = (x) => (typeof x === "string" ? x : JSON.stringify(x));
  return function call(wrapper, data) {
    const logs = [];
    const line = (...a) => { logs.push(a.map(show).join(" ")); };
    const console = { log: line, info: line, warn: line, error: line, debug: line };
    const module = { exports: {} };
    wrapper(module, module.exports, console);
    const main = module.exports;
    if (typeof main !== "function") {
      throw new TypeError("__SHAPE__module.exports is not a function");
    }
    return { result: main(data), logs };
  };
})"#;

/// `code` compiled once: the bytecode of a module whose default export is
/// the script's wrapper (a script is strict-mode code, as modules are);
/// where it does not parse.
pub(crate) fn compile(code: &str) -> Result<Vec<u8>, Failure> {
    let limits = Limits {
        time: Duration::from_secs(2),
        memory: 64 << 20,
    };
    within(limits, |ctx| {
        let m = Module::declare(ctx.clone(), FILE, wrapped(code))
            .catch(ctx)
            .map_err(|e| match thrown(e, true) {
                Failure::Thrown(p) => Failure::Syntax(p),
                other => other,
            })?;
        m.write(WriteOptions::default())
            .map_err(|e| Failure::Shape(format!("the script could not be compiled: {e}")))
    })
}

/// Call the function `code` exports with `data` (JSON text), the clock at
/// `now` (milliseconds since the epoch).
pub(crate) fn call(code: &[u8], data: &str, now: f64, limits: Limits) -> Result<Called, Failure> {
    within(limits, |ctx| {
        let wrapper = load(ctx, code)?;
        let prelude: Function = ctx
            .eval_with_options(PRELUDE, options())
            .catch(ctx)
            .map_err(|e| thrown(e, false))?;
        let caller: Function = prelude
            .call((now,))
            .catch(ctx)
            .map_err(|e| thrown(e, false))?;
        let data: Value = ctx
            .json_parse(data)
            .catch(ctx)
            .map_err(|e| thrown(e, false))?;
        let out: Object = caller
            .call((wrapper, data))
            .catch(ctx)
            .map_err(|e| thrown(e, true))?;
        let result: Value = out.get("result").catch(ctx).map_err(|e| thrown(e, true))?;
        let result = match result.as_promise() {
            Some(p) => match p.finish::<Value>().catch(ctx) {
                Ok(v) => v,
                Err(CaughtError::Error(rquickjs::Error::WouldBlock)) => {
                    return Err(Failure::Shape(
                        "the function's promise never settles (it waits for something no one will do)".into(),
                    ));
                }
                Err(e) => return Err(thrown(e, true)),
            },
            None => result,
        };
        let text = ctx
            .json_stringify(result)
            .catch(ctx)
            .map_err(|e| thrown(e, true))?
            .map(|s| s.to_string())
            .transpose()
            .map_err(|e| Failure::Shape(e.to_string()))?;
        let value = match text {
            Some(t) => serde_json::from_str(&t).map_err(|e| Failure::Shape(e.to_string()))?,
            None => serde_json::Value::Null,
        };
        let logs: Vec<String> = out.get("logs").unwrap_or_default();
        Ok(Called { value, logs })
    })
}

fn options() -> rquickjs::context::EvalOptions {
    let mut o = rquickjs::context::EvalOptions::default();
    o.global = true;
    o.strict = false;
    o.filename = Some(FILE.into());
    o
}

/// The wrapper of a script compiled by [`compile`].
fn load<'js>(ctx: &Ctx<'js>, bytes: &[u8]) -> Result<Function<'js>, Failure> {
    // SAFETY: the bytes are what `compile` wrote, with this QuickJS, in
    // this process (never read from outside).
    let m = unsafe { Module::load(ctx.clone(), bytes) }
        .catch(ctx)
        .map_err(|e| thrown(e, true))?;
    let (m, done) = m.eval().catch(ctx).map_err(|e| thrown(e, true))?;
    done.finish::<()>()
        .catch(ctx)
        .map_err(|e| thrown(e, true))?;
    m.get("default").catch(ctx).map_err(|e| thrown(e, true))
}

/// Run `f` in a new runtime with `limits`.
fn within<T>(limits: Limits, f: impl FnOnce(&Ctx<'_>) -> Result<T, Failure>) -> Result<T, Failure> {
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = Runtime::new_with_alloc(crate::alloc::Limited::new(limits.memory, full.clone()))
        .map_err(|e| Failure::Shape(format!("QuickJS did not start: {e}")))?;
    rt.set_max_stack_size(512 << 10);
    let deadline = Instant::now() + limits.time;
    let late = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = late.clone();
    rt.set_interrupt_handler(Some(Box::new(move || {
        let over = Instant::now() > deadline;
        if over {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        over
    })));
    let ctx =
        Context::full(&rt).map_err(|e| Failure::Shape(format!("QuickJS did not start: {e}")))?;
    let out = ctx.with(|ctx| f(&ctx));
    match out {
        Err(_) if late.load(std::sync::atomic::Ordering::Relaxed) => Err(Failure::Timeout),
        Err(_) if full.load(std::sync::atomic::Ordering::Relaxed) => Err(Failure::Memory),
        other => other,
    }
}

/// A caught error as a failure; `in_script`: lines count from the script's
/// own first (its wrapper adds one before it).
fn thrown(e: CaughtError<'_>, in_script: bool) -> Failure {
    let (message, stack) = match &e {
        CaughtError::Exception(x) => (
            format!(
                "{}{}",
                x.get::<_, Option<String>>("name")
                    .ok()
                    .flatten()
                    .map(|n| format!("{n}: "))
                    .unwrap_or_default(),
                x.message().unwrap_or_default()
            ),
            x.stack().unwrap_or_default(),
        ),
        CaughtError::Value(v) => (
            format!(
                "the script threw {}",
                v.ctx()
                    .json_stringify(v.clone())
                    .ok()
                    .flatten()
                    .and_then(|s| s.to_string().ok())
                    .unwrap_or_else(|| "a value".into())
            ),
            String::new(),
        ),
        CaughtError::Error(err) => (err.to_string(), String::new()),
    };
    if let Some(rest) = message.split("__SHAPE__").nth(1) {
        return Failure::Shape(format!(
            "{rest}: a script exports `module.exports = async function (data) {{ ... }}`"
        ));
    }
    let (line, column) = place(&stack);
    Failure::Thrown(Place {
        message,
        line: line.map(|l| if in_script { l.saturating_sub(1) } else { l }),
        column,
    })
}

/// The first `script.js:LINE:COLUMN` of a stack.
fn place(stack: &str) -> (Option<u32>, Option<u32>) {
    let Some(i) = stack.find("script.js:") else {
        return (None, None);
    };
    let mut nums = stack[i + FILE.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .map(|n| n.parse::<u32>().ok());
    (nums.next().flatten(), nums.next().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        time: Duration::from_millis(500),
        memory: 16 << 20,
    };

    fn run(code: &str, data: &str, now: f64) -> Result<Called, Failure> {
        call(&compile(code)?, data, now, LIMITS)
    }

    #[test]
    fn a_script_gets_its_data_and_returns_json() {
        let code = "module.exports = async function (data) {\n  console.log('got', data.n);\n  return { twice: data.n * 2, when: Date.now(), year: new Date().getUTCFullYear() };\n};";
        let out = run(code, r#"{"n": 21}"#, 1_700_000_000_000.0).unwrap();
        assert_eq!(
            out.value,
            serde_json::json!({"twice": 42, "when": 1_700_000_000_000u64, "year": 2023})
        );
        assert_eq!(out.logs, vec!["got 21"]);
        let out = run("module.exports = (d) => undefined;", "{}", 0.0).unwrap();
        assert_eq!(out.value, serde_json::Value::Null);
    }

    #[test]
    fn errors_say_where() {
        let e = compile("module.exports = function (data) {\n  return data.;\n};").unwrap_err();
        let Failure::Syntax(p) = e else {
            panic!("{e:?}")
        };
        assert_eq!(p.line, Some(2), "{p}");
        assert!(p.message.contains("SyntaxError"), "{p}");
        let e = run(
            "module.exports = async function (data) {\n\n  throw new Error('no order ' + data.id);\n};",
            r#"{"id": 7}"#,
            0.0,
        )
        .unwrap_err();
        let Failure::Thrown(p) = e else {
            panic!("{e:?}")
        };
        assert_eq!(p.message, "Error: no order 7");
        assert_eq!(p.line, Some(3), "{p}");
        let e = run("module.exports = 3;", "{}", 0.0).unwrap_err();
        assert!(
            matches!(e, Failure::Shape(ref m) if m.starts_with("module.exports is not a function")),
            "{e:?}"
        );
        let e = run("module.exports = () => new Promise(() => {});", "{}", 0.0).unwrap_err();
        assert!(
            matches!(e, Failure::Shape(ref m) if m.contains("never settles")),
            "{e:?}"
        );
    }

    #[test]
    fn runaway_scripts_are_stopped() {
        let e = run("module.exports = () => { for (;;) {} };", "{}", 0.0).unwrap_err();
        assert_eq!(e, Failure::Timeout);
        let e = run(
            "module.exports = () => { const a = []; for (;;) a.push('x'.repeat(1000)); };",
            "{}",
            0.0,
        )
        .unwrap_err();
        assert_eq!(e, Failure::Memory);
        let e = run(
            "module.exports = async () => { while (true) { await null; } };",
            "{}",
            0.0,
        )
        .unwrap_err();
        assert_eq!(e, Failure::Timeout);
    }

    #[test]
    fn nothing_outside_is_reachable() {
        for probe in [
            "typeof require",
            "typeof process",
            "typeof fetch",
            "typeof std",
            "typeof os",
            "typeof XMLHttpRequest",
        ] {
            let code = format!("module.exports = () => {probe};");
            let out = run(&code, "{}", 0.0).unwrap();
            assert_eq!(out.value, serde_json::json!("undefined"), "{probe}");
        }
    }
}
