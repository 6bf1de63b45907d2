//! The two sides of `int_property` other than the engine: [`case`] draws a
//! random tiny model (its spec text, checkpoint and images), and
//! [`reference`] computes that model's integers from the documented
//! formulas in i128.

pub mod case;
pub mod reference;
