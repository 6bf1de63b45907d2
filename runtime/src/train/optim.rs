//! SGD (momentum, weight decay) and Adam with their state as named tensors.
//!
//! tch's optimizers keep their state (momentum buffers, Adam moments) inside
//! libtorch where it cannot be saved, so exact resume needs our own. The
//! updates are PyTorch's (`torch.optim.SGD` without dampening or Nesterov,
//! `torch.optim.Adam` with L2 weight decay added to the gradient); they run
//! under `no_grad`, in place, over the parameters in name order.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::Tensor;

/// The optimizer and its hyper-parameters (checkpoints record them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    Sgd {
        momentum: f64,
        weight_decay: f64,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// An optimizer over named parameters, with its state.
pub struct Optimizer {
    config: OptimizerConfig,
    params: Vec<(String, Tensor)>,
    /// State tensors by `"<param>.<slot>"` (`momentum_buffer`, `exp_avg`,
    /// `exp_avg_sq`), created on the first step as PyTorch does.
    state: BTreeMap<String, Tensor>,
    /// Steps taken (Adam's bias correction).
    pub steps: u64,
}

impl Optimizer {
    /// `params`: the trainable variables with their names.
    pub fn new(config: OptimizerConfig, mut params: Vec<(String, Tensor)>) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            config,
            params,
            state: BTreeMap::new(),
            steps: 0,
        }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Sets every parameter's gradient to zero.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update at learning rate `lr` from the parameters' gradients.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let steps = self.steps;
        tch::no_grad(|| {
            for (name, p) in &mut self.params {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                match &self.config {
                    OptimizerConfig::Sgd {
                        momentum,
                        weight_decay,
                    } => {
                        let mut d_p = if *weight_decay != 0.0 {
                            &grad + &*p * *weight_decay
                        } else {
                            grad.shallow_clone()
                        };
                        if *momentum != 0.0 {
                            let key = format!("{name}.momentum_buffer");
                            match self.state.get_mut(&key) {
                                Some(buf) => {
                                    let _ = buf.g_mul_scalar_(*momentum).g_add_(&d_p);
                                    d_p = buf.shallow_clone();
                                }
                                None => {
                                    let buf = d_p.detach().copy();
                                    d_p = buf.shallow_clone();
                                    self.state.insert(key, buf);
                                }
                            }
                        }
                        let _ = p.g_sub_(&(d_p * lr));
                    }
                    OptimizerConfig::Adam {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    } => {
                        let g = if *weight_decay != 0.0 {
                            &grad + &*p * *weight_decay
                        } else {
                            grad.shallow_clone()
                        };
                        let m_key = format!("{name}.exp_avg");
                        let v_key = format!("{name}.exp_avg_sq");
                        if !self.state.contains_key(&m_key) {
                            self.state.insert(m_key.clone(), p.zeros_like());
                            self.state.insert(v_key.clone(), p.zeros_like());
                        }
                        let m = &self.state[&m_key];
                        let v = &self.state[&v_key];
                        let _ = m
                            .shallow_clone()
                            .g_mul_scalar_(*beta1)
                            .g_add_(&(&g * (1.0 - beta1)));
                        let _ = v
                            .shallow_clone()
                            .g_mul_scalar_(*beta2)
                            .g_add_(&(&g * &g * (1.0 - beta2)));
                        let bias1 = 1.0 - beta1.powi(steps as i32);
                        let bias2 = 1.0 - beta2.powi(steps as i32);
                        let denom = (v / bias2).sqrt() + *eps;
                        let _ = p.g_sub_(&(m / denom * (lr / bias1)));
                    }
                }
            }
        });
    }

    /// The parameters' gradients that are defined, in name order (tensors
    /// that share the gradients' storage: data-parallel training averages
    /// them in place before [`Optimizer::step`]).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// The state as named tensors (for a checkpoint).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.state
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect()
    }

    /// Restores state saved by [`Optimizer::state`]; names must belong to
    /// this optimizer's parameters and shapes must match.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>, steps: u64) -> Result<(), String> {
        let mut loaded = BTreeMap::new();
        for (key, t) in state {
            let param = self
                .params
                .iter()
                .find(|(name, _)| {
                    key.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with('.') && !rest[1..].contains('.'))
                })
                .map(|(_, p)| p);
            let Some(p) = param else {
                return Err(format!(
                    "optimizer state `{key}` belongs to no parameter of this model"
                ));
            };
            if t.size() != p.size() {
                return Err(format!(
                    "optimizer state `{key}` has shape {:?}, its parameter {:?}",
                    t.size(),
                    p.size()
                ));
            }
            loaded.insert(key, t.to_device(p.device()));
        }
        self.state = loaded;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn param(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    /// PyTorch's SGD: buf1 = g1, buf2 = m*buf1 + g2 (+ wd*p each time).
    #[test]
    fn sgd_matches_pytorch_updates() {
        let p = param(&[1.0, -2.0]);
        let mut opt = Optimizer::new(
            OptimizerConfig::Sgd {
                momentum: 0.9,
                weight_decay: 0.1,
            },
            vec![("w".into(), p.shallow_clone())],
        );
        for _ in 0..2 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.5);
        }
        // Step 1: g = 2p + 0.1p = 2.1p -> p1 = p - 0.5*2.1p = -0.05p.
        // Step 2: g2 = 2.1*p1, buf = 0.9*2.1p + 2.1*p1 = 1.785p;
        //         p2 = p1 - 0.5*1.785p = -0.9425p.
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        assert!(
            (got[0] + 0.9425).abs() < 1e-6 && (got[1] - 1.885).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(opt.state().len(), 1);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let p = param(&[3.0]);
        let mut opt = Optimizer::new(
            OptimizerConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            vec![("w".into(), p.shallow_clone())],
        );
        opt.zero_grad();
        (&p * 2.0).sum(Kind::Float).backward();
        opt.step(0.01);
        let got = p.double_value(&[0]);
        assert!((got - 2.99).abs() < 1e-6, "{got}");
    }

    #[test]
    fn state_round_trips_and_rejects_foreign_names() {
        let p = param(&[1.0]);
        let config = OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(config.clone(), vec![("a.w".into(), p.shallow_clone())]);
        opt.zero_grad();
        p.sum(Kind::Float).backward();
        opt.step(0.1);
        let mut other = Optimizer::new(config, vec![("a.w".into(), p.shallow_clone())]);
        other.load_state(opt.state(), opt.steps).unwrap();
        assert_eq!(other.state().len(), 1);
        let foreign = vec![(
            "b.w.momentum_buffer".to_string(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )];
        assert!(other
            .load_state(foreign, 1)
            .unwrap_err()
            .contains("b.w.momentum_buffer"));
    }
}
