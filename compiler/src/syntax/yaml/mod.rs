//! The YAML twin of the `.qspec` language: YAML text <-> [`ast::Model`].
//!
//! Input: a YAML document ([`parse_yaml`]) or a model ([`print_yaml`]).
//! Output: the same [`ast::Model`] the `.qspec` parser builds for the same
//! model (spans point into the YAML file), or canonical YAML text.
//!
//! # Format
//!
//! The document is one mapping. Structure (maps, lists, names of sections) is
//! YAML; everything inside a value is a `.qspec` *fragment* written as a YAML
//! string and parsed with [`parse::parse_fragment`](super::parse::parse_fragment), so expressions, ops and
//! statements have exactly the `.qspec` syntax. Top-level keys, in the order
//! [`print_yaml`] writes them:
//!
//! ```yaml
//! model: toynet             # name (required)
//! input: 3x32x32            # shape (required)
//! classes: 10               # integer
//! quant:                    # ordered map: key -> expression (ints stay YAML ints)
//!   weights: dorefa
//!   acts: mpact(10)
//! init:                     # ordered map, as quant
//!   conv: kaiming_normal_fan_out
//!   linear: normal(0.001)
//! rules:                    # list of rules (`-name` switches one off)
//!   - quantize_after_add(aout)
//! lists:
//!   cover: [stem, blocks, head, fc]   # required, at least one word
//!   bind:                             # optional
//!     - w = wbit[i]
//!     - aout = abit[i + 1]
//! blocks:
//!   - name: cell
//!     params: [cout, stride, expansion = 4]   # optional: `name` or `name = default`
//!     body:                 # statements: strings (`x = ...`, `x += ...`,
//!       - if: stride != 1 or cin != cout      #   `return ...`) or `if` maps
//!         then:
//!           - "x = x -> bn -> conv(cout, kernel: stride, stride: stride) -> act(ain)"
//!         else: []          # optional; omitted when empty
//!       - identity = x
//!       - return y
//! stem: act(ain, dorefa) -> conv3x3(16)       # ops
//! stages:
//!   - s1: "cell x1 (cout: 16, stride: 1)"     # named stage: a one-key map
//!   - "cell x3 (cout: 32, stride: 2)"         # unnamed stage: a string
//! head: conv1x1(512) -> bn
//! fc: linear(classes)
//! profiles:
//!   - name: cfg-1*
//!     items:                # ordered; each item is a one-key map, and its
//!       - abit: [32, 8 x11, 16]      # value decides what it is: a list is a
//!                                    # bit list (ints or "8 x11" strings),
//!       - stage s2: {w: 6, ain: 6}   # a map is a scope (key: all, stem, head,
//!                                    # fc, stage NAME or block NAME[i]),
//!       - acts: pact(10)             # a scalar is a setting,
//!       - rules: [-quantize_shortcut]  # and the key `rules` holds rules.
//! ```
//!
//! - Everything but `model` and `input` is optional; `~` or an empty value is
//!   an empty list or map. A profile item's kind follows from its value
//!   exactly as `[`, `{` or a bare value decide it in `.qspec`.
//! - Quoting is plain YAML: a value that contains `: ` or starts with `*`,
//!   `&`, `!`, `%`, `@`, `` ` ``, `[` or `{` must be quoted, and inside flow
//!   lists and maps (`[...]`, `{...}`) so must one with `,`, `[`, `]`, `{` or
//!   `}` (e.g. `['w = wbit[i]']`). [`print_yaml`] quotes exactly where needed.
//! - A YAML scalar that is not a string (`10`, `0.5`, `007`) is read as the
//!   `.qspec` text it spells. Only `true`/`false` (any case) are booleans:
//!   `yes`, `no`, `on`, `off` are names.
//! - One document per file; anchors, aliases and merge keys work as in YAML
//!   (positions then point at the alias).
//!
//! # Diagnostics
//!
//! All problems of a file are reported in one run (never a panic):
//! - E0001: a YAML syntax error (with its line and column; one per file, as
//!   YAML cannot go on after one), or a syntax error inside a fragment,
//!   pointing at the exact byte in the YAML file (the fragment is parsed with
//!   the byte offset of the scalar's content as base; inside quoted scalars
//!   with escapes or folded multi-line scalars, positions are approximate);
//! - E0002: lists and maps nested deeper than [`MAX_YAML_DEPTH`] (or a
//!   document over serde-saphyr's size budget);
//! - E0003: an integer that does not fit in 64 bits;
//! - E0004: a missing required key (`model`, `input`, `name`, `cover`, `then`);
//! - E0005: a key given twice in a map with fixed keys (repeated keys in
//!   `quant` and in scope maps are kept, in order, like repeated settings in
//!   `.qspec`);
//! - E0006: an unknown key (the note lists the valid ones);
//! - E0007: a node of the wrong kind (a map where a list is expected, a
//!   profile item that is not a one-key map, an empty `cover`, ...).
//!
//! # Invariants
//!
//! - [`print_yaml`] is deterministic; ints are YAML ints, everything else is a
//!   string that the YAML serializer quotes only where YAML needs it.
//! - `parse_yaml(&print_yaml(m)) == m` for every model the parsers can build
//!   (spans never compare), and `parse_qspec(&print_qspec(&parse_yaml(y)?))`
//!   gives the same model back: the YAML form accepts nothing `.qspec` cannot
//!   print (names are checked as `.qspec` names, `cover` is not empty).
//! - Comments are not part of the AST and are not kept.
//!
//! # Layout
//!
//! This file holds the format and the entry points. Reading goes YAML text
//! -> `node` (serde-saphyr's spanned tree) -> `read` (the reader: scalars,
//! fragments, fixed-key maps) and `model` (the model's items) -> AST, with
//! `spans` mapping positions to byte spans; `write` builds the ordered tree
//! that [`print_yaml`] serializes.

