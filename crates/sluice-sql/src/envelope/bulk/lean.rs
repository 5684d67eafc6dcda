//! Lean patches: a record's patch made from a template of the usual shape
//! is kept as its values alone, in the template's order; what every
//! record's patch made from that template has alike (the operation, the
//! collection, the keys, the tokens it sets, the parent's key and the
//! children's layouts) is one [`Layout`] they share. A record then builds
//! no map, clones no key and hashes none; the writer reads a patch of
//! either kind through a [`PatchRef`].

use super::*;

/// What every patch made from one template has alike.
pub(super) struct Layout {
    op: PatchOp,
    collection: String,
    /// The keys of `properties`, then those of `criteria`.
    keys: Vec<String>,
    /// How many of `keys` are those of `properties`.
    props: usize,
    set_tokens: BTreeMap<String, String>,
    parent_key: Option<String>,
    /// The values left to the writer (they read `$tokens`): their place
    /// in `keys` and their template. A child has none.
    pub(super) holes: Vec<(usize, TemplateValue)>,
    children: Vec<Layout>,
}

/// A record's patch made from a template whose [`Layout`] is known: its
/// values, in the order of the layout's keys (a hole is null until the
/// writer renders it), and its children's.
pub(super) struct Lean {
    pub(super) values: Vec<Value>,
    children: Vec<Lean>,
}

/// The field `key` of a template object.
fn field<'t>(fields: &'t [(String, TemplateValue)], key: &str) -> Option<&'t TemplateValue> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The keys of a `properties` or `criteria` template, and whether the
/// value of each reads `$tokens`.
fn keys_of(v: Option<&TemplateValue>) -> Option<Vec<(&String, bool)>> {
    Some(match v {
        None => Vec::new(),
        Some(TemplateValue::Const(Value::Object(m))) => m.keys().map(|k| (k, false)).collect(),
        Some(TemplateValue::Object(values)) => values
            .iter()
            .map(|(k, v)| match v {
                TemplateValue::Const(_) => Some((k, false)),
                TemplateValue::Template(t) => Some((k, reads_tokens(t))),
                _ => None,
            })
            .collect::<Option<_>>()?,
        Some(_) => return None,
    })
}

impl Layout {
    /// The layout of patch template `t`, when it has the usual shape (see
    /// [`usual`]) down to its children, each a template itself.
    pub(super) fn of(t: &TemplateValue, top: bool) -> Option<Self> {
        if !usual(t, top) {
            return None;
        }
        let TemplateValue::Object(fields) = t else {
            return None;
        };
        let op = match field(fields, "op") {
            Some(TemplateValue::Const(Value::String(op))) => PatchOp::of_word(op)?,
            _ => return None,
        };
        let collection = match field(fields, "collection") {
            Some(TemplateValue::Const(Value::String(c))) => c.clone(),
            _ => return None,
        };
        let props = keys_of(field(fields, "properties"))?;
        let criteria = keys_of(field(fields, "criteria"))?;
        let mut keys = Vec::with_capacity(props.len() + criteria.len());
        let mut holes = Vec::new();
        for (at, (k, hole)) in props.iter().chain(&criteria).enumerate() {
            if *hole {
                let value = match field(
                    fields,
                    if at < props.len() {
                        "properties"
                    } else {
                        "criteria"
                    },
                ) {
                    Some(TemplateValue::Object(values)) => field(values, k)?.clone(),
                    _ => return None,
                };
                holes.push((at, value));
            }
            keys.push((*k).clone());
        }
        let set_tokens = match field(fields, "setTokens") {
            None => BTreeMap::new(),
            Some(TemplateValue::Const(Value::Object(m))) => m
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|f| (k.clone(), f.to_owned())))
                .collect(),
            Some(_) => return None,
        };
        let parent_key = match field(fields, "parentKey") {
            None => None,
            Some(TemplateValue::Const(v)) => v.as_str().map(str::to_owned),
            Some(_) => return None,
        };
        let children = match field(fields, "children") {
            None => Vec::new(),
            Some(TemplateValue::Array(items)) => items
                .iter()
                .map(|c| Layout::of(c, false))
                .collect::<Option<_>>()?,
            Some(_) => return None,
        };
        Some(Self {
            op,
            collection,
            props: props.len(),
            keys,
            set_tokens,
            parent_key,
            holes,
            children,
        })
    }
}

