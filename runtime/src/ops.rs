//! The stateless tensor ops of generated models: activations, residual
//! addition and gating, pooling, flattening, the channel ops of CNN blocks
//! (concat, split, shuffle), dropout and the identity.
//!
//! Generated code calls these instead of tch (see `docs/conventions.md`:
//! generated code never calls tch for what the runtime wraps), so that each
//! op's exact PyTorch semantics (defaults, gradients at kinks) are fixed in
//! one place, tested once, and can change without regenerating models.
//!
//! Input and output: float tensors, `[N, C, H, W]` for the pooling ops and
//! the channel ops (dimension 1 is the channel dimension). Every op matches
//! the PyTorch module or function of the same name with its default
//! options, values and gradients alike (the seed's models are PyTorch), and
//! where libtorch has the op it is libtorch's own, so that values and
//! gradients are its kernels' bit for bit. Sizes are square (one number for
//! both directions), as in the specs.
//!
//! Dimensions are logical: an input may have any memory layout (contiguous
//! `NCHW`, or channels-last under [`crate::layers::Layout::ChannelsLast`]),
//! and the result is the same tensor of values; element-wise ops keep their
//! input's memory layout, as PyTorch's do (`tests/cnn_ops.rs` checks every op
//! on both layouts).

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

/// `torch.cat(xs, dim=1)`: the inputs side by side along the channel
/// dimension, in order. Every input has the same sizes except in
/// dimension 1 (`[N, C_i, H, W]` gives `[N, sum C_i, H, W]`); the gradient
/// of each input is its slice of the output's gradient.
///
/// The output is a new tensor, in the inputs' memory layout where they all
/// have the same one (channels-last stays channels-last), else contiguous
/// `NCHW` (PyTorch's rule).
///
/// # Panics
/// If `xs` is empty or the sizes disagree outside dimension 1.
pub fn concat(xs: &[&Tensor]) -> Tensor {
    Tensor::cat(xs, 1)
}

/// Channels `start .. start + len` of `x` (`x[:, start:start + len]`): one
/// part of a split, as generated code computes each part on its own (a view
/// of `x`'s storage; the gradient of `x` is the part's gradient in place).
///
/// # Panics
/// If the range is not inside the channels (the compiler never emits one).
pub fn channels(x: &Tensor, start: i64, len: i64) -> Tensor {
    x.narrow(1, start, len)
}

/// `torch.split(x, sizes, dim=1)`: consecutive channel slices of `x`, the
/// `i`-th `sizes[i]` channels wide (`[N, C, H, W]` gives
/// `[N, sizes[i], H, W]`; equal parts are `[C / k; k]`). The inverse of
/// [`concat`]; the gradient of `x` is the parts' gradients side by side (0
/// for a part that is not used).
///
/// The parts are views of `x`'s storage, as PyTorch's are.
///
/// # Panics
/// If the sizes are negative or do not add up to `C`.
pub fn split(x: &Tensor, sizes: &[i64]) -> Vec<Tensor> {
    x.split_with_sizes(sizes, 1)
}

/// `torch.nn.ChannelShuffle(groups)` (ShuffleNet): the channels as a
/// `groups x (C / groups)` matrix, transposed. With `m = C / groups`,
/// output channel `j` is input channel `(j % groups) * m + j / groups`;
/// the inverse is `channel_shuffle(y, m)`. Shape `[N, C, H, W]` unchanged;
/// the gradient is the inverse permutation of the output's gradient.
///
/// Computed as ShuffleNet writes it (view as `[N, g, m, H, W]`, transpose
/// the two group dimensions, reshape back; one copy), over `NHWC` for a
/// channels-last input so that the output stays channels-last, as
/// PyTorch's `channel_shuffle` keeps it; either way the same values.
///
/// # Panics
/// If `x` is not 4-D, or `groups` is not positive or does not divide `C`.
pub fn channel_shuffle(x: &Tensor, groups: i64) -> Tensor {
    let size = x.size();
    assert_eq!(
        size.len(),
        4,
        "channel_shuffle: expected [N, C, H, W], got {size:?}"
    );
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    assert!(
        groups > 0 && c % groups == 0,
        "channel_shuffle: {c} channels do not split into {groups} groups"
    );
    let m = c / groups;
    if is_channels_last(x) {
        x.permute([0, 2, 3, 1])
            .reshape([n, h, w, groups, m])
            .transpose(3, 4)
            .reshape([n, h, w, c])
            .permute([0, 3, 1, 2])
    } else {
        x.reshape([n, groups, m, h, w])
            .transpose(1, 2)
            .reshape([n, c, h, w])
    }
}

