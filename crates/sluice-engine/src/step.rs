//! One step's execution on the state data (SEMANTICS.md sections 2 to 4):
//! its input filtered and mapped, its options templated, its action run
//! (with the effects it asks for: a sleep, an event wait, another flow), and
//! its result merged or mapped into the state data and filtered. It never
//! touches the store.

use crate::cursor::StepCx;
use crate::engine::Engine;
use crate::filters::{apply_event, eval, filter_or_keep, filter_or_keep_owned};
use crate::flow_object::FlowObject;
use crate::hooks::StepHooks;
use crate::retry::after_ms;
use serde_json::{Map, Value};
use sluice_action::batch::InBatch;
use sluice_action::hooks::DataHooks;
use sluice_action::{ActionCx, ActionError, Blame, Effect, Outcome};
use sluice_expr::Limits;
use sluice_expr::data::{insert, into_val, str_val};
use sluice_expr::{Val, merge_val, to_val};
use sluice_model::{Flow, Next, Step, UnmappedResults};
use sluice_store::Store;
use std::borrow::Cow;
use std::sync::atomic::AtomicU32;

/// Whether anything can read what `step` emits, in a run whose output is
/// not kept (a record of an import): a step after it, or the step's own
/// filters and mappings of its result (which may fail on it).
pub(crate) fn results_read(step: &Step) -> bool {
    !matches!(step.on_success, Next::End)
        || step.state_filter.output.is_some()
        || step.action_filter.results.is_some()
        || step.action_filter.to_state_data.is_some()
        || step.output_mappings.is_some()
}

/// How a step suspends its run (from its [`Effect`]).
pub(crate) enum Suspend {
    Sleep {
        until: i64,
    },
    Event {
        event_type: Option<String>,
        source: Option<String>,
        correlation: Map<String, Value>,
        timeout_at: Option<i64>,
    },
}

/// A step that ran.
pub(crate) struct Done {
    /// Set when the step suspends the run rather than ending.
    pub(crate) suspend: Option<Suspend>,
    pub(crate) options: Val,
    pub(crate) result: Option<Val>,
    pub(crate) state: Val,
    pub(crate) logs: Vec<String>,
    pub(crate) tokens: Option<Map<String, Value>>,
    /// For a step that emits its results individually: each item, with the
    /// state data it starts its own run with.
    pub(crate) items: Option<Vec<(Val, Val)>>,
    /// How many of the items' runs may be under way at once.
    pub(crate) concurrency: usize,
}

/// A step that failed.
pub(crate) struct Failed {
    pub(crate) options: Val,
    pub(crate) error: ActionError,
    pub(crate) logs: Vec<String>,
    /// The run must stop here for a person (SEMANTICS.md section 4).
    pub(crate) incident: bool,
}

impl Failed {
    /// The data did not fit: resumable once fixed.
    pub(crate) fn data(options: &Val, message: String) -> Self {
        Self {
            options: options.clone(),
            error: ActionError::data(message),
            logs: Vec::new(),
            incident: false,
        }
    }
}

/// The step type that waits for an event.
pub(crate) const WAIT: &str = "wait";

/// What an action gave back, its effect carried out.
struct Acted {
    payload: Option<Val>,
    logs: Vec<String>,
    tokens: Option<Map<String, Value>>,
    items: Option<Vec<Val>>,
    concurrency: usize,
    suspend: Option<Suspend>,
}

impl Acted {
    /// A result, and nothing else.
    fn result(payload: Val) -> Self {
        Self {
            payload: Some(payload),
            logs: Vec::new(),
            tokens: None,
            items: None,
            concurrency: 0,
            suspend: None,
        }
    }
}