mod model;
mod node;
mod read;
mod spans;
mod write;

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use node::YNode;
use read::Reader;
use spans::{line_col_offset, snap};

/// Deepest nesting of YAML lists and maps accepted (an `if` inside `then`
/// costs two levels; a block body starts at level five). Deeper documents are
/// refused with E0002 before they can exhaust the stack: the spanned
/// deserializer recurses once per level with large frames in debug builds.
pub const MAX_YAML_DEPTH: usize = 32;

/// Parses a YAML model spec.
pub fn parse_yaml(src: &str) -> Result<Model, Diagnostics> {
    let mut options = serde_saphyr::Options::default();
    // Only `true`/`false` are booleans (`no`, `on`, `y` stay strings), errors
    // come without a rendered snippet (we render our own), and repeated keys
    // reach us so that `quant` may repeat a setting like `.qspec` can.
    options.strict_booleans = true;
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    options.budget = Some(budget);
    let root: YNode = match serde_saphyr::from_str_with_options(src, options) {
        Ok(root) => root,
        Err(e) => return Err(yaml_error(src, &e)),
    };
    let mut cx = Reader {
        src,
        diags: Diagnostics::default(),
    };
    let model = cx.model(&root);
    let mut diags = cx.diags;
    for d in &mut diags.items {
        for l in &mut d.labels {
            l.span = snap(src, l.span);
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(model)
}

fn yaml_error(src: &str, e: &serde_saphyr::Error) -> Diagnostics {
    let e = e.without_snippet();
    let mut message = e.to_string();
    // The position is in the label; drop serde-saphyr's " at line L, column C".
    if let Some(i) = message.rfind(" at line ") {
        if message[i..].contains(", column ") {
            message.truncate(i);
        }
    }
    let start = match e.location() {
        Some(loc) => {
            let by_byte = loc
                .span()
                .byte_offset()
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o <= src.len() && src.is_char_boundary(o));
            by_byte.unwrap_or_else(|| line_col_offset(src, loc.line(), loc.column()))
        }
        None => 0,
    };
    let span = snap(src, Span::new(start, start + 1));
    let d = if message.contains("recursion limit") || message.contains("Depth {") {
        Diagnostic::error("E0002", "YAML nested too deeply")
            .primary(span, format!("nesting deeper than {MAX_YAML_DEPTH} levels"))
            .note("qatc limits nesting so that no input can exhaust its stack")
    } else if message.starts_with("budget breached") {
        Diagnostic::error("E0002", "YAML document too large")
            .primary(span, message)
            .note("qatc limits the size of YAML documents")
    } else {
        let mut d = Diagnostic::error("E0001", format!("YAML syntax error: {message}"));
        if message.contains("mapping values are not allowed") {
            d = d.help("quote a value that contains `: `, e.g. `- s1: \"cell x1 (cout: 16)\"`");
        }
        d.primary(span, message)
    };
    d.into()
}

/// Prints a model as YAML in the canonical layout (see the module docs).
pub fn print_yaml(m: &Model) -> String {
    let tree = write::model_tree(m);
    let mut options = serde_saphyr::SerializerOptions::default();
    options.compact_list_indent = false;
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&tree, options)
        .expect("serializing a tree of strings, ints, lists and maps cannot fail")
}