/// Whether a 4-D tensor has channels-last strides (`[N, H, W, C]` in
/// memory, as [`crate::layers::channels_last`] makes them), ignoring the
/// strides of dimensions of size 1 as PyTorch's
/// `is_contiguous(memory_format=torch.channels_last)` does.
fn is_channels_last(t: &Tensor) -> bool {
    let size = t.size();
    if size.len() != 4 {
        return false;
    }
    let (c, h, w) = (size[1], size[2], size[3]);
    let want = [h * w * c, 1, w * c, c];
    let stride = t.stride();
    (0..4).all(|d| size[d] == 1 || stride[d] == want[d])
}

/// Element-wise `x * gate` (`torch.mul`), broadcasting as PyTorch: the
/// squeeze-excitation gate `[N, C, 1, 1]` scales every position of channel
/// `c` of `x` (`[N, C, H, W]`), or `gate` has `x`'s shape. Gradients:
/// `gate * g` for `x`, and for a broadcast gate the sum of `x * g` over the
/// broadcast dimensions (H and W).
pub fn mul(x: &Tensor, gate: &Tensor) -> Tensor {
    x * gate
}

/// `torch.sigmoid` (`torch.nn.Sigmoid`): `1 / (1 + exp(-x))`; gradient
/// `s * (1 - s)`.
pub fn sigmoid(x: &Tensor) -> Tensor {
    x.sigmoid()
}

/// `torch.nn.Hardsigmoid`: `min(max(x + 3, 0), 6) / 6`. Gradient `1/6`
/// strictly inside `(-3, 3)` and 0 elsewhere, also at exactly `-3` and `3`
/// (PyTorch 2.13's; `clamp(x + 3, 0, 6) / 6` under autograd would give
/// `1/6` at both ends).
pub fn hardsigmoid(x: &Tensor) -> Tensor {
    x.hardsigmoid()
}

/// `torch.nn.Hardswish` (MobileNetV3): `x * min(max(x + 3, 0), 6) / 6`.
/// Gradient `x / 3 + 1/2` strictly inside `(-3, 3)`, 0 for `x <= -3` and 1
/// for `x >= 3`: at the two switch points PyTorch 2.13 takes the outer
/// piece's slope (0 at `-3`, 1 at `3`), not the middle piece's (`-1/2`,
/// `3/2`) that `x * clamp(x + 3, 0, 6) / 6` under autograd gives.
pub fn hardswish(x: &Tensor) -> Tensor {
    x.hardswish()
}

/// `torch.nn.SiLU`, also called swish: `x * sigmoid(x)`; gradient
/// `s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
pub fn silu(x: &Tensor) -> Tensor {
    x.silu()
}

/// `torch.nn.GELU()` (`approximate='none'`, the default): the exact
/// `x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))`, not the tanh
/// approximation; gradient `Phi(x) + x * phi(x)`.
pub fn gelu(x: &Tensor) -> Tensor {
    x.gelu("none")
}

/// `torch.nn.functional.dropout(x, p, training=train)`: with `train`, each
/// element is zeroed with probability `p` and the survivors are scaled by
/// `1 / (1 - p)` (inverted dropout, so evaluation needs no rescaling), the
/// gradient going through the same mask and scale; without `train` (and
/// when `p == 0`), `x` itself. The mask is drawn from libtorch's generator:
/// the same after the same `tch::manual_seed`.
///
/// # Panics
/// If `p` is not in `[0, 1]` (in evaluation too, as PyTorch).
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    x.dropout(p, train)
}

/// `torch.nn.Identity`: `x` itself (a shallow clone: the same storage and
/// autograd node), gradient passed through unchanged.
pub fn identity(x: &Tensor) -> Tensor {
    x.shallow_clone()
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
