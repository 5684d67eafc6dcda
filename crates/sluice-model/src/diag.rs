//! Diagnostics: every problem found in a flow file, with its place.

use crate::node::Span;
use std::fmt;
use std::sync::Arc;

/// A source file: its name as the user gave it, and its text.
#[derive(Debug)]
pub struct Source {
    /// The path as given on the command line (or another name).
    pub name: String,
    /// The whole text.
    pub text: String,
}

impl Source {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }
}

/// One problem in a flow file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong, naming the step, the option and what was expected.
    pub message: String,
    /// Where (byte range in the source).
    pub span: Span,
    /// A short label drawn under the span.
    pub label: String,
    /// How to fix it, when there is something useful to say.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A problem at `span`.
    pub fn new(span: Span, message: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            span,
            label: label.into(),
            help: None,
        }
    }

    /// Add a hint.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every problem found in one flow file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics {
    /// The file.
    pub file: Arc<Source>,
    /// The problems, in source order.
    pub items: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    /// One line per problem: `file:line:column: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let (line, col) = self.file.line_col(d.span.start);
            write!(f, "{}:{line}:{col}: {}", self.file.name, d.message)?;
            if let Some(h) = &d.help {
                write!(f, " (help: {h})")?;
            }
        }
        Ok(())
    }
}

impl Diagnostics {
    /// The problems as miette reports, for rich rendering.
    pub fn reports(&self) -> Vec<Report> {
        self.items
            .iter()
            .map(|d| {
                let (line, col) = self.file.line_col(d.span.start);
                Report {
                    message: format!("{}:{line}:{col}: {}", self.file.name, d.message),
                    src: miette::NamedSource::new(self.file.name.clone(), self.file.text.clone()),
                    span: (d.span.start, d.span.end.saturating_sub(d.span.start)).into(),
                    label: d.label.clone(),
                    help: d.help.clone(),
                }
            })
            .collect()
    }
}

/// One diagnostic as miette renders it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct Report {
    message: String,
    #[source_code]
    src: miette::NamedSource<String>,
    #[label("{label}")]
    span: miette::SourceSpan,
    label: String,
    #[help]
    help: Option<String>,
}

/// Find where a part of a scalar's content sits in the source.
///
/// `node` is the scalar's span, `content` its parsed value and `part` a byte
/// range inside `content`. Plain and simply quoted scalars map exactly; for
/// other styles the part's text is searched within the scalar, and failing
/// that the whole scalar is returned.
pub fn locate_in_scalar(text: &str, node: &Span, content: &str, part: &Span) -> Span {
    let Some(region) = text.get(node.clone()) else {
        return node.clone();
    };
    let Some(needle) = content.get(part.clone()) else {
        return node.clone();
    };
    for skip in [0usize, 1] {
        if region.get(skip..).is_some_and(|r| r.starts_with(content)) {
            let start = node.start + skip + part.start;
            return start..start + needle.len();
        }
    }
    if !needle.is_empty()
        && let Some(i) = region.find(needle)
    {
        return node.start + i..node.start + i + needle.len();
    }
    node.clone()
}
