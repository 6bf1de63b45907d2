//! Learning-rate schedules, per epoch, as pure functions of the epoch index:
//! the schedule's whole state is (kind, parameters, epoch), so a resumed
//! run recomputes it exactly and checkpoints record it as data.

use serde::{Deserialize, Serialize};

/// Which schedule, with its parameters (the `--schedule` option and its
/// companions `--lr-min`, `--step-size`, `--milestones`, `--gamma`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine annealing from the base rate to `lr_min` over the run
    /// (PyTorch's `CosineAnnealingLR` with `T_max` = epochs).
    Cosine { lr_min: f64 },
    /// Multiply by `gamma` every `step_size` epochs.
    Step { step_size: usize, gamma: f64 },
    /// Multiply by `gamma` at each milestone epoch.
    Multistep { milestones: Vec<usize>, gamma: f64 },
    /// Multiply by `gamma` every epoch.
    Exp { gamma: f64 },
}

impl Schedule {
    /// The learning rate of epoch `epoch` (0-based) of a run of `epochs`
    /// epochs starting at `base`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            Schedule::Cosine { lr_min } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                lr_min + (base - lr_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / (*step_size).max(1)) as i32)
            }
            Schedule::Multistep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= epoch).count() as i32)
            }
            Schedule::Exp { gamma } => base * gamma.powi(epoch as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_base_and_approaches_lr_min() {
        let s = Schedule::Cosine { lr_min: 0.001 };
        assert_eq!(s.lr(0.1, 0, 10), 0.1);
        assert!((s.lr(0.1, 5, 10) - 0.0505).abs() < 1e-12);
        let last = s.lr(0.1, 9, 10);
        assert!(last > 0.001 && last < 0.01, "{last}");
    }

    #[test]
    fn step_multistep_exp() {
        let step = Schedule::Step {
            step_size: 3,
            gamma: 0.1,
        };
        assert_eq!(step.lr(1.0, 2, 10), 1.0);
        assert!((step.lr(1.0, 3, 10) - 0.1).abs() < 1e-15);
        let multi = Schedule::Multistep {
            milestones: vec![2, 5],
            gamma: 0.5,
        };
        assert_eq!(
            (0..7).map(|e| multi.lr(1.0, e, 7)).collect::<Vec<_>>(),
            [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
        );
        let exp = Schedule::Exp { gamma: 0.9 };
        assert!((exp.lr(1.0, 2, 5) - 0.81).abs() < 1e-15);
    }
}