impl Lean {
    /// Record's patch from template `t`, which has a [`Layout`]: its
    /// templates rendered but for those reading `$tokens` (null in their
    /// place), whose variables are kept in `scope` (`reads_input`: one of
    /// them can read the input).
    pub(super) fn build(
        t: &TemplateValue,
        cx: &sluice_action::ActionCx<'_>,
        scope: &mut MapScope,
        reads_input: &mut bool,
    ) -> Result<Self, ActionError> {
        let TemplateValue::Object(fields) = t else {
            return Err(unmatched());
        };
        let mut values = Vec::new();
        for part in ["properties", "criteria"] {
            match field(fields, part) {
                None => {}
                Some(TemplateValue::Const(Value::Object(m))) => values.extend(m.values().cloned()),
                Some(TemplateValue::Object(items)) => {
                    values.reserve(items.len());
                    for (_, v) in items {
                        values.push(match v {
                            TemplateValue::Template(t) if reads_tokens(t) => {
                                *reads_input |= collect_vars(scope, cx.scope, [&**t]);
                                Value::Null
                            }
                            TemplateValue::Template(t) => {
                                t.render(cx.program_input, cx.scope, cx.limits)?
                            }
                            TemplateValue::Const(c) => c.clone(),
                            _ => return Err(unmatched()),
                        });
                    }
                }
                Some(_) => return Err(unmatched()),
            }
        }
        let children = match field(fields, "children") {
            Some(TemplateValue::Array(items)) => items
                .iter()
                .map(|c| Lean::build(c, cx, scope, reads_input))
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        Ok(Self { values, children })
    }
}

/// The layouts of a batch's lean patches, by shape (`None`: patches of
/// that shape are not lean).
pub(super) type Layouts = Vec<(Shape, Option<Arc<Layout>>)>;

/// The layout made for shape `s`.
pub(super) fn layout_of(layouts: &Layouts, s: Shape) -> Option<&Layout> {
    layouts
        .iter()
        .find(|(k, _)| k.alike(s))
        .and_then(|(_, l)| l.as_deref())
}

/// A patch as the writer reads it: made whole, or lean with its layout.
#[derive(Clone, Copy)]
pub(super) enum PatchRef<'p> {
    Full(&'p Patch),
    Lean(&'p Lean, &'p Layout),
}

impl<'p> PatchRef<'p> {
    pub(super) fn op(self) -> PatchOp {
        match self {
            Self::Full(p) => p.op,
            Self::Lean(_, l) => l.op,
        }
    }

    pub(super) fn collection(self) -> &'p str {
        match self {
            Self::Full(p) => &p.collection,
            Self::Lean(_, l) => &l.collection,
        }
    }

    pub(super) fn properties(self) -> Props<'p> {
        match self {
            Self::Full(p) => Props::Map(&p.properties),
            Self::Lean(b, l) => Props::Lean(&l.keys[..l.props], &b.values[..l.props]),
        }
    }

    pub(super) fn criteria(self) -> Props<'p> {
        match self {
            Self::Full(p) => Props::Map(&p.criteria),
            Self::Lean(b, l) => Props::Lean(&l.keys[l.props..], &b.values[l.props..]),
        }
    }

    pub(super) fn set_tokens(self) -> &'p BTreeMap<String, String> {
        match self {
            Self::Full(p) => &p.set_tokens,
            Self::Lean(_, l) => &l.set_tokens,
        }
    }

    pub(super) fn parent_key(self) -> Option<&'p String> {
        match self {
            Self::Full(p) => p.parent_key.as_ref(),
            Self::Lean(_, l) => l.parent_key.as_ref(),
        }
    }

    /// How many children it has.
    pub(super) fn children(self) -> usize {
        match self {
            Self::Full(p) => p.children.len(),
            Self::Lean(b, _) => b.children.len(),
        }
    }

    pub(super) fn child(self, c: usize) -> Option<Self> {
        match self {
            Self::Full(p) => p.children.get(c).map(Self::Full),
            Self::Lean(b, l) => Some(Self::Lean(b.children.get(c)?, l.children.get(c)?)),
        }
    }
}

/// The `properties` (or `criteria`) of a patch: a map, or a lean patch's
/// keys and values side by side.
#[derive(Clone, Copy)]
pub(super) enum Props<'p> {
    Map(&'p Map<String, Value>),
    Lean(&'p [String], &'p [Value]),
}

/// The keys and values of [`Props`], in order.
pub(super) enum PropsIter<'p> {
    Map(serde_json::map::Iter<'p>),
    Lean(std::iter::Zip<std::slice::Iter<'p, String>, std::slice::Iter<'p, Value>>),
}

impl<'p> Iterator for PropsIter<'p> {
    type Item = (&'p String, &'p Value);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Map(i) => i.next(),
            Self::Lean(i) => i.next(),
        }
    }
}

impl<'p> Props<'p> {
    pub(super) fn iter(self) -> PropsIter<'p> {
        match self {
            Self::Map(m) => PropsIter::Map(m.iter()),
            Self::Lean(k, v) => PropsIter::Lean(k.iter().zip(v.iter())),
        }
    }

    pub(super) fn keys(self) -> impl Iterator<Item = &'p String> {
        self.iter().map(|(k, _)| k)
    }

    pub(super) fn get(self, key: &str) -> Option<&'p Value> {
        match self {
            Self::Map(m) => m.get(key),
            Self::Lean(k, v) => k.iter().position(|k| k == key).and_then(|i| v.get(i)),
        }
    }

    pub(super) fn contains_key(self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn len(self) -> usize {
        match self {
            Self::Map(m) => m.len(),
            Self::Lean(k, _) => k.len(),
        }
    }

    /// As a map (a row written alone).
    pub(super) fn to_map(self) -> Cow<'p, Map<String, Value>> {
        match self {
            Self::Map(m) => Cow::Borrowed(m),
            Self::Lean(..) => {
                Cow::Owned(self.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
        }
    }
}
