//! Test helpers for the op modules' inline snapshot tests (burn-onnx
//! style): compile a tiny spec through the whole front end and show, per
//! node of one slot, the IR dump line, the summary's counts and the
//! generated Rust. Test-only: the op modules do not depend on the stages.

use crate::driver::{self, Source, Syntax};
use quote::quote;
use std::fmt::Write;

/// `model t { input INPUT  classes 10  stem: STEM  fc: FC }`, the stem's
/// nodes described.
pub fn describe(input: &str, stem: &str, fc: &str) -> String {
    let text =
        format!("model t {{\n  input {input}\n  classes 10\n  stem: {stem}\n  fc: {fc}\n}}\n");
    describe_slot(&text, "stem")
}

/// Every node of slot `slot` of the spec's default profile.
pub fn describe_slot(text: &str, slot: &str) -> String {
    let src = Source::from_text("t.qspec", text, Syntax::Qspec);
    let c = match driver::compile(&src) {
        Ok(c) => c,
        Err(d) => return d.render_plain(&src.name, &src.text),
    };
    let Ok(g) = c.graph(None) else {
        return "no graph".into();
    };
    let mut out = String::new();
    for n in g.nodes.iter().filter(|n| g.slots[n.slot].name == slot) {
        if matches!(n.op, crate::ops::Op::Input(_)) {
            continue;
        }
        let hooks = n.op.hooks();
        let io = n.io();
        let c = hooks.counts(&io);
        let _ = writeln!(
            out,
            "{} = {}{} {} -> {} (w {:?}, a {}, out {})",
            n.name,
            hooks.kind(),
            hooks.detail(&io),
            n.in_shape,
            n.out_shape,
            n.w_bit,
            n.a_bit,
            n.out_bit
        );
        let _ = writeln!(
            out,
            "  params {} macs {} seed_ops {} weight_bytes {} {:?}",
            c.params, c.macs, c.seed_ops, c.weight_bytes, c.class
        );
        let field = quote::format_ident!("{}", n.name.replace('.', "_"));
        let path = quote! { vs / "node" };
        let inputs: Vec<_> = n
            .inputs
            .iter()
            .map(|&i| {
                let v = quote::format_ident!("{}", g.nodes[i].name.replace('.', "_"));
                quote! { &#v }
            })
            .collect();
        let (conv_init, linear_init) = (quote! { CONV_INIT }, quote! { LINEAR_INIT });
        let method = quote::format_ident!("forward");
        let cx = crate::ops::hooks::EmitCx {
            field: &field,
            path: &path,
            inputs: &inputs,
            slot: n.slot,
            slot_name: &g.slots[n.slot].name,
            conv_init: &conv_init,
            linear_init: &linear_init,
            act_site: 0,
            origin: "test",
            act_method: &method,
        };
        let e = hooks.emit(&io, &cx);
        let field = e.field.map(|f| quote! { struct Model { #f } });
        let init = e
            .init
            .map(|i| quote! { fn new() -> Model { Model { #i } } });
        let forward = e.forward.map(|f| quote! { fn forward() { let y = #f; } });
        let file = quote! { #field #init #forward };
        if let Ok(file) = syn::parse2::<syn::File>(file) {
            for line in prettyplease::unparse(&file).lines() {
                let _ = writeln!(out, "  | {line}");
            }
        }
    }
    out
}
