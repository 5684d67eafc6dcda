//! A record's patches made ready when it hands its envelope over: templates
//! rendered and parsed by the record's own task, except those that read
//! `$tokens`, left as holes for the writer.

use super::*;

/// A patch of a waiting envelope. The record's own run templates its
/// patches when it hands its envelope over (so that this work is not the
/// writer's), except the templates that read `$tokens`: the patches before
/// may set tokens, so those are rendered just before their patch is
/// written. Nothing else a template reads changes inside an envelope.
pub(super) enum Pending {
    Ready(Patch),
    /// Made from a template with a layout (see [`Layout`]): its values.
    Lean(Lean),
    /// Only values of `properties` or `criteria` read `$tokens`: the patch
    /// without them, and them, rendered into it just before it is written.
    Holes(Patch, Vec<Hole>),
    /// Templates reading `$tokens` are left (elsewhere than in values).
    Later(TemplateValue),
    /// Templating failed: the envelope fails at this patch, the patches
    /// before it written and rolled back, as if templated when written.
    Failed(ActionError),
}

/// What made a patch: the template of the usual shape it was built from
/// (its address, which stays while the flow lives) and the path of
/// children down to it. Patches made alike have the same operation,
/// collection and fields in the same order, known without comparing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape(usize, u64);

impl Shape {
    /// Not known.
    pub(super) const NONE: Shape = Shape(0, 0);

    /// A patch built from template `t` (see [`build`]).
    pub(super) fn of(t: &TemplateValue) -> Self {
        Shape(std::ptr::from_ref(t) as usize, 1)
    }

    /// Its child `c`'s (each child one hexadecimal digit of the path, as
    /// deep as 15 levels of up to 15 children).
    pub(super) fn child(self, c: usize) -> Self {
        match (self.0, u64::try_from(c)) {
            (0, _) => Self::NONE,
            (_, Ok(c)) if c < 15 && self.1 < 1 << 59 => Shape(self.0, self.1 * 16 + c + 1),
            _ => Self::NONE,
        }
    }

    /// Whether both patches are known to be made alike.
    pub(super) fn alike(self, other: Self) -> bool {
        self.0 != 0 && self == other
    }
}

/// A value of a patch's `properties` (or `criteria`) left to render.
pub(super) struct Hole {
    pub(super) criteria: bool,
    pub(super) key: String,
    pub(super) value: TemplateValue,
}

/// Whether patch template `t` has the usual shape, which [`build`] makes
/// into a [`Patch`] directly: `op` and `collection` written out, values of
/// `properties` and `criteria` templated (at the top only, those reading
/// `$tokens` too), `setTokens` and `parentKey` written out, children of
/// the same shape or written out. Any other shape is rendered as a value
/// and parsed, for the same result and the same messages.
pub(super) fn usual(t: &TemplateValue, top: bool) -> bool {
    let TemplateValue::Object(fields) = t else {
        return false;
    };
    let has = |key: &str| fields.iter().any(|(k, _)| k == key);
    has("op")
        && has("collection")
        && fields.iter().all(|(k, v)| match (k.as_str(), v) {
            ("op", TemplateValue::Const(Value::String(op))) => PatchOp::of_word(op).is_some(),
            ("collection", TemplateValue::Const(Value::String(_))) => true,
            ("properties" | "criteria", TemplateValue::Const(Value::Object(_))) => true,
            ("properties" | "criteria", TemplateValue::Object(values)) => {
                values.iter().all(|(_, v)| match v {
                    TemplateValue::Const(_) => true,
                    TemplateValue::Template(t) => top || !reads_tokens(t),
                    _ => false,
                })
            }
            ("setTokens", TemplateValue::Const(Value::Object(m))) => {
                m.values().all(Value::is_string)
            }
            ("parentKey", TemplateValue::Const(v)) => v.is_string() || v.is_null(),
            ("children", TemplateValue::Const(Value::Array(_))) => true,
            ("children", TemplateValue::Array(items)) => items
                .iter()
                .all(|c| matches!(c, TemplateValue::Const(_)) || usual(c, false)),
            _ => false,
        })
}

