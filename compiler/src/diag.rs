//! Diagnostics: the one error type every stage reports in.
//!
//! Stages collect [`Diagnostic`]s (never stop at the first) into a
//! [`Diagnostics`] list; the CLI renders them with codespan-reporting, which
//! gives rustc-style output (file, line:col, labelled spans, notes). Tests
//! render without colour so snapshots are stable.
//!
//! codespan-reporting was picked over ariadne and miette: it is what naga uses,
//! it renders several labels per diagnostic cleanly, needs no global hook, and
//! its plain-text renderer is stable enough to pin in insta snapshots.

use crate::ast::Span;
use codespan_reporting::diagnostic as cr;
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

/// One problem found in a spec.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable code, e.g. `E0103`; listed in docs/qspec.md.
    pub code: &'static str,
    pub message: String,
    pub labels: Vec<Label>,
    /// Notes printed under the snippet; `help: ...` ones suggest a fix.
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    /// The main place the problem is.
    pub fn primary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: true,
        });
        self
    }

    /// Another place that explains it.
    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.notes.push(format!("help: {}", help.into()));
        self
    }

    /// Same code, message, notes and label places (spans compare by range here,
    /// unlike in the AST).
    pub fn same_as(&self, other: &Diagnostic) -> bool {
        self.code == other.code
            && self.message == other.message
            && self.notes == other.notes
            && self.labels.len() == other.labels.len()
            && self.labels.iter().zip(&other.labels).all(|(a, b)| {
                a.span.range() == b.span.range() && a.message == b.message && a.primary == b.primary
            })
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    fn to_codespan(&self, source_len: usize) -> cr::Diagnostic<()> {
        let severity = match self.severity {
            Severity::Error => cr::Severity::Error,
            Severity::Warning => cr::Severity::Warning,
        };
        let clamp = |s: Span| {
            let start = s.start.min(source_len);
            start..s.end.clamp(start, source_len)
        };
        cr::Diagnostic::new(severity)
            .with_code(self.code)
            .with_message(&self.message)
            .with_labels(
                self.labels
                    .iter()
                    .map(|l| {
                        let style = if l.primary {
                            cr::LabelStyle::Primary
                        } else {
                            cr::LabelStyle::Secondary
                        };
                        cr::Label::new(style, (), clamp(l.span)).with_message(&l.message)
                    })
                    .collect(),
            )
            .with_notes(self.notes.clone())
    }
}

/// All diagnostics of one run over one file, in the order they were found.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        // Several profiles can trigger the same structural problem: report it once.
        if !self.items.iter().any(|x| x.same_as(&d)) {
            self.items.push(d);
        }
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.items {
            self.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Renders every diagnostic against `source` as plain text (no colour).
    pub fn render_plain(&self, file_name: &str, source: &str) -> String {
        let file = SimpleFile::new(file_name, source);
        let config = term::Config::default();
        let mut out = String::new();
        for d in &self.items {
            let rendered = term::emit_into_string(&config, &file, &d.to_codespan(source.len()))
                .unwrap_or_else(|e| {
                    format!("error[{}]: {} (could not render: {e})\n", d.code, d.message)
                });
            out.push_str(&rendered);
        }
        out
    }

    /// Renders to stderr, coloured when stderr is a terminal.
    pub fn emit_stderr(&self, file_name: &str, source: &str) {
        use std::io::IsTerminal;
        use term::termcolor::{ColorChoice, StandardStream};
        let choice = if std::io::stderr().is_terminal() {
            ColorChoice::Auto
        } else {
            ColorChoice::Never
        };
        let mut stream = StandardStream::stderr(choice);
        let file = SimpleFile::new(file_name, source);
        let config = term::Config::default();
        for d in &self.items {
            if term::emit_to_write_style(&mut stream, &config, &file, &d.to_codespan(source.len()))
                .is_err()
            {
                eprintln!("error[{}]: {}", d.code, d.message);
            }
        }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics { items: vec![d] }
    }
}
