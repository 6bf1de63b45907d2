//! Binding arguments to parameters (positional, then named) for ops,
//! blocks and rules, and interpreting bit-width and quantizer arguments.

use super::*;
use crate::ops::hooks::OpParam;
use crate::vocab::{BitRef, BitVar, Quantizer};

/// Quantizer names and the number of arguments each takes.
pub const QUANTIZERS: &[(&str, usize)] = &[
    ("dorefa", 0),
    ("pact", 1),
    ("mpact", 1),
    ("pact_fixed", 1),
    ("none", 0),
];

/// Binds a builtin op's arguments to its parameters (positional, then named).
/// Reports unknown, repeated, missing and surplus arguments.
pub fn bind_builtin<'a>(
    sig: &[OpParam],
    call: &'a Call,
    diags: &mut Diagnostics,
) -> Vec<Option<&'a Expr>> {
    let names: Vec<&str> = sig.iter().map(|p| p.name).collect();
    let required: Vec<bool> = sig.iter().map(|p| p.required).collect();
    bind(
        &call.name.name,
        "op",
        &names,
        &required,
        &call.args,
        call.span,
        diags,
    )
}

/// Same for a block's parameters (a parameter with a default is optional;
/// `cin` is bound by the compiler).
pub fn bind_block<'a>(
    b: &BlockDef,
    args: &'a [Arg],
    span: Span,
    diags: &mut Diagnostics,
) -> Vec<Option<&'a Expr>> {
    let names: Vec<&str> = b.params.iter().map(|p| p.name.name.as_str()).collect();
    let required: Vec<bool> = b.params.iter().map(|p| p.default.is_none()).collect();
    bind(&b.name.name, "block", &names, &required, args, span, diags)
}

pub(super) fn bind<'a>(
    what: &str,
    kind: &str,
    names: &[&str],
    required: &[bool],
    args: &'a [Arg],
    span: Span,
    diags: &mut Diagnostics,
) -> Vec<Option<&'a Expr>> {
    let mut bound: Vec<Option<&Expr>> = vec![None; names.len()];
    let mut positional = 0;
    let mut seen_named = false;
    let mut misplaced = false;
    for a in args {
        match &a.name {
            None => {
                if seen_named {
                    diags.push(
                        Diagnostic::error("E0114", "positional argument after a named one")
                            .primary(a.span, "move it before the named arguments"),
                    );
                    // What it was meant for is unknown: do not also report it missing.
                    misplaced = true;
                    continue;
                }
                if positional >= names.len() {
                    diags.push(
                        Diagnostic::error(
                            "E0115",
                            format!(
                                "{kind} `{what}` takes {} argument{}, got more",
                                names.len(),
                                plural(names.len())
                            ),
                        )
                        .primary(a.span, "surplus argument")
                        .note(signature(what, names, required)),
                    );
                    continue;
                }
                bound[positional] = Some(&a.value);
                positional += 1;
            }
            Some(n) => {
                seen_named = true;
                match names.iter().position(|p| *p == n.name) {
                    Some(i) if bound[i].is_some() => diags.push(
                        Diagnostic::error("E0116", format!("argument `{}` is given twice", n.name))
                            .primary(a.span, "given again here"),
                    ),
                    Some(i) => bound[i] = Some(&a.value),
                    None => {
                        let d = Diagnostic::error(
                            "E0103",
                            format!("{kind} `{what}` has no parameter `{}`", n.name),
                        )
                        .primary(n.span, "unknown parameter")
                        .note(signature(what, names, required));
                        let s = suggest(&n.name, names.iter().copied());
                        diags.push(match s {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d,
                        });
                    }
                }
            }
        }
    }
    // A repeated parameter name (reported as E0005) counts as given when
    // any parameter of that name is.
    let given = |n: &str| {
        names
            .iter()
            .zip(&bound)
            .any(|(m, b)| *m == n && b.is_some())
    };
    let mut missing: Vec<&str> = names
        .iter()
        .zip(required)
        .filter(|(n, r)| **r && !given(n))
        .map(|(n, _)| *n)
        .collect();
    missing.dedup();
    if !missing.is_empty() && !misplaced {
        let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
        diags.push(
            Diagnostic::error(
                "E0115",
                format!(
                    "{kind} `{what}` is missing argument{} {}",
                    plural(missing.len()),
                    list.join(", ")
                ),
            )
            .primary(span, "missing arguments")
            .note(signature(what, names, required)),
        );
    }
    bound
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

