//! qatc: a compiler for quantization-aware training.
//!
//! The pipeline, one module per stage (see [`compile`]):
//! ```text
//! .qspec / .yaml --syntax--> ast::Model --check--> (diagnostics)
//!     --lower (bit profile + placement rules)--> ir::Graph --summary--> cost report
//! ```

pub mod ast;
pub mod build;
pub mod check;
pub mod codegen;
pub mod diag;
pub mod download;
pub mod driver;
pub mod import;
pub mod int;
pub mod ir;
pub mod lower;
pub mod plot;
pub mod summary;
pub mod syntax;
