//! What every generated model offers to drivers (its `main`, `qatc train` /
//! `eval`, tests, a user embedding it), and a one-step training smoke check.
//!
//! A generated model is a `tch::nn::ModuleT` (`forward_t(x, train)`: BN and
//! dropout depend on the mode) plus [`QatModel`]'s metadata: its name, the
//! per-sample input shape and class count (to make batches and check data),
//! and its learnable clipping values (for [`alpha_penalty`]). Drivers are
//! written once against the trait, not once per model.
//!
//! [`smoke_step`] runs one SGD step on random data: it checks that a model
//! builds, runs forward, and back-propagates into its variables, without any
//! data set, so generated `main`s and tests can run it anywhere.

use crate::quant::alpha_penalty;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

/// Learning rate of [`smoke_step`].
pub const SMOKE_LR: f64 = 0.01;

/// SGD momentum of [`smoke_step`].
pub const SMOKE_MOMENTUM: f64 = 0.9;

/// What drivers know of a generated model besides its tensors: every
/// generated crate exports one as `META`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelMeta {
    /// Model name from the spec.
    pub name: &'static str,
    /// The spec the crate was generated from, as named to `qatc build`.
    pub spec: &'static str,
    /// SHA-256 of the spec's canonical text: checkpoints record it, so a
    /// checkpoint of another spec is recognised.
    pub spec_hash: &'static str,
    /// Profile names; the first is the default.
    pub profiles: &'static [&'static str],
}

impl ModelMeta {
    /// The default profile: the spec's first (or `float`).
    pub fn default_profile(&self) -> &'static str {
        self.profiles.first().copied().unwrap_or("float")
    }
}

/// A generated QAT model.
pub trait QatModel: nn::ModuleT {
    /// Model name from the spec.
    fn name(&self) -> &'static str;
    /// Input shape per sample `[C, H, W]`.
    fn input_shape(&self) -> [i64; 3];
    /// Number of classes (the width of the logits).
    fn classes(&self) -> i64;
    /// The learnable clipping values, for the L2 penalty
    /// ([`alpha_penalty`]); empty when the model has none.
    fn clip_values(&self) -> Vec<&Tensor>;
}

