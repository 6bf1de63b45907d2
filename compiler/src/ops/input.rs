//! The graph input (`input CxHxW`); the IR op [`Input`]. Codegen reads it
//! as the `input` argument of `forward_t`.

use super::hooks::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Input;

impl NodeOp for Input {
    fn kind(&self) -> &'static str {
        "input"
    }
}
