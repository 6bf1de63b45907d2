//! Plans [`ops::BatchNorm`](qatc::ops::BatchNorm) (inference mode, running
//! statistics).
//!
//! Integer arithmetic emitted: none of its own. BN is affine per channel,
//! `y = w[c] * x + b[c]` with `w = gamma / sqrt(var + eps)` and
//! `b = beta - gamma * mean / sqrt(var + eps)`, so it is folded into the
//! pending sum it reads: every term's `k[c]` is multiplied by `w[c]` and the
//! bias becomes `bias[c] * w[c] + b[c]`. The next requantization turns that
//! into fixed-point multipliers and a bias; a layer that needs integers
//! first materialises it (`Builder::integers`). Under `trunc` the factors
//! are also kept in float32 as the seed computes them (its square roots:
//! the checkpoint's `bn_std`, else libtorch's, `seed_sqrt`).
//!
//! Invariants: a BN that reads a ReLU output no quantizer closed, or the
//! float input, is an [`IntError::Unsupported`]; statistics with fewer
//! values than the sum has channels are an [`IntError::Tensors`].

// Per-channel loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use super::builder::{unsupported, Builder, Rectify, Value};
use crate::fixed::Rounding;
use crate::seed_sqrt;
use crate::IntError;
use qatc::ir::Node;

/// BN epsilon of every model (the seed's PyTorch default).
const BN_EPS: f32 = 1e-5;

impl Builder<'_> {
    /// A BN node: its per-channel affine map folded into the pending sum.
    pub(super) fn batch_norm(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        let mut lin = self.lin_of(n, v)?;
        if lin.relu != Rectify::None {
            return Err(unsupported(
                &n.name,
                "BN after a ReLU without a quantizer between them",
            ));
        }
        let get = |p: &str| self.ck.get(&format!("{}.{p}", n.name));
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let c = lin.channels;
        // A checkpoint read from a file has the graph's shapes; one built
        // in code (its tensors are public) may not.
        let stats = [
            ("weight", gamma),
            ("bias", beta),
            ("running_mean", mean),
            ("running_var", var),
        ];
        if let Some((p, t)) = stats.iter().find(|(_, t)| t.len() < c) {
            return Err(IntError::Tensors {
                model: self.g.model.clone(),
                profile: self.g.profile.clone(),
                missing: Vec::new(),
                wrong: vec![format!(
                    "`{}.{p}` has {} values, the layer has {c} channels",
                    n.name,
                    t.len()
                )],
            });
        }
        let mut w64 = vec![0.0; c];
        let mut w32 = vec![0.0f32; c];
        let mut b64 = vec![0.0; c];
        let mut b32 = vec![0.0f32; c];
        // The float32 standard deviations the seed's constants come from:
        // the checkpoint's where it carries them, else (under `trunc`)
        // libtorch's square root as the seed's PyTorch computed it, else IEEE.
        let var_eps: Vec<f32> = var.iter().take(c).map(|v| v + BN_EPS).collect();
        let std32: Vec<f32> = match self.ck.bn_std.get(&n.name).filter(|s| s.len() == c) {
            Some(s) => s.clone(),
            None if self.opts.rounding == Rounding::Trunc => seed_sqrt::sqrt_f32(&var_eps),
            None => var_eps.iter().map(|v| v.sqrt()).collect(),
        };
        for ch in 0..c {
            // As the seed: gamma.div(sqrt(var + eps)), beta - gamma.mul(mean).div(sqrt(var + eps)).
            let std32 = std32[ch];
            w32[ch] = gamma[ch] / std32;
            b32[ch] = beta[ch] - (gamma[ch] * mean[ch]) / std32;
            let std64 = (var[ch] as f64 + BN_EPS as f64).sqrt();
            w64[ch] = gamma[ch] as f64 / std64;
            b64[ch] = beta[ch] as f64 - gamma[ch] as f64 * mean[ch] as f64 / std64;
        }
        for term in &mut lin.terms {
            for ch in 0..c {
                term.k[ch] *= w64[ch];
            }
            term.k_f32 = Some(match &term.k_f32 {
                Some(k) => k.iter().zip(&w32).map(|(a, b)| a * b).collect(),
                None => w32.clone(),
            });
        }
        for ch in 0..c {
            lin.bias[ch] = lin.bias[ch] * w64[ch] + b64[ch];
            lin.bias_f32[ch] = lin.bias_f32[ch] * w32[ch] + b32[ch];
        }
        Ok(Value::Lin(lin))
    }
}

#[cfg(test)]
mod tests {
    use crate::checkpoint::{variables, Checkpoint};
    use crate::{build, IntError, PlanOptions};
    use qatc::driver::{self, Source, Syntax};

    const SPEC: &str = r#"
model bn {
  input 2x2x2
  classes 2
  quant {
    weights dorefa
    acts mpact(2)
  }
  stem: act(ain) as q -> conv1x1(3) as conv -> bn as bn -> act(aout) as out
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

    /// Every variable of the spec's graph at its shape, all 0.5.
    fn setup() -> (qatc::ir::Graph, Checkpoint) {
        let src = Source::from_text("bn.qspec", SPEC, Syntax::Qspec);
        let g = driver::compile(&src)
            .and_then(|c| c.into_graph(Some("p")))
            .expect("the spec compiles");
        let mut ck = Checkpoint::default();
        for (name, shape) in variables(&g) {
            let len = shape.iter().product();
            ck.tensors.insert(name, (shape, vec![0.5; len]));
        }
        (g, ck)
    }

    #[test]
    fn statistics_shorter_than_the_channels_are_an_error() {
        let (g, mut ck) = setup();
        assert!(build(&g, &ck, PlanOptions::default()).is_ok());
        let var = ck
            .tensors
            .get_mut("stem.bn.running_var")
            .expect("the BN has a running variance");
        var.1.truncate(2);
        match build(&g, &ck, PlanOptions::default()) {
            Err(IntError::Tensors { wrong, .. }) => {
                assert_eq!(
                    wrong,
                    ["`stem.bn.running_var` has 2 values, the layer has 3 channels"]
                );
            }
            other => panic!("expected a tensor error, got {other:?}"),
        }
    }
}