impl<S: Store> Engine<S> {
    /// Run one step on `state`; never touches the store.
    // `Failed` carries the recorded options and logs; it is built once per failure.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn step(
        &self,
        flow: &Flow,
        step: &Step,
        state: &Val,
        fo: &FlowObject,
        scx: StepCx<'_>,
    ) -> Result<Done, Failed> {
        let limits = &self.limits;
        // 1. stateDataFilter.input (and the run's event); 2. the action's input
        let data = step_input(flow, step, state, fo, limits)?;
        let action_input = action_input(step, &data, fo, limits)?;
        // templates
        let program_input = sluice_expr::Input::val(action_input.into_owned());
        let mut options = step
            .options
            .render_val(&program_input, fo, limits)
            .map_err(|e| Failed::data(&Val::Null, e.to_string()))?;
        for (k, p) in &step.expressions {
            insert(&mut options, k, str_val(p.code()));
        }
        for (k, v) in &step.verbatim {
            insert(&mut options, k, to_val(v));
        }
        // Deferred options reach the step through `cx.deferred` only: the
        // step runs on the options its record shows.
        let recorded_options = options;
        // Whether anything reads what the step emits, in a run whose output
        // is not kept (see `results_read`).
        // (With `--output`, the run's output, which a last step's result
        // makes, is read.)
        let result_read = results_read(step) || scx.output;
        // 3. the action
        let cx_input = ActionInput {
            program: &program_input,
            options: &recorded_options,
            result_read,
        };
        let acted = match self.act(flow, step, fo, &scx, cx_input).await {
            Ok(a) => a,
            Err((error, logs)) => {
                return Err(Failed {
                    options: recorded_options,
                    incident: error.incident,
                    error,
                    logs,
                });
            }
        };
        if acted.suspend.is_some() {
            return Ok(Done {
                suspend: acted.suspend,
                options: recorded_options,
                result: None,
                state: state.clone(),
                logs: acted.logs,
                tokens: None,
                items: None,
                concurrency: 0,
            });
        }
        // 4. the result meets the state data; 5. stateDataFilter.output
        let settle = Settle {
            flow,
            step,
            data: &data,
            fo,
            limits,
            // A record of an import that writes nothing out keeps no
            // output: the state data its last step makes (a step without
            // filters or mappings of its result) has no reader, so it is
            // not made, only checked.
            state_read: scx.batch.is_none() || scx.output || result_read || step.kind == WAIT,
            options: &recorded_options,
            logs: &acted.logs,
        };
        let items = match acted.items {
            None => None,
            Some(list) => Some(
                list.into_iter()
                    .map(|item| {
                        let state = settle.settle(Some(&item))?;
                        Ok((item, state))
                    })
                    .collect::<Result<Vec<_>, Failed>>()?,
            ),
        };
        let out = if items.is_some() {
            data.into_owned()
        } else {
            settle.settle(acted.payload.as_ref())?
        };
        Ok(Done {
            suspend: None,
            options: recorded_options,
            result: acted.payload,
            state: out,
            logs: acted.logs,
            tokens: acted.tokens,
            items,
            concurrency: acted.concurrency,
        })
    }

    /// Run the step's action and carry out the effect it asks for: the
    /// suspension it asks, or the run of another flow (whose output is the
    /// result). An error comes with the logs of the action.
    async fn act(
        &self,
        flow: &Flow,
        step: &Step,
        fo: &FlowObject,
        scx: &StepCx<'_>,
        input: ActionInput<'_>,
    ) -> Result<Acted, (ActionError, Vec<String>)> {
        let entry = self.registry.get(&step.kind).ok_or_else(|| {
            let error = ActionError {
                blame: Blame::Bug,
                message: format!("step type `{}` is not registered", step.kind),
                retry_after_ms: None,
                incident: false,
            };
            (error, Vec::new())
        })?;
        if let Some(payload) = entry.action.result_of(input.options) {
            // A result that is part of the options: shared, not copied.
            return Ok(Acted::result(payload));
        }
        let hooks = self
            .flows
            .read()
            .ok()
            .map(|f| f.hooks.clone())
            .filter(|h| !h.is_empty())
            .map(|hooks| StepHooks {
                engine: self,
                hooks,
                parent: flow,
                fo,
                scx,
                seq: AtomicU32::new(0),
            });
        let cx = ActionCx {
            run_id: scx.run_id,
            step_key: &step.key,
            program_input: input.program,
            scope: fo,
            expressions: &step.expressions,
            limits: &self.limits,
            connections: &flow.connections,
            deferred: &step.deferred,
            batch: scx.batch.map(|b| InBatch {
                results_read: input.result_read,
                ..b
            }),
            wake: scx.wake,
            attempt: scx.attempt,
            idempotency_key: scx.key,
            hooks: hooks.as_ref().map(|h| h as &dyn DataHooks),
            flow_tx: scx.flow_tx,
            calls: self
                .registry
                .calls()
                .map(|c| c.as_ref() as &dyn sluice_action::Calls),
            inbox: Some(&StoreInbox(self.store.as_ref())),
        };
        let options = sluice_expr::data::to_json(input.options);
        let Outcome {
            payload,
            logs,
            tokens,
            items,
            concurrency,
            effect,
        } = entry
            .action
            .run_json(cx, &options)
            .await
            .map_err(|e| (e, Vec::new()))?;
        let mut payload = payload.map(into_val);
        let items = items.map(|list| list.into_iter().map(into_val).collect());
        let suspend = match effect {
            None => None,
            Some(Effect::Sleep { ms }) => Some(Suspend::Sleep {
                until: after_ms(ms),
            }),
            Some(Effect::WaitEvent {
                event_type,
                source,
                correlation,
                timeout_ms,
            }) => Some(Suspend::Event {
                event_type,
                source,
                correlation,
                timeout_at: timeout_ms.map(after_ms),
            }),
            Some(Effect::StartFlow {
                flow: flow_id,
                input,
                wait,
                each,
            }) => {
                let started = match each {
                    None => self.subflow(flow, fo, scx, &flow_id, input, wait).await,
                    Some(each) => self.subflows(flow, fo, scx, &flow_id, input, each).await,
                };
                match started {
                    Ok(started) => payload = Some(into_val(started)),
                    Err(e) => return Err((e, logs)),
                }
                None
            }
        };
        Ok(Acted {
            payload,
            logs,
            tokens,
            items,
            concurrency,
            suspend,
        })
    }
}

