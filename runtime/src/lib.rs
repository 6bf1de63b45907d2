//! The qatc runtime: the tch code that generated model crates call.
//!
//! Generated code is thin (see `docs/conventions.md`): it names the items of
//! this crate by full path and leaves all numerics to them.
//! - [`quant`]: the seed's fake quantizers (DoReFa, PACT, mPACT, fixed-scale
//!   PACT) with its exact forward values and gradients, and the clipping-value
//!   penalty;
//! - [`layers`]: quantized conv2d and linear layers and the seed's batch norm.
//!
//! libtorch comes from the project's own install
//! (`scripts/libtorch-env.sh`, sourced by `./dev` and `.ci/run`), which also
//! gives every binary an rpath to it.

pub mod layers;
pub mod quant;
