//! The three databases behind a connection: how a URL names one, how each
//! quotes identifiers and numbers its placeholders, and a table as the
//! database describes it.

use std::collections::BTreeMap;

/// The database behind a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    MySql,
}

impl Backend {
    /// The backend a URL names.
    pub fn of(url: &str) -> Option<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        Some(match scheme {
            "sqlite" => Self::Sqlite,
            "postgres" | "postgresql" => Self::Postgres,
            "mysql" | "mariadb" => Self::MySql,
            _ => return None,
        })
    }

    /// Quote an identifier that has been validated.
    pub(crate) fn quote(self, ident: &str) -> String {
        match self {
            Self::MySql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// The placeholder for the `n`th parameter (from 1).
    pub(crate) fn placeholder(self, n: usize) -> String {
        let mut s = String::new();
        self.push_placeholder(&mut s, n);
        s
    }

    /// [`Backend::placeholder`], written at the end of `out`.
    pub(crate) fn push_placeholder(self, out: &mut String, n: usize) {
        match self {
            Self::Postgres => {
                use std::fmt::Write;
                let _ = write!(out, "${n}");
            }
            _ => out.push('?'),
        }
    }
}

/// A table as the database describes it.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// column -> database type (lower case)
    pub(crate) cols: BTreeMap<String, String>,
    /// the primary key's columns
    pub(crate) pk: Vec<String>,
}
