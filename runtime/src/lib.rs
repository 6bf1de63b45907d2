//! The qatc runtime: the tch code that generated model crates call.
//!
//! Generated code is thin (see `docs/conventions.md`): it names the items of
//! this crate by full path and leaves all numerics to them.
//! - [`alloc`]: the allocator policy of training processes;
//! - [`quant`]: the seed's fake quantizers (DoReFa, PACT, mPACT, fixed-scale
//!   PACT) with its exact forward values and gradients, the clipping-value
//!   penalty, and [`quant::ActSpec`], one activation site under one profile;
//! - [`layers`]: quantized conv2d and linear layers and the seed's batch norm;
//! - [`ops`]: the stateless ops (ReLU, ReLU6, add, pooling, flatten; concat, split, shuffle, gating multiply, smooth and hard activations, dropout, identity) with
//!   PyTorch's defaults and gradients;
//! - [`profile`]: a model's named bit-width profiles and lookup by name;
//! - [`model`]: the [`model::QatModel`] trait every generated model
//!   implements, and a one-step training smoke check;
//! - [`device`]: the `--device` option (`auto`, `cpu`, `cuda`, `cuda:N`);
//! - [`dist`]: collectives for data-parallel training over libtorch's c10d
//!   (TCPStore, ProcessGroupGloo);
//! - [`bench`](mod@bench): training and evaluation throughput, float against QAT;
//! - [`train`](mod@train): the training loop, checkpoints, metrics and
//!   evaluation behind `qatc train` / `qatc eval`;
//! - [`cli`]: the command line of generated binaries (`train`, `eval`,
//!   `smoke`, `bench`).
//!
//! libtorch comes from the project's own install
//! (`scripts/libtorch-env.sh`, sourced by `./dev` and `.ci/run`), which also
//! gives every binary an rpath to it.
//!
//! Unsafe code is confined to FFI calls (`alloc`'s `mallopt`, the fused
//! quantizer kernels in `quant`, the c10d shim in `dist`), each in a block
//! with its `SAFETY` note;
//! the crate defines no `unsafe fn`, and any that comes must keep its
//! unsafe operations in blocks of their own
//! (`#![deny(unsafe_op_in_unsafe_fn)]`) and say its contract under
//! `# Safety`.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod bench;
pub mod cli;
pub mod device;
pub mod dist;
pub mod layers;
pub mod model;
pub mod ops;
pub mod profile;
pub mod quant;
pub mod train;
