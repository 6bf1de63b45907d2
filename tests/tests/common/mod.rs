//! Helpers shared by several test targets of this crate: each target that
//! needs them declares `mod common;` (cargo builds every file of
//! `tests/tests/` as its own target, so shared code lives in this folder).

pub mod golden;
