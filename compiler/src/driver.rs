//! The whole front end in one place: read a spec, parse it (by extension),
//! check and resolve it, lower it under every profile, into one
//! [`Compilation`] that every command and backend takes.
//!
//! ```text
//! source --syntax::parse_qspec / syntax::yaml::parse_yaml--> ast::Model
//!        --check::check--> check::Resolved --lower::lower(profile)--> ir::Graph (per profile)
//! ```

use crate::ast::Model;
use crate::check::{self, Resolved};
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
#[derive(Clone, Debug)]
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

/// The identity of a spec: SHA-256 (hex) of its canonical `.qspec` text
/// ([`syntax::print_qspec`]), so a spec and its YAML twin, or a spec
/// reformatted, hash alike. Generated crates and checkpoints record it.
pub fn spec_hash(model: &Model) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(syntax::print_qspec(model).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a source into the AST (the syntax chosen by the file's extension).
pub fn parse(src: &Source) -> Result<Model, Diagnostics> {
    match src.syntax {
        Syntax::Qspec => syntax::parse_qspec(&src.text),
        Syntax::Yaml => syntax::yaml::parse_yaml(&src.text),
    }
}

/// A spec compiled: everything a command, a backend or a test needs, made
/// once. Parsing, checking and lowering happen only in [`compile`].
#[derive(Clone, Debug)]
pub struct Compilation {
    pub source: Source,
    pub ast: Model,
    pub resolved: Resolved,
    /// One graph per profile, in the spec's profile order (`float` included).
    pub graphs: Vec<Graph>,
    /// [`spec_hash`] of the AST.
    pub spec_hash: String,
}

impl Compilation {
    /// The model's name as written in the spec.
    pub fn model_name(&self) -> &str {
        &self.resolved.name.name
    }

    /// The graph of a profile, taken out of the compilation.
    pub fn into_graph(mut self, profile: Option<&str>) -> Result<Graph, Diagnostics> {
        let name = self.graph(profile)?.profile.clone();
        let i = self.graphs.iter().position(|g| g.profile == name);
        Ok(self.graphs.swap_remove(i.unwrap_or_default()))
    }

    /// The graph of a profile (`None`: the spec's first profile, or `float`);
    /// an unknown name is an error listing the profiles.
    pub fn graph(&self, profile: Option<&str>) -> Result<&Graph, Diagnostics> {
        let want = self.resolved.profile(profile).map(|p| p.name.as_str());
        if let Some(g) = want.and_then(|w| self.graphs.iter().find(|g| g.profile == w)) {
            return Ok(g);
        }
        let names = self.resolved.profile_names();
        let want = profile.unwrap_or_default();
        let name = &self.resolved.name;
        let mut d = Diagnostic::error("E0140", format!("unknown profile `{want}`"))
            .primary(
                name.span,
                format!("model `{}` has no profile `{want}`", name.name),
            )
            .note(format!("profiles: {}", names.join(", ")));
        if let Some(s) = check::suggest(want, names.iter().map(String::as_str)) {
            d = d.help(format!("did you mean `{s}`?"));
        }
        Err(d.into())
    }
}

/// The whole front end: parse, check (resolve), lower every profile. All
/// diagnostics of the file, or the [`Compilation`].
pub fn compile(src: &Source) -> Result<Compilation, Diagnostics> {
    let ast = parse(src)?;
    let resolved = check::check(&ast)?;
    let graphs = lower_all(&resolved)?;
    Ok(Compilation {
        source: src.clone(),
        spec_hash: spec_hash(&ast),
        ast,
        resolved,
        graphs,
    })
}

/// Lowers every profile, reporting each structural problem once.
fn lower_all(resolved: &Resolved) -> Result<Vec<Graph>, Diagnostics> {
    let mut diags = Diagnostics::default();
    // A structural problem shows up under every profile: report it once, the
    // first time (the float profile goes first, so a problem that does not
    // depend on bit-widths carries no profile note).
    let mut order: Vec<&check::ResolvedProfile> = resolved.profiles.iter().collect();
    order.sort_by_key(|p| p.name != check::FLOAT_PROFILE);
    let mut seen: Vec<(&'static str, std::ops::Range<usize>)> = Vec::new();
    let mut lowered = Vec::new();
    for p in order {
        match lower::lower(resolved, p) {
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
    if diags.has_errors() {
        return Err(diags);
    }
    // Keep the graphs in the spec's profile order.
    let mut graphs = Vec::new();
    for p in &resolved.profiles {
        if let Some(i) = lowered.iter().position(|g| g.profile == p.name) {
            graphs.push(lowered.swap_remove(i));
        }
    }
    Ok(graphs)
}
