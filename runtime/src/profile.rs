//! Named bit-width profiles of a generated model.
//!
//! A spec may declare several profiles (e.g. `w4a4`, `w8a8`) of one network.
//! The generated crate keeps the network's structure once and emits one
//! `const` table of [`Profile`]s: each says, for every weight-carrying layer
//! slot, its weight bit-width, and for every activation-quantizer site, its
//! [`ActSpec`]. The model is built from one row of the table, chosen by name
//! at run time with [`find`].
//!
//! Invariants: the slot and site counts are const generics, so every profile
//! of a model has exactly as many entries as the model has slots and sites,
//! checked by the compiler of the generated crate rather than at run time.
//! Profile names are unique within a model (the qatc checker guarantees it);
//! [`find`] returns the first match.

use crate::quant::ActSpec;
use std::fmt;

/// The bit-widths of one named profile of a generated model: weight bits per
/// layer slot, one [`ActSpec`] per activation site.
#[derive(Clone, Copy, Debug)]
pub struct Profile<const SLOTS: usize, const ACTS: usize> {
    /// The profile's name in the spec.
    pub name: &'static str,
    /// Weight bit-width of each layer slot, in the model's slot order
    /// (32: not quantized).
    pub w_bits: [u32; SLOTS],
    /// What each activation-quantizer site does, in the model's site order.
    pub acts: [ActSpec; ACTS],
}

impl<const S: usize, const A: usize> Profile<S, A> {
    /// Whether the runtime supports every bit-width of the profile: each
    /// slot's weight bits (1..=16 or 32) and each activation site
    /// ([`ActSpec::validate`]). The generated `try_with_profile` checks this
    /// before building any layer, so the layers' own checks cannot fail.
    pub fn validate(&self) -> Result<(), crate::quant::QuantError> {
        for &bits in &self.w_bits {
            crate::quant::error::bits_supported("weight quantizer", bits, 1)?;
        }
        self.acts.iter().try_for_each(|a| a.validate())
    }
}

/// The profile of `profiles` named `name`; an [`UnknownProfile`] error
/// listing the known names otherwise.
pub fn find<'a, const S: usize, const A: usize>(
    profiles: &'a [Profile<S, A>],
    name: &str,
) -> Result<&'a Profile<S, A>, UnknownProfile> {
    profiles
        .iter()
        .find(|profile| profile.name == name)
        .ok_or_else(|| UnknownProfile {
            name: name.to_owned(),
            known: profiles.iter().map(|p| p.name.to_owned()).collect(),
        })
}

/// A profile name that a model does not have.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownProfile {
    /// The name asked for.
    pub name: String,
    /// The model's profile names, in declaration order.
    pub known: Vec<String>,
}

impl fmt::Display for UnknownProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown profile `{}`; known: ", self.name)?;
        if self.known.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&self.known.join(", "))
        }
    }
}

impl std::error::Error for UnknownProfile {}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILES: [Profile<2, 3>; 2] = [
        Profile {
            name: "w4a4",
            w_bits: [32, 4],
            acts: [
                ActSpec::Off,
                ActSpec::Pact {
                    bits: 4,
                    alpha: 10.0,
                },
                ActSpec::Dorefa { bits: 4 },
            ],
        },
        Profile {
            name: "w8a8",
            w_bits: [32, 8],
            acts: [
                ActSpec::Mpact {
                    bits: 8,
                    alpha: 1.0,
                },
                ActSpec::Pact {
                    bits: 8,
                    alpha: 10.0,
                },
                ActSpec::PactFixed {
                    bits: 8,
                    scale: 6.0,
                },
            ],
        },
    ];

    #[test]
    fn finds_a_profile_by_name() {
        let profile = find(&PROFILES, "w8a8").unwrap();
        assert_eq!(profile.name, "w8a8");
        assert_eq!(profile.w_bits, [32, 8]);
        assert_eq!(
            profile.acts[2],
            ActSpec::PactFixed {
                bits: 8,
                scale: 6.0
            }
        );
        assert_eq!(find(&PROFILES, "w4a4").unwrap().acts[0], ActSpec::Off);
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = find(&PROFILES, "w2a2").unwrap_err();
        assert_eq!(
            err,
            UnknownProfile {
                name: "w2a2".into(),
                known: vec!["w4a4".into(), "w8a8".into()],
            }
        );
        assert_eq!(err.to_string(), "unknown profile `w2a2`; known: w4a4, w8a8");
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.source().is_none());
    }

    #[test]
    fn names_are_matched_exactly() {
        assert!(find(&PROFILES, "W4A4").is_err());
        assert!(find(&PROFILES, "w4a4 ").is_err());
    }

    #[test]
    fn no_profiles_at_all() {
        let err = find::<0, 0>(&[], "x").unwrap_err();
        assert_eq!(err.to_string(), "unknown profile `x`; known: (none)");
    }
}
