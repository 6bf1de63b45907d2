//! The whole front end in one place: read a spec, parse it (by extension),
//! check it, lower it under a profile.
//!
//! ```text
//! source --syntax::parse_qspec / syntax::yaml::parse_yaml--> ast::Model
//!        --check::check--> Checked --lower::lower(profile)--> ir::Graph
//! ```

use crate::ast::Model;
use crate::check::{self, Checked};
use crate::diag::{Diagnostic, Diagnostics};
use crate::ir::Graph;
use crate::{lower, syntax};
use std::path::Path;

/// Spec syntax, chosen by file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Qspec,
    Yaml,
}

impl Syntax {
    pub fn of(path: &Path) -> Syntax {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") | Some("yml") => Syntax::Yaml,
            _ => Syntax::Qspec,
        }
    }
}

/// A spec read from disk, kept with its text for rendering diagnostics.
pub struct Source {
    pub name: String,
    pub text: String,
    pub syntax: Syntax,
}

impl Source {
    /// Reads a spec file. Errors name the file.
    pub fn read(path: &Path) -> Result<Source, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            format!(
                "`{}` is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        Ok(Source {
            name: path.display().to_string(),
            text,
            syntax: Syntax::of(path),
        })
    }

    pub fn from_text(name: &str, text: &str, syntax: Syntax) -> Source {
        Source {
            name: name.to_string(),
            text: text.to_string(),
            syntax,
        }
    }
}

/// Parses a source into the AST.
/// The identity of a spec: SHA-256 (hex) of its canonical `.qspec` text
/// ([`syntax::print_qspec`]), so a spec and its YAML twin, or a spec
/// reformatted, hash alike. Generated crates and checkpoints record it.
pub fn spec_hash(model: &Model) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(syntax::print_qspec(model).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse(src: &Source) -> Result<Model, Diagnostics> {
    match src.syntax {
        Syntax::Qspec => syntax::parse_qspec(&src.text),
        Syntax::Yaml => syntax::yaml::parse_yaml(&src.text),
    }
}

/// Parse + check + lower every profile: all diagnostics of the file.
pub fn check_all(src: &Source) -> Result<(Model, Checked, Vec<Graph>), Diagnostics> {
    let model = parse(src)?;
    let checked = check::check(&model)?;
    let mut diags = Diagnostics::default();
    let mut graphs = Vec::new();
    // A structural problem shows up under every profile: report it once, the
    // first time (the float profile goes first, so a problem that does not
    // depend on bit-widths carries no profile note).
    let mut order: Vec<&check::ResolvedProfile> = checked.profiles.iter().collect();
    order.sort_by_key(|p| p.name != check::FLOAT_PROFILE);
    let mut seen: Vec<(&'static str, std::ops::Range<usize>)> = Vec::new();
    let mut lowered = Vec::new();
    for p in order {
        match lower::lower(&model, &checked, p) {
            Ok(g) => lowered.push(g),
            Err(d) => {
                for item in d.items {
                    let key = (
                        item.code,
                        item.labels.first().map(|l| l.span.range()).unwrap_or(0..0),
                    );
                    if !seen.contains(&key) {
                        seen.push(key);
                        diags.push(item);
                    }
                }
            }
        }
    }
    // Keep the graphs in the spec's profile order.
    for p in &checked.profiles {
        if let Some(i) = lowered.iter().position(|g| g.profile == p.name) {
            graphs.push(lowered.swap_remove(i));
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok((model, checked, graphs))
}

/// Parse + check + lower one profile (`None`: the spec's first profile).
pub fn compile(src: &Source, profile: Option<&str>) -> Result<Graph, Diagnostics> {
    let model = parse(src)?;
    let checked = check::check(&model)?;
    let Some(p) = checked.profile(profile) else {
        let names = checked.profile_names();
        let want = profile.unwrap_or_default();
        let mut d = Diagnostic::error("E0140", format!("unknown profile `{want}`"))
            .primary(
                model.name.span,
                format!("model `{}` has no profile `{want}`", model.name.name),
            )
            .note(format!("profiles: {}", names.join(", ")));
        if let Some(s) = check::suggest(want, names.iter().map(String::as_str)) {
            d = d.help(format!("did you mean `{s}`?"));
        }
        return Err(d.into());
    };
    lower::lower(&model, &checked, p)
}
