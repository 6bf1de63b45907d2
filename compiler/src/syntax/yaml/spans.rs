//! Positions in the YAML file: serde-saphyr's locations (byte offsets, else
//! line:column) as byte spans clamped to character boundaries, and where
//! the reader points at a node (whole scalars, a collection's first line).

use super::node::{YNode, YVal};
use super::read::Reader;
use crate::ast::Span;

/// Byte offset of 1-based `line`/`column` (in characters); clamped to the file.
pub(super) fn line_col_offset(src: &str, line: u64, column: u64) -> usize {
    if line == 0 {
        return 0;
    }
    let mut start = 0usize;
    for _ in 1..line {
        match src[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return src.len(),
        }
    }
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let col = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
    src[start..line_end]
        .char_indices()
        .nth(col)
        .map_or(line_end, |(i, _)| start + i)
}

/// Clamps a span to the file and widens it to character boundaries.
pub(super) fn snap(src: &str, s: Span) -> Span {
    let mut start = s.start.min(src.len());
    while !src.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = s.end.clamp(start, src.len());
    while !src.is_char_boundary(end) {
        end += 1;
    }
    Span::new(start, end)
}

impl Reader<'_> {
    pub(super) fn start(&self, n: &YNode) -> usize {
        let by_byte = n
            .loc
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok())
            .filter(|&o| o <= self.src.len() && self.src.is_char_boundary(o));
        by_byte.unwrap_or_else(|| line_col_offset(self.src, n.loc.line(), n.loc.column()))
    }

    /// The whole node (collections: up to the end of their last scalar).
    pub(super) fn span(&self, n: &YNode) -> Span {
        let start = self.start(n);
        let end = n.end.unwrap_or(start).max(start);
        snap(self.src, Span::new(start, end))
    }

    /// Where to point at a node: scalars whole, collections by their first line.
    pub(super) fn head(&self, n: &YNode) -> Span {
        let s = self.span(n);
        match n.val {
            YVal::Seq(_) | YVal::Map(_) => {
                let line_end = self.src[s.start..]
                    .find('\n')
                    .map_or(self.src.len(), |i| s.start + i);
                let end = s.end.min(line_end).max(s.start + 1);
                snap(self.src, Span::new(s.start, end))
            }
            _ => snap(self.src, Span::new(s.start, s.end.max(s.start + 1))),
        }
    }

    pub(super) fn join(&self, a: &YNode, b: &YNode) -> Span {
        let (a, b) = (self.span(a), self.span(b));
        Span::new(a.start.min(b.start), a.end.max(b.end))
    }
}