/// One forward+backward SGD step on a random batch: a smoke check used by
/// generated `main`s and tests; returns the loss.
///
/// The batch is `batch` standard-normal samples of the model's input shape
/// with uniformly random labels, on `vs`'s device; the forward pass runs in
/// training mode. The loss is the cross entropy of the logits plus
/// [`alpha_penalty`] of the model's clipping values (coefficient 2e-4; no
/// penalty when there are none), and the step is SGD with learning rate
/// [`SMOKE_LR`] and momentum [`SMOKE_MOMENTUM`] over all of `vs`'s trainable
/// variables (a fresh optimizer, so momentum starts at zero). `vs` must be
/// the store the model was built in. The returned loss is the one the step
/// was computed from (before the update).
///
/// # Panics
/// If `batch` is not positive, or on a libtorch error (e.g. the model's
/// forward pass rejects its own input shape, which is what this checks).
pub fn smoke_step<M: QatModel + ?Sized>(model: &M, vs: &nn::VarStore, batch: i64) -> f64 {
    assert!(batch > 0, "smoke_step: batch must be positive, got {batch}");
    let device = vs.device();
    let [c, h, w] = model.input_shape();
    let xs = Tensor::randn([batch, c, h, w], (Kind::Float, device));
    let labels = Tensor::randint(model.classes(), [batch], (Kind::Int64, device));
    let logits = model.forward_t(&xs, true);
    let cross_entropy = logits.cross_entropy_for_logits(&labels);
    let loss = match alpha_penalty(model.clip_values()) {
        Some(penalty) => cross_entropy + penalty,
        None => cross_entropy,
    };
    // A model without trainable variables has nothing to step (and backward
    // would fail on a loss that requires no gradient).
    if loss.requires_grad() {
        let mut sgd = nn::Sgd {
            momentum: SMOKE_MOMENTUM,
            ..Default::default()
        }
        .build(vs, SMOKE_LR)
        .expect("smoke_step: cannot build the SGD optimizer");
        sgd.backward_step(&loss);
    }
    loss.double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{QConv2d, QConv2dConfig, QLinear, QLinearConfig};
    use crate::ops;
    use crate::quant::{ActQuant, ActSpec};
    use tch::nn::{Init, Module, ModuleT};
    use tch::Device;

    /// conv -> PACT -> global pool -> fc, the shape of a generated model.
    #[derive(Debug)]
    struct Tiny {
        conv: QConv2d,
        act: ActQuant,
        fc: QLinear,
    }

    impl Tiny {
        fn new(path: &nn::Path, act: ActSpec) -> Self {
            let config = QConv2dConfig {
                padding: 1,
                ..Default::default()
            };
            Self {
                conv: QConv2d::new(&(path / "conv"), 3, 8, 3, 4, config),
                act: ActQuant::from_spec(&(path / "act"), act),
                fc: QLinear::new(&(path / "fc"), 8, 10, 8, QLinearConfig::default()),
            }
        }
    }

    impl ModuleT for Tiny {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
            let x = self.act.forward(&self.conv.forward(xs));
            self.fc
                .forward(&ops::flatten(&ops::adaptive_avg_pool2d(&x, 1)))
        }
    }

    impl QatModel for Tiny {
        fn name(&self) -> &'static str {
            "tiny"
        }
        fn input_shape(&self) -> [i64; 3] {
            [3, 6, 6]
        }
        fn classes(&self) -> i64 {
            10
        }
        fn clip_values(&self) -> Vec<&Tensor> {
            self.act.alpha().into_iter().collect()
        }
    }

    #[test]
    fn one_step_moves_the_weights_and_the_clipping_value() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Tiny::new(
            &vs.root(),
            ActSpec::Pact {
                bits: 4,
                alpha: 2.0,
            },
        );
        let weight = model.conv.weight().copy();
        let loss = smoke_step(&model, &vs, 4);
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
        assert!(!model.conv.weight().equal(&weight));
        // The clipping value is trained too (data and penalty gradients).
        assert!(model.act.alpha().unwrap().grad().double_value(&[]) != 0.0);
        // Through the trait object too.
        let dyn_model: &dyn QatModel = &model;
        assert_eq!(dyn_model.name(), "tiny");
        assert!(smoke_step(dyn_model, &vs, 1).is_finite());
    }

    #[test]
    fn a_model_without_clip_values() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Tiny::new(&vs.root(), ActSpec::Off);
        assert!(model.clip_values().is_empty());
        assert!(smoke_step(&model, &vs, 2).is_finite());
    }

    /// Logits always zero, and one clipping value: the loss is known exactly.
    #[derive(Debug)]
    struct Zero {
        w: Tensor,
        alpha: Tensor,
    }

    impl ModuleT for Zero {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
            ops::flatten(xs).matmul(&self.w)
        }
    }

    impl QatModel for Zero {
        fn name(&self) -> &'static str {
            "zero"
        }
        fn input_shape(&self) -> [i64; 3] {
            [1, 2, 2]
        }
        fn classes(&self) -> i64 {
            5
        }
        fn clip_values(&self) -> Vec<&Tensor> {
            vec![&self.alpha]
        }
    }

    #[test]
    fn loss_is_cross_entropy_plus_penalty_and_sgd_steps_alpha() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let model = Zero {
            w: root.var("w", &[4, 5], Init::Const(0.0)),
            alpha: root.var("alpha", &[], Init::Const(2.0)),
        };
        let loss = smoke_step(&model, &vs, 3);
        let want = 5f64.ln() + 0.0002 * 4.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        // d(penalty)/d(alpha) = 2 * 0.0002 * 2; first SGD step: no momentum yet.
        let alpha = model.alpha.double_value(&[]);
        let want = 2.0 - SMOKE_LR * 0.0008;
        assert!((alpha - want).abs() < 1e-7, "{alpha} vs {want}");
    }

    /// No variables at all: nothing to step, but no panic either.
    #[derive(Debug)]
    struct Constant;

    impl ModuleT for Constant {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
            ops::flatten(xs)
        }
    }

    impl QatModel for Constant {
        fn name(&self) -> &'static str {
            "constant"
        }
        fn input_shape(&self) -> [i64; 3] {
            [2, 1, 1]
        }
        fn classes(&self) -> i64 {
            2
        }
        fn clip_values(&self) -> Vec<&Tensor> {
            Vec::new()
        }
    }

    #[test]
    fn a_model_without_variables() {
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(smoke_step(&Constant, &vs, 2).is_finite());
    }
}