pub(super) fn signature(what: &str, names: &[&str], required: &[bool]) -> String {
    let ps: Vec<String> = names
        .iter()
        .zip(required)
        .map(|(n, r)| if *r { n.to_string() } else { format!("{n}?") })
        .collect();
    format!("signature: {what}({})", ps.join(", "))
}

/// Interprets a bit-width argument: `ain`, `aout`, `w` or an integer literal.
pub fn bit_ref(e: &Expr, diags: &mut Diagnostics) -> Option<BitRef> {
    match e {
        Expr::Name(n) => match BitVar::parse(&n.name) {
            Some(v) => Some(BitRef::Var(v)),
            None => {
                let d = Diagnostic::error("E0131", format!("unknown bit variable `{}`", n.name))
                    .primary(n.span, "expected `ain`, `aout`, `w` or a bit-width");
                diags.push(with_suggestion(d, &n.name, vec!["ain", "aout", "w"]));
                None
            }
        },
        other => {
            literal_bits(other, diags, "expected `ain`, `aout`, `w` or an integer").map(BitRef::Lit)
        }
    }
}

/// Interprets a quantizer expression such as `mpact(10)`.
pub fn quantizer(e: &Expr, diags: &mut Diagnostics) -> Option<Quantizer> {
    let (name, args, span) = match e {
        Expr::Name(n) => (n, &[][..], n.span),
        Expr::Call(c) => (&c.name, &c.args[..], c.span),
        other => {
            diags.push(Diagnostic::error("E0117", "expected a quantizer").primary(
                other.span(),
                "write `dorefa`, `pact(a)`, `mpact(a)`, `pact_fixed(s)` or `none`",
            ));
            return None;
        }
    };
    let Some((_, arity)) = QUANTIZERS.iter().find(|(n, _)| *n == name.name) else {
        let d = Diagnostic::error("E0117", format!("unknown quantizer `{}`", name.name))
            .primary(name.span, "not a quantizer");
        diags.push(with_suggestion(
            d,
            &name.name,
            QUANTIZERS.iter().map(|(n, _)| *n).collect(),
        ));
        return None;
    };
    if args.len() != *arity {
        diags.push(
            Diagnostic::error(
                "E0115",
                format!(
                    "quantizer `{}` takes {} argument{}, got {}",
                    name.name,
                    arity,
                    plural(*arity),
                    args.len()
                ),
            )
            .primary(
                span,
                if *arity == 1 {
                    "give its initial clipping value, e.g. `mpact(10)`"
                } else {
                    "takes no arguments"
                },
            ),
        );
        return None;
    }
    let value = match args.first() {
        None => 0.0,
        Some(a) => {
            if a.name.is_some() {
                diags.push(
                    Diagnostic::error("E0103", "quantizer arguments are positional")
                        .primary(a.span, "remove the name"),
                );
                return None;
            }
            match &a.value {
                Expr::Int(i) => i.value as f64,
                Expr::Float { value, .. } => *value,
                other => {
                    diags.push(
                        Diagnostic::error("E0118", "expected a number")
                            .primary(other.span(), "the clipping value is a positive number"),
                    );
                    return None;
                }
            }
        }
    };
    if args.len() == 1 && !(value > 0.0 && value.is_finite()) {
        diags.push(
            Diagnostic::error("E0118", "clipping value must be positive")
                .primary(args[0].span, "must be > 0"),
        );
        return None;
    }
    Some(match name.name.as_str() {
        "dorefa" => Quantizer::Dorefa,
        "pact" => Quantizer::Pact { alpha: value },
        "mpact" => Quantizer::Mpact { alpha: value },
        "pact_fixed" => Quantizer::PactFixed { scale: value },
        _ => Quantizer::None,
    })
}

/// An integer literal that is a valid bit-width; `label` says what else was expected.
pub(super) fn literal_bits(e: &Expr, diags: &mut Diagnostics, label: &str) -> Option<u32> {
    match e {
        Expr::Int(i) if valid_bits(i.value) => Some(i.value as u32),
        Expr::Int(i) => {
            diags.push(bits_error(i.span, i.value));
            None
        }
        other => {
            diags.push(
                Diagnostic::error("E0204", "expected a bit-width").primary(other.span(), label),
            );
            None
        }
    }
}
