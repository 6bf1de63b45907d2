//! Surface syntax: the `.qspec` language (pest) and its YAML twin, both to
//! and from [`crate::ast::Model`].

pub mod parse;
pub mod print;
pub mod yaml;

pub use parse::parse_qspec;
pub use print::print_qspec;