/// The step's input to its action, as `act` hands it over.
struct ActionInput<'a> {
    program: &'a sluice_expr::Input<'a>,
    options: &'a Val,
    result_read: bool,
}

/// Step 1: the step's input, `stateDataFilter.input` applied, and the run's
/// event merged when the step consumes it (a `wait` step's filter is for
/// the event it waits for).
#[allow(clippy::result_large_err)]
fn step_input<'d>(
    flow: &Flow,
    step: &Step,
    state: &'d Val,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Cow<'d, Val>, Failed> {
    let none = Val::Null;
    let data = filter_or_keep(step.state_filter.input.as_ref(), state, fo, limits)
        .map_err(|m| Failed::data(&none, format!("stateDataFilter.input: {m}")))?;
    let Some(ef) = step.event_filter.as_ref().filter(|_| step.kind != WAIT) else {
        return Ok(data);
    };
    let Some(ev) = &fo.event else {
        return Err(Failed::data(
            &none,
            "the step has an eventDataFilter, but the run was not started by an event".to_owned(),
        ));
    };
    let merged = apply_event(
        ef,
        flow.trigger.data_only,
        ev,
        data.into_owned(),
        fo,
        limits,
    )
    .map_err(|m| Failed::data(&none, m))?;
    Ok(Cow::Owned(merged))
}

/// Step 2: the action's input, built by `inputMappings` or selected by
/// `actionDataFilter.fromStateData` (or the step's input as it is).
#[allow(clippy::result_large_err)]
fn action_input<'d>(
    step: &Step,
    data: &'d Val,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Cow<'d, Val>, Failed> {
    let none = Val::Null;
    if let Some(maps) = &step.input_mappings {
        return sluice_expr::mapping::extract_val(data, maps)
            .map(Cow::Owned)
            .map_err(|e| Failed::data(&none, format!("inputMappings: {e}")));
    }
    filter_or_keep(
        step.action_filter.from_state_data.as_ref(),
        data,
        fo,
        limits,
    )
    .map_err(|m| Failed::data(&none, format!("actionDataFilter.fromStateData: {m}")))
}

/// Steps 4 and 5 for one result: how it meets the step's input (merged,
/// mapped, or replacing it; an event through its filter), then
/// `stateDataFilter.output`.
struct Settle<'a> {
    flow: &'a Flow,
    step: &'a Step,
    /// The step's input.
    data: &'a Val,
    fo: &'a FlowObject,
    limits: &'a Limits,
    /// Whether anything reads the state data made (else it is only checked).
    state_read: bool,
    /// For a failure's record.
    options: &'a Val,
    logs: &'a [String],
}

