//! The connections of a flow file: databases (no `type`, a `url` whose
//! scheme names the database) and connections of the types connectors
//! register (`type: http`, ...), checked by their connector; and whether a
//! step's `connection` names one of the type it takes.

use super::*;
use crate::flow::SQL_CONNECTION;

impl Checker<'_> {
    pub(super) fn connections(&mut self, node: Option<&Node>) -> BTreeMap<String, Value> {
        let Some(n) = node else {
            return BTreeMap::new();
        };
        let Some(entries) = n.as_map() else {
            self.err(
                n.span.clone(),
                format!(
                    "`connections` must be a mapping of names to connections, found {}",
                    n.kind_name()
                ),
                "expected a mapping",
            );
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            if !is_identifier(&k.name) {
                self.err(
                    k.span.clone(),
                    format!("connection name `{}` must be an identifier", k.name),
                    "invalid name",
                );
            }
            let kind = match v.get("type") {
                None => {
                    self.database(&k.name, v);
                    SQL_CONNECTION.to_owned()
                }
                Some(t) => self.typed(&k.name, v, t),
            };
            self.connection_names.push(k.name.clone());
            self.connection_types.insert(k.name.clone(), kind);
            self.connection_values.insert(k.name.clone(), v.to_json());
            out.insert(k.name.clone(), v.to_json());
        }
        out
    }

    /// A database connection: a `url` of a known scheme.
    fn database(&mut self, name: &str, v: &Node) {
        match v.get("url") {
            Some(u) if u.as_str().is_some() => {
                let url = u.as_str().unwrap_or_default();
                let known = ["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"];
                if !url.starts_with("${env:") && !known.iter().any(|p| url.starts_with(p)) {
                    let mut help = "use sqlite:, postgres:, mysql: or mariadb:, or ${env:NAME} to take the URL from the environment".to_owned();
                    if url.starts_with("http:") || url.starts_with("https:") {
                        help =
                            "an HTTP API is a connection of `type: http` with a `baseUrl`".into();
                    }
                    self.err_help(
                        u.span.clone(),
                        format!("connection `{name}`: unsupported URL scheme"),
                        "unknown scheme",
                        help,
                    );
                }
            }
            Some(u) => self.err(
                u.span.clone(),
                format!("connection `{name}`: `url` must be a string"),
                "expected a string",
            ),
            None => self.err(
                v.span.clone(),
                format!("connection `{name}` has no `url`"),
                "missing `url`",
            ),
        }
        if let Some(m) = v.as_map() {
            self.check_keys(m, &["url"], "a connection");
        }
    }

    /// A connection of a type a connector registered, checked by it.
    fn typed(&mut self, name: &str, v: &Node, t: &Node) -> String {
        let kind = t.as_str().unwrap_or_default().to_owned();
        if kind == SQL_CONNECTION {
            self.database(name, v);
            return kind;
        }
        match self.catalog.connection(&kind) {
            Some(spec) => {
                self.option_issues(
                    v,
                    (spec.check)(&v.to_json()),
                    &format!("connection `{name}`"),
                );
            }
            None => {
                let mut kinds = self.catalog.connection_kinds();
                kinds.insert(0, SQL_CONNECTION);
                self.err_help(
                    t.span.clone(),
                    format!("connection `{name}`: unknown connection type `{kind}`"),
                    "unknown type",
                    format!("connection types: {}", kinds.join(", ")),
                );
            }
        }
        kind
    }

    /// What the connector of the connection a step names says of the
    /// step's options (a `rest.*` step's `collection` among its resources).
    pub(super) fn connection_use(&mut self, kind: &str, options: &Value, node: &Node, who: &str) {
        let Some(Value::String(c)) = options.get("connection") else {
            return;
        };
        let (Some(t), Some(v)) = (self.connection_types.get(c), self.connection_values.get(c))
        else {
            return;
        };
        let Some(spec) = self.catalog.connection(t) else {
            return;
        };
        let issues = (spec.uses)(kind, options, v);
        self.option_issues(node, issues, &format!("{who} ({kind})"));
    }

    /// Whether the `connection` option (in `options`, written under
    /// `node`), if any, names a connection of the flow, of type `expected`
    /// when given; reported when not.
    pub(super) fn known_connection(
        &mut self,
        options: &Value,
        node: &Node,
        who: &str,
        expected: Option<&str>,
    ) -> bool {
        let Some(Value::String(c)) = options.get("connection") else {
            return true;
        };
        let span = node
            .get("connection")
            .map(|n| n.span.clone())
            .unwrap_or_else(|| node.span.clone());
        if let Some(kind) = self.connection_types.get(c) {
            return match expected {
                Some(want) if want != kind => {
                    let names: Vec<&str> = self
                        .connection_types
                        .iter()
                        .filter(|(_, k)| *k == want)
                        .map(|(n, _)| n.as_str())
                        .collect();
                    let help = if names.is_empty() {
                        format!("declare a connection of type `{want}`")
                    } else {
                        format!("`{want}` connections: {}", names.join(", "))
                    };
                    self.err_help(
                        span,
                        format!("{who}: connection `{c}` is of type `{kind}`, and this step takes a `{want}` connection"),
                        "wrong type of connection",
                        help,
                    );
                    false
                }
                _ => true,
            };
        }
        let help = if self.connection_names.is_empty() {
            "declare it under `connections:`".to_owned()
        } else {
            format!("connections: {}", self.connection_names.join(", "))
        };
        self.err_help(
            span,
            format!("{who}: no connection `{c}` in the flow"),
            "unknown connection",
            help,
        );
        false
    }
}
