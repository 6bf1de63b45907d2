//! qatc: a compiler for quantization-aware training.
//!
//! The pipeline, one module per stage, run once by [`driver::compile`]
//! into a [`driver::Compilation`] that every command and backend takes:
//! ```text
//! .qspec / .yaml --syntax--> ast::Model --check--> check::Resolved
//!     --lower (per profile: bits + placement rules)--> ir::Graph
//!     --> summary (cost report) | codegen + build (model crate) | import
//! ```
//! Each op is one module of [`ops`] (its call forms, checks, shapes,
//! counts, generated code, checkpoint tensors); [`vocab`] holds the words
//! every stage shares. The integer backend is the `qatc-int` crate, the
//! command line `qatc-cli`. See docs/architecture.md.

#![forbid(unsafe_code)]

pub mod ast;
pub mod build;
pub mod check;
pub mod codegen;
pub mod diag;
pub mod driver;
pub mod import;
pub mod ir;
pub mod lower;
pub mod ops;
pub mod summary;
pub mod syntax;
#[cfg(test)]
mod testing;
pub mod vocab;