impl Settle<'_> {
    fn fail(&self, message: String, incident: bool) -> Failed {
        Failed {
            options: self.options.clone(),
            error: ActionError::data(message),
            logs: self.logs.to_vec(),
            incident,
        }
    }

    /// The state data after a step whose result is `payload`.
    #[allow(clippy::result_large_err)]
    fn settle(&self, payload: Option<&Val>) -> Result<Val, Failed> {
        let (step, data, fo, limits) = (self.step, self.data, self.fo, self.limits);
        let mapped = step.input_mappings.is_some() || step.output_mappings.is_some();
        if !self.state_read {
            // Without filters or mappings of the result, only the merge
            // can fail.
            if let (false, UnmappedResults::Merge, true, Some(p)) = (
                mapped,
                self.flow.unmapped_results,
                step.action_filter.use_results,
                payload,
            ) {
                sluice_expr::merge::fits_val(data, p, ".")
                    .map_err(|e| self.fail(e.to_string(), false))?;
            }
            return Ok(Val::Null);
        }
        let new_state = if let (WAIT, Some(event)) = (step.kind.as_str(), payload) {
            // The event a `wait` step received meets the state data
            // through its eventDataFilter (its `data`, merged at the top
            // by default).
            let f = step.event_filter.clone().unwrap_or_default();
            apply_event(&f, true, event, data.clone(), fo, limits)
                .map_err(|m| self.fail(m, false))?
        } else if mapped {
            self.mapped(payload)?
        } else {
            self.unmapped(payload)?
        };
        filter_or_keep_owned(step.state_filter.output.as_ref(), new_state, fo, limits)
            .map_err(|m| self.fail(format!("stateDataFilter.output: {m}"), false))
    }

    /// A step with mappings: `outputMappings` write into its input.
    #[allow(clippy::result_large_err)]
    fn mapped(&self, payload: Option<&Val>) -> Result<Val, Failed> {
        match (&self.step.output_mappings, payload) {
            (Some(outs), Some(p)) => {
                sluice_expr::mapping::merge_into_val(p, self.data.clone(), outs)
                    .map_err(|e| self.fail(format!("outputMappings: {e}"), false))
            }
            (Some(_), None) => Err(self.fail(
                "incident: the step has output mappings but its action returned no payload"
                    .to_owned(),
                true,
            )),
            (None, Some(p)) => Ok(p.clone()),
            (None, None) => Ok(self.data.clone()),
        }
    }

    /// A step without mappings: the flow's `unmappedResults` (merged at
    /// `toStateData` after `results`, by default, or replacing it).
    #[allow(clippy::result_large_err)]
    fn unmapped(&self, payload: Option<&Val>) -> Result<Val, Failed> {
        let (step, fo, limits) = (self.step, self.fo, self.limits);
        let p = match (self.flow.unmapped_results, payload) {
            (_, None) => return Ok(self.data.clone()),
            (UnmappedResults::Replace, Some(p)) => return Ok(p.clone()),
            (UnmappedResults::Merge, Some(_)) if !step.action_filter.use_results => {
                return Ok(self.data.clone());
            }
            (UnmappedResults::Merge, Some(p)) => p,
        };
        // A `results` filter that selects nothing (no output, or null)
        // leaves nothing to merge, like the state filters.
        // The result is kept for the step's record: merged by reference,
        // only what the state data gains is copied.
        let result = match &step.action_filter.results {
            None => Some(Cow::Borrowed(p)),
            Some(prog) => eval(prog, p, fo, limits)
                .map_err(|m| self.fail(format!("actionDataFilter.results: {m}"), false))?
                .filter(|v| !matches!(v, Val::Null))
                .map(Cow::Owned),
        };
        let mut doc = self.data.clone();
        match (result, &step.action_filter.to_state_data) {
            (None, _) => {}
            (Some(result), None) => {
                merge_val(&mut doc, &result, ".").map_err(|e| self.fail(e.to_string(), false))?;
            }
            (Some(result), Some((text, path))) => {
                let mut target = path.get(&doc).cloned().unwrap_or(Val::Null);
                merge_val(&mut target, &result, text)
                    .map_err(|e| self.fail(e.to_string(), false))?;
                path.set(&mut doc, target);
            }
        }
        Ok(doc)
    }
}

/// `notify` steps' notifications, kept in the run's store.
struct StoreInbox<'s, S>(&'s S);

impl<S: Store> sluice_action::notify::Inbox for StoreInbox<'_, S> {
    fn send(
        &self,
        note: sluice_action::notify::Note,
    ) -> sluice_action::BoxFuture<'_, Result<bool, ActionError>> {
        Box::pin(async move {
            let n = sluice_store::Notification {
                id: note.id,
                at: sluice_store::now_micros(),
                user: note.user,
                role: note.role,
                subject: note.subject,
                message: note.message,
                run_id: Some(note.run_id),
                step_key: Some(note.step_key),
            };
            self.0
                .notify(&n)
                .await
                .map_err(|e| ActionError::new(sluice_action::Blame::Store, e.to_string()))
        })
    }
}
