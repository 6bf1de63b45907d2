//! The stateless tensor ops of generated models: activations, residual
//! addition, pooling and flattening.
//!
//! Generated code calls these instead of tch (see `docs/conventions.md`:
//! generated code never calls tch for what the runtime wraps), so that each
//! op's exact PyTorch semantics (defaults, gradients at kinks) are fixed in
//! one place, tested once, and can change without regenerating models.
//!
//! Input and output: float tensors, `[N, C, H, W]` for the pooling ops.
//! Every op matches the PyTorch module of the same name with its default
//! options, values and gradients alike (the seed's models are PyTorch).
//! Sizes are square (one number for both directions), as in the specs.

use tch::Tensor;

/// `torch.nn.ReLU`: `max(x, 0)`; gradient 1 where `x > 0`, 0 elsewhere
/// (also at `x == 0`).
pub fn relu(x: &Tensor) -> Tensor {
    x.relu()
}

/// `torch.nn.ReLU6`: `min(max(x, 0), 6)`. PyTorch computes it as
/// `hardtanh(x, 0, 6)`, whose gradient is 1 only strictly inside `(0, 6)`:
/// 0 at exactly 0 and 6. (`clamp(x, 0, 6)` would give 1 at both ends, so it
/// is not used.)
pub fn relu6(x: &Tensor) -> Tensor {
    x.relu6()
}

/// Element-wise `a + b` (residual connections), broadcasting as PyTorch.
pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    a + b
}

/// `torch.nn.AvgPool2d(kernel, stride)`: no padding, `ceil_mode = false`
/// (a partial window at the border is dropped), `count_include_pad = true`.
pub fn avg_pool2d(x: &Tensor, kernel: i64, stride: i64) -> Tensor {
    x.avg_pool2d(
        [kernel, kernel],
        [stride, stride],
        [0, 0],
        false,
        true,
        None,
    )
}

/// `torch.nn.MaxPool2d(kernel, stride, padding)`: dilation 1,
/// `ceil_mode = false`; padding never wins the max (it is `-inf`).
pub fn max_pool2d(x: &Tensor, kernel: i64, stride: i64, padding: i64) -> Tensor {
    x.max_pool2d(
        [kernel, kernel],
        [stride, stride],
        [padding, padding],
        [1, 1],
        false,
    )
}

/// `torch.nn.AdaptiveAvgPool2d(size)`: output `[N, C, size, size]`
/// (`size == 1`: global average pooling).
pub fn adaptive_avg_pool2d(x: &Tensor, size: i64) -> Tensor {
    x.adaptive_avg_pool2d([size, size])
}

/// `torch.flatten(x, 1)`: keeps the batch dimension, flattens the rest.
pub fn flatten(x: &Tensor) -> Tensor {
    x.flatten(1, -1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn leaf(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn grad_of_sum(out: &Tensor, input: &Tensor) -> Vec<f32> {
        out.sum(Kind::Float).backward();
        values(&input.grad())
    }

    /// `[1, 1, h, w]` holding 0, 1, 2, ... row by row.
    fn ramp(h: i64, w: i64) -> Tensor {
        Tensor::arange(h * w, (Kind::Float, Device::Cpu)).reshape([1, 1, h, w])
    }

    #[test]
    fn relu_values_and_gradient() {
        // Expected gradients are PyTorch 2.13's (`torch.relu(x).sum().backward()`).
        let x = leaf(&[-1.0, 0.0, 3.0, 6.0, 7.0]);
        let y = relu(&x);
        assert_eq!(values(&y), [0.0, 0.0, 3.0, 6.0, 7.0]);
        assert_eq!(grad_of_sum(&y, &x), [0.0, 0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn relu6_matches_pytorch_at_the_kinks() {
        // Expected gradients are PyTorch 2.13's (`nn.ReLU6()(x).sum().backward()`).
        let x = leaf(&[-1.0, 0.0, 3.0, 6.0, 7.0]);
        let y = relu6(&x);
        assert_eq!(values(&y), [0.0, 0.0, 3.0, 6.0, 6.0]);
        assert_eq!(grad_of_sum(&y, &x), [0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn add_broadcasts_and_passes_gradient_to_both() {
        let a = leaf(&[1.0, 2.0, 3.0]);
        let b = leaf(&[10.0]);
        let y = add(&a, &b);
        assert_eq!(values(&y), [11.0, 12.0, 13.0]);
        y.sum(Kind::Float).backward();
        assert_eq!(values(&a.grad()), [1.0; 3]);
        assert_eq!(values(&b.grad()), [3.0]);
    }

    #[test]
    fn avg_pool_drops_the_partial_border_window() {
        // 5x5 ramp, 2x2 windows with stride 2: the last row and column are
        // dropped (ceil_mode false).
        let y = avg_pool2d(&ramp(5, 5), 2, 2);
        assert_eq!(y.size(), [1, 1, 2, 2]);
        assert_eq!(values(&y), [3.0, 5.0, 13.0, 15.0]);
        // Overlapping windows: 3x3 kernel, stride 1 on a 4x4 ramp.
        let y = avg_pool2d(&ramp(4, 4), 3, 1);
        assert_eq!(values(&y), [5.0, 6.0, 9.0, 10.0]);
    }

    #[test]
    fn max_pool_padding_never_wins() {
        let x = -ramp(4, 4) - 1.0;
        let y = max_pool2d(&x, 3, 2, 1);
        assert_eq!(y.size(), [1, 1, 2, 2]);
        assert_eq!(values(&y), [-1.0, -2.0, -5.0, -6.0]);
        let y = max_pool2d(&ramp(4, 4), 2, 2, 0);
        assert_eq!(values(&y), [5.0, 7.0, 13.0, 15.0]);
    }

    #[test]
    fn adaptive_avg_pool_to_one_is_the_spatial_mean() {
        let x = Tensor::randn([2, 3, 5, 7], (Kind::Float, Device::Cpu));
        let y = adaptive_avg_pool2d(&x, 1);
        assert_eq!(y.size(), [2, 3, 1, 1]);
        let mean = x.mean_dim([2, 3].as_slice(), true, Kind::Float);
        assert!((y - mean).abs().max().double_value(&[]) < 1e-6);
        // 4x4 to 2x2: the four 2x2 quadrants.
        assert_eq!(
            values(&adaptive_avg_pool2d(&ramp(4, 4), 2)),
            [2.5, 4.5, 10.5, 12.5]
        );
    }

    #[test]
    fn flatten_keeps_the_batch_dimension() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let y = flatten(&x);
        assert_eq!(y.size(), [2, 60]);
        assert!(y.reshape([2, 3, 4, 5]).equal(&x));
        assert_eq!(
            flatten(&Tensor::zeros([1, 7, 1, 1], (Kind::Float, Device::Cpu))).size(),
            [1, 7]
        );
    }
}