/// Patch `i` of its record, from a template of the usual shape (see
/// [`usual`]): its templates rendered, but for those reading `$tokens`,
/// left as `holes` (a child has none).
pub(super) fn build(
    i: usize,
    t: &TemplateValue,
    cx: &sluice_action::ActionCx<'_>,
    holes: &mut Vec<Hole>,
) -> Result<Patch, ActionError> {
    let TemplateValue::Object(fields) = t else {
        return Err(unmatched());
    };
    let mut patch = Patch {
        op: PatchOp::Create,
        collection: String::new(),
        properties: Map::new(),
        criteria: Map::new(),
        set_tokens: BTreeMap::new(),
        parent_key: None,
        children: Vec::new(),
    };
    for (k, v) in fields {
        match (k.as_str(), v) {
            ("op", TemplateValue::Const(Value::String(op))) => {
                patch.op = PatchOp::of_word(op).ok_or_else(unmatched)?;
            }
            ("collection", TemplateValue::Const(Value::String(c))) => patch.collection = c.clone(),
            ("properties" | "criteria", v) => {
                let criteria = k == "criteria";
                let into = if criteria {
                    &mut patch.criteria
                } else {
                    &mut patch.properties
                };
                match v {
                    TemplateValue::Const(Value::Object(m)) => into.clone_from(m),
                    TemplateValue::Object(values) => {
                        if into.is_empty() {
                            *into = Map::with_capacity(values.len());
                        }
                        for (key, v) in values {
                            let value = match v {
                                TemplateValue::Template(t) if reads_tokens(t) => {
                                    holes.push(Hole {
                                        criteria,
                                        key: key.clone(),
                                        value: v.clone(),
                                    });
                                    // Where the rendered value goes, in its place.
                                    Value::Null
                                }
                                TemplateValue::Template(t) => {
                                    t.render(cx.program_input, cx.scope, cx.limits)?
                                }
                                TemplateValue::Const(c) => c.clone(),
                                _ => return Err(unmatched()),
                            };
                            into.insert(key.clone(), value);
                        }
                    }
                    _ => return Err(unmatched()),
                }
            }
            ("setTokens", TemplateValue::Const(Value::Object(m))) => {
                patch.set_tokens = m
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|f| (k.clone(), f.to_owned())))
                    .collect();
            }
            ("parentKey", TemplateValue::Const(v)) => {
                patch.parent_key = v.as_str().map(str::to_owned)
            }
            ("children", TemplateValue::Const(Value::Array(a))) => {
                for c in a {
                    patch.children.push(templated(i, c.clone())?);
                }
            }
            ("children", TemplateValue::Array(items)) => {
                for c in items {
                    patch.children.push(match c {
                        TemplateValue::Const(c) => templated(i, c.clone())?,
                        c => build(i, c, cx, holes)?,
                    });
                }
            }
            _ => return Err(unmatched()),
        }
    }
    Ok(patch)
}

/// Keep in `scope` the flow-object variables `templates` read (but
/// `$tokens`, which the writer gives); whether one of them can read the input.
pub(super) fn collect_vars<'t>(
    scope: &mut MapScope,
    from: &dyn sluice_expr::Scope,
    templates: impl IntoIterator<Item = &'t Template>,
) -> bool {
    let mut reads_input = false;
    for t in templates {
        reads_input |= t.reads_input();
        for n in t.programs().flat_map(|p| p.vars()) {
            if n != "tokens"
                && !scope.0.contains_key(n)
                && let Some(v) = from.get(n)
            {
                scope.0.insert(n.clone(), v);
            }
        }
    }
    reads_input
}

/// A patch templated before any is written.
pub(super) fn ready(i: usize, v: Value) -> Pending {
    match templated(i, v) {
        Ok(p) => Pending::Ready(p),
        Err(e) => Pending::Failed(e),
    }
}

/// Whether a template must wait for the tokens of the envelope's earlier patches.
pub(super) fn reads_tokens(t: &Template) -> bool {
    t.mentions("tokens")
}
