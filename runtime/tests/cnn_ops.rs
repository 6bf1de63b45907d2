//! The CNN ops of `qatc_runtime::ops` (issue 16: concat, split, channel
//! shuffle, the squeeze-excitation gate, sigmoid, hardsigmoid, hardswish,
//! SiLU, GELU, dropout, identity) against PyTorch's definitions, written here
//! independently of the ops: the channel ops by index arithmetic on small
//! tensors whose values encode their own indices, the activations as
//! formulas of primitive ops whose gradients autograd computes, and the
//! points where torch's gradient convention matters (hardswish and
//! hardsigmoid at -3 and 3) as literal values printed by PyTorch 2.13
//! (`reference/activations.py`, output in `reference/activations.txt`).
//!
//! Every op is checked on inputs in both memory layouts the runtime uses
//! (contiguous `NCHW` and channels-last): results are compared by logical
//! index, never by memory order.
//!
//! The last tests check what the compiler relies on to place one activation
//! quantizer after a concat (and before a split): an `ActQuant` commutes
//! with both, values and gradients (the clipping value's included), at
//! every quantizer kind, on the fused kernels and on the stock-op path.
//!
//! Only the dropout test draws from libtorch's global generator (after
//! seeding it); every other input is made deterministically, so that tests
//! running in parallel threads cannot move each other's draws.

use qatc_runtime::layers::channels_last;
use qatc_runtime::ops;
use qatc_runtime::quant::{self, ActQuant};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The memory layouts every op is checked on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Nchw,
    ChannelsLast,
}

const FORMATS: [Format; 2] = [Format::Nchw, Format::ChannelsLast];

/// Whether `t` (4-D) has channels-last strides (ignoring the strides of
/// dimensions of size 1, as PyTorch's `is_contiguous(memory_format=...)`).
fn is_channels_last(t: &Tensor) -> bool {
    let s = t.size();
    let want = [s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]];
    (0..4).all(|d| s[d] == 1 || t.stride()[d] == want[d])
}

/// A fresh leaf (requires a gradient) with `x`'s values in memory layout
/// `f`. The two layouts differ where `C > 1` and `H * W > 1`, as in most
/// shapes here.
fn leaf(x: &Tensor, f: Format) -> Tensor {
    let t = match f {
        Format::Nchw => x.contiguous(),
        Format::ChannelsLast => channels_last(x),
    };
    let t = t.detach().copy().set_requires_grad(true);
    match f {
        Format::Nchw => assert!(t.is_contiguous(), "NCHW leaf"),
        Format::ChannelsLast => {
            let s = t.size();
            let distinct = s[1] > 1 && s[2] * s[3] > 1;
            assert!(
                is_channels_last(&t) && !(distinct && t.is_contiguous()),
                "channels-last leaf"
            )
        }
    }
    t
}

/// A float tensor of `shape` whose element `i` (logical row-major order) is
/// `f(i)`.
fn from_fn(shape: &[i64], f: impl Fn(usize) -> f32) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n as usize).map(f).collect();
    Tensor::from_slice(&v).reshape(shape)
}

/// Deterministic, irregular values in `[-scale, scale]`.
fn wavy(shape: &[i64], seed: f32, scale: f32) -> Tensor {
    from_fn(shape, |i| (i as f32 * 0.913 + seed).sin() * scale)
}

/// `[n, c, h, w]` holding `offset + 1000 n + 100 c + 10 h + w` (exact in
/// `f32`): every element says where it came from.
fn coded(shape: [i64; 4], offset: f32) -> Tensor {
    let [_, c, h, w] = shape.map(|d| d as usize);
    from_fn(&shape, |i| {
        let (n, r) = (i / (c * h * w), i % (c * h * w));
        let (ci, r) = (r / (h * w), r % (h * w));
        let (hi, wi) = (r / w, r % w);
        offset + (1000 * n + 100 * ci + 10 * hi + wi) as f32
    })
}

/// The value at a logical index.
fn at(t: &Tensor, idx: [i64; 4]) -> f64 {
    t.double_value(&idx)
}

/// Every logical index of a 4-D shape.
fn indices(shape: &[i64]) -> impl Iterator<Item = [i64; 4]> {
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    (0..n).flat_map(move |a| {
        (0..c).flat_map(move |b| (0..h).flat_map(move |d| (0..w).map(move |e| [a, b, d, e])))
    })
}

/// The values in logical order (whatever the memory layout).
fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().contiguous().flatten(0, -1)).unwrap()
}

/// `sum(y * w)`, backpropagated: every input of `y` gets the gradient `w`
/// seen through the op.
fn backward_weighted(y: &Tensor, w: &Tensor) {
    (y * w).sum(Kind::Float).backward();
}

/// Same sizes and, element by element, the same values (`-0 == 0`).
fn assert_exact(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: sizes");
    let (g, w) = (values(got), values(want));
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        panic!("{what}: element {i} is {}, want {}", g[i], w[i]);
    }
}

/// Float tolerance of two float32 evaluations of one function by different
/// sequences of ops: `ulps` float32 epsilons of `max(1, |want|)`. Each side
/// is a handful of operations rounded within half an ulp (libtorch's `exp`
/// and `erf` within about one), so they agree within a few ulps of the
/// largest term; 16 leaves margin and is still thousands of times smaller
/// than any error of formula or convention (a wrong slope at a switch point
/// is off by 1/6 or more).
fn assert_close(what: &str, got: &Tensor, want: &Tensor, ulps: f32) {
    assert_eq!(got.size(), want.size(), "{what}: sizes");
    let (g, w) = (values(got), values(want));
    for i in 0..g.len() {
        let tol = ulps * f32::EPSILON * w[i].abs().max(1.0);
        assert!(
            (g[i] - w[i]).abs() <= tol,
            "{what}: element {i} is {}, want {} (tolerance {tol})",
            g[i],
            w[i]
        );
    }
}

// ---------------------------------------------------------------- channel ops

#[test]
fn concat_places_each_input_at_its_channel_offset() {
    let shapes = [[2, 3, 2, 3], [2, 1, 2, 3], [2, 2, 2, 3]];
    let inputs: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(k, &s)| coded(s, 10_000.0 * k as f32))
        .collect();
    let out_shape = [2, 6, 2, 3];
    let w = coded(out_shape, 0.5);
    for formats in [
        [Format::Nchw; 3],
        [Format::ChannelsLast; 3],
        [Format::Nchw, Format::ChannelsLast, Format::Nchw],
    ] {
        let leaves: Vec<Tensor> = inputs
            .iter()
            .zip(formats)
            .map(|(x, f)| leaf(x, f))
            .collect();
        let refs: Vec<&Tensor> = leaves.iter().collect();
        let y = ops::concat(&refs);
        assert_eq!(y.size(), out_shape);
        // Channel j of the output: input k's channel j - offset_k.
        let source = |j: i64| {
            let (k, off) = match j {
                0..=2 => (0, 0),
                3 => (1, 3),
                _ => (2, 4),
            };
            (k, j - off)
        };
        for [n, j, h, x] in indices(&out_shape) {
            let (k, c) = source(j);
            assert_eq!(
                at(&y, [n, j, h, x]),
                at(&inputs[k], [n, c, h, x]),
                "{formats:?}"
            );
        }
        // Each input's gradient is its slice of the output's.
        backward_weighted(&y, &w);
        for [n, j, h, x] in indices(&out_shape) {
            let (k, c) = source(j);
            assert_eq!(
                at(&leaves[k].grad(), [n, c, h, x]),
                at(&w, [n, j, h, x]),
                "{formats:?}"
            );
        }
    }
    // Inputs that are all channels-last (and not also contiguous, as the
    // one-channel input is) give a channels-last output.
    let (a, c) = (
        leaf(&inputs[0], Format::ChannelsLast),
        leaf(&inputs[2], Format::ChannelsLast),
    );
    assert!(is_channels_last(&ops::concat(&[&a, &c])));
}

#[test]
fn split_takes_consecutive_channel_slices_and_inverts_concat() {
    let shape = [2, 6, 2, 3];
    let x = coded(shape, 0.0);
    for f in FORMATS {
        for sizes in [&[1, 3, 2][..], &[2, 2, 2], &[6]] {
            let xl = leaf(&x, f);
            let parts = ops::split(&xl, sizes);
            assert_eq!(parts.len(), sizes.len());
            let mut offset = 0;
            for (part, &size) in parts.iter().zip(sizes) {
                assert_eq!(part.size(), [2, size, 2, 3]);
                for [n, c, h, w] in indices(&part.size()) {
                    assert_eq!(at(part, [n, c, h, w]), at(&x, [n, offset + c, h, w]));
                }
                offset += size;
            }
            // Round trips: concat(split(x)) == x, split(concat(parts)) == parts.
            let refs: Vec<&Tensor> = parts.iter().collect();
            let joined = ops::concat(&refs);
            assert_exact("concat(split(x))", &joined, &x);
            for (again, part) in ops::split(&joined, sizes).iter().zip(&parts) {
                assert_exact("split(concat(parts))", again, part);
            }
        }
        // The gradient: each used part's gradient at its channels, 0 at the
        // channels of a part that is not used.
        let xl = leaf(&x, f);
        let parts = ops::split(&xl, &[1, 3, 2]);
        let w0 = coded([2, 1, 2, 3], 0.25);
        let w2 = coded([2, 2, 2, 3], 50_000.0);
        ((&parts[0] * &w0).sum(Kind::Float) + (&parts[2] * &w2).sum(Kind::Float)).backward();
        let g = xl.grad();
        for [n, c, h, w] in indices(&shape) {
            let want = match c {
                0 => at(&w0, [n, 0, h, w]),
                1..=3 => 0.0,
                _ => at(&w2, [n, c - 4, h, w]),
            };
            assert_eq!(at(&g, [n, c, h, w]), want, "{f:?} channel {c}");
        }
    }
}

#[test]
#[should_panic]
fn split_sizes_must_add_up_to_the_channels() {
    let _ = ops::split(&coded([1, 4, 2, 2], 0.0), &[1, 2]);
}

#[test]
fn channel_shuffle_transposes_the_group_matrix() {
    let shape = [2, 6, 2, 3];
    let x = coded(shape, 0.0);
    for f in FORMATS {
        for groups in [1, 2, 3, 6] {
            let m = 6 / groups;
            let xl = leaf(&x, f);
            let y = ops::channel_shuffle(&xl, groups);
            assert_eq!(y.size(), shape);
            assert_eq!(
                is_channels_last(&y),
                f == Format::ChannelsLast,
                "layout kept"
            );
            // Output channel j holds input channel (j % g) * m + j / g ...
            let source = |j: i64| (j % groups) * m + j / groups;
            for [n, j, h, w] in indices(&shape) {
                assert_eq!(at(&y, [n, j, h, w]), at(&x, [n, source(j), h, w]));
            }
            // ... which is a permutation of the channels ...
            let mut sources: Vec<i64> = (0..6).map(source).collect();
            sources.sort();
            assert_eq!(sources, (0..6).collect::<Vec<_>>());
            // ... whose inverse is the shuffle with C / g groups.
            assert_exact(
                "shuffle(shuffle(x, g), C/g)",
                &ops::channel_shuffle(&y, m),
                &x,
            );
            // PyTorch's own `nn.ChannelShuffle` (libtorch's channel_shuffle).
            assert_exact("torch channel_shuffle", &y, &x.channel_shuffle(groups));
            // The gradient is the output's gradient permuted back.
            let wt = coded(shape, 0.5);
            backward_weighted(&y, &wt);
            let g = xl.grad();
            for [n, j, h, w] in indices(&shape) {
                assert_eq!(at(&g, [n, source(j), h, w]), at(&wt, [n, j, h, w]));
            }
        }
    }
}

#[test]
#[should_panic(expected = "do not split into")]
fn channel_shuffle_groups_must_divide_the_channels() {
    let _ = ops::channel_shuffle(&coded([1, 6, 2, 2], 0.0), 4);
}

#[test]
fn mul_broadcasts_the_gate_and_sums_its_gradient_over_the_map() {
    let shape = [2, 3, 4, 5];
    let x = wavy(&shape, 0.1, 2.0);
    let gate = wavy(&[2, 3, 1, 1], 1.3, 1.0);
    let w = wavy(&shape, 2.9, 1.0);
    for fx in FORMATS {
        for fg in FORMATS {
            let xl = leaf(&x, fx);
            let gl = gate.detach().copy().set_requires_grad(true);
            let gl = if fg == Format::ChannelsLast {
                channels_last(&gl.detach()).set_requires_grad(true)
            } else {
                gl
            };
            let y = ops::mul(&xl, &gl);
            assert_eq!(y.size(), shape);
            if fx == Format::ChannelsLast {
                assert!(is_channels_last(&y), "the map's layout is kept");
            }
            backward_weighted(&y, &w);
            let (gx, gg) = (xl.grad(), gl.grad());
            for [n, c, h, i] in indices(&shape) {
                let (xv, gv, wv) = (
                    at(&x, [n, c, h, i]) as f32,
                    at(&gate, [n, c, 0, 0]) as f32,
                    at(&w, [n, c, h, i]) as f32,
                );
                assert_eq!(at(&y, [n, c, h, i]) as f32, xv * gv, "value");
                assert_eq!(at(&gx, [n, c, h, i]) as f32, wv * gv, "map gradient");
            }
            // The gate's gradient: sum over H and W of w * x (in f64 here,
            // libtorch sums in f32 in its own order).
            assert_eq!(gg.size(), [2, 3, 1, 1]);
            let want = from_fn(&[2, 3, 1, 1], |k| {
                let (n, c) = (k as i64 / 3, k as i64 % 3);
                let mut s = 0.0f64;
                for h in 0..4 {
                    for i in 0..5 {
                        s += at(&w, [n, c, h, i]) * at(&x, [n, c, h, i]);
                    }
                }
                s as f32
            });
            // 20 terms of magnitude <= 2: float32 rounding of the sum.
            assert_close("gate gradient", &gg, &want, 64.0);
        }
    }
    // Same shapes: the element-wise product, each gradient the other factor.
    let z = wavy(&shape, 0.7, 1.5);
    for f in FORMATS {
        let (xl, zl) = (leaf(&x, f), leaf(&z, f));
        let y = ops::mul(&xl, &zl);
        let (xv, zv) = (values(&x), values(&z));
        let ref_y = from_fn(&shape, |i| xv[i] * zv[i]);
        assert_exact("x * z", &y, &ref_y);
        backward_weighted(&y, &w);
        assert_exact("d/dx", &xl.grad(), &(&w * &z));
        assert_exact("d/dz", &zl.grad(), &(&w * &x));
    }
}

// ---------------------------------------------------------------- activations

/// An activation and PyTorch's definition of it from primitive ops.
struct Activation {
    name: &'static str,
    op: fn(&Tensor) -> Tensor,
    reference: fn(&Tensor) -> Tensor,
    /// Whether the reference evaluates the value with libtorch's ops in
    /// libtorch's order (bit for bit the same), else within
    /// [`assert_close`]'s tolerance.
    exact: bool,
}

/// `[x > -3 and x < 3]` and `[x >= 3]` as float masks, without gradient:
/// the pieces of hardsigmoid and hardswish, with the switch points taken by
/// the outer pieces, as PyTorch's backward takes them.
fn hard_pieces(x: &Tensor) -> (Tensor, Tensor) {
    let x = x.detach();
    let inside = x.gt(-3.0).logical_and(&x.lt(3.0)).to_kind(Kind::Float);
    let above = x.ge(3.0).to_kind(Kind::Float);
    (inside, above)
}

/// `min(max(x + 3, 0), 6)` piecewise: `x + 3` inside, 6 above, 0 below,
/// with the gradient of the piece.
fn relu6_of_x_plus_3(x: &Tensor) -> Tensor {
    let (inside, above) = hard_pieces(x);
    (x + 3.0) * inside + above * 6.0
}

const ACTIVATIONS: [Activation; 5] = [
    Activation {
        name: "sigmoid",
        op: ops::sigmoid,
        // 1 / (1 + exp(-x))
        reference: |x| (x.neg().exp() + 1.0).reciprocal(),
        exact: false,
    },
    Activation {
        name: "hardsigmoid",
        op: ops::hardsigmoid,
        // min(max(x + 3, 0), 6) / 6
        reference: |x| relu6_of_x_plus_3(x) / 6.0,
        exact: true,
    },
    Activation {
        name: "hardswish",
        op: ops::hardswish,
        // x * min(max(x + 3, 0), 6) / 6
        reference: |x| x * relu6_of_x_plus_3(x) / 6.0,
        exact: true,
    },
    Activation {
        name: "silu",
        op: ops::silu,
        // x / (1 + exp(-x))
        reference: |x| x / (x.neg().exp() + 1.0),
        exact: false,
    },
    Activation {
        name: "gelu",
        op: ops::gelu,
        // 0.5 x (1 + erf(x / sqrt 2))
        reference: |x| x * 0.5 * ((x * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0),
        exact: false,
    },
];

#[test]
fn activations_match_their_definitions_in_values_and_gradients() {
    let shape = [2, 3, 4, 5];
    // -6.0, -5.9, ..., 5.9 (each k / 10 correctly rounded): -3, 0 and 3
    // exactly among them.
    let x = from_fn(&shape, |i| (i as f32 - 60.0) / 10.0);
    let xs = values(&x);
    assert!([-3.0, 0.0, 3.0].iter().all(|v| xs.contains(v)));
    let w = wavy(&shape, 0.3, 1.0);
    for act in &ACTIVATIONS {
        let xr = x.detach().copy().set_requires_grad(true);
        let want = (act.reference)(&xr);
        backward_weighted(&want, &w);
        let want_grad = xr.grad();
        for f in FORMATS {
            let what = format!("{} ({f:?})", act.name);
            let xl = leaf(&x, f);
            let y = (act.op)(&xl);
            assert_eq!(
                is_channels_last(&y),
                f == Format::ChannelsLast,
                "{what}: layout"
            );
            if act.exact {
                assert_exact(&what, &y, &want);
            } else {
                assert_close(&what, &y, &want, 16.0);
            }
            backward_weighted(&y, &w);
            assert_close(&format!("{what} gradient"), &xl.grad(), &want_grad, 16.0);
        }
    }
}

/// An activation, and PyTorch's values and gradients at the points of
/// [`torch_reference_values`].
type Pinned = (&'static str, fn(&Tensor) -> Tensor, [f32; 8], [f32; 8]);

#[test]
fn torch_reference_values() {
    // `reference/activations.txt`: PyTorch 2.13's values and gradients of
    // `f(x).sum()` at these points.
    let points = [-4.0f32, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0, 6.0];
    let x = Tensor::from_slice(&points).reshape([1, 2, 2, 2]);
    #[rustfmt::skip]
    let table: [Pinned; 5] = [
        ("hardswish", ops::hardswish,
         [-0.0, -0.0, -0.375, 0.0, 1.125, 3.0, 4.0, 6.0],
         // 0 at x = -3 and 1 at x = 3: the outer pieces' slopes.
         [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
        ("hardsigmoid", ops::hardsigmoid,
         [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0],
         // 1/6 only strictly inside (-3, 3).
         [0.0, 0.0, 0.16666667, 0.16666667, 0.16666667, 0.0, 0.0, 0.0]),
        ("sigmoid", ops::sigmoid,
         [0.01798621, 0.047425874, 0.18242553, 0.5, 0.81757444, 0.95257413, 0.98201376, 0.9975274],
         [0.017662706, 0.04517666, 0.14914647, 0.25, 0.14914647, 0.045176655, 0.017662734, 0.0024664658]),
        ("silu", ops::silu,
         [-0.07194484, -0.14227761, -0.27363828, 0.0, 1.2263616, 2.8577225, 3.928055, 5.9851646],
         [-0.05266461, -0.08810411, -0.04129416, 0.5, 1.0412942, 1.0881041, 1.0526646, 1.0123262]),
        ("gelu", ops::gelu,
         [-0.00012671947, -0.0040498674, -0.10021086, 0.0, 1.3997891, 2.9959502, 3.9998732, 6.0],
         [-0.00050362945, -0.011945605, -0.12746915, 0.5, 1.1274692, 1.0119456, 1.0005037, 1.0]),
    ];
    for (name, op, value, grad) in table {
        let want_value = Tensor::from_slice(&value).reshape([1, 2, 2, 2]);
        let want_grad = Tensor::from_slice(&grad).reshape([1, 2, 2, 2]);
        for f in FORMATS {
            let what = format!("{name} ({f:?})");
            let xl = leaf(&x, f);
            let y = op(&xl);
            y.sum(Kind::Float).backward();
            if matches!(name, "hardswish" | "hardsigmoid") {
                // Piecewise polynomial: libtorch's kernels give PyTorch's
                // bits on any machine.
                assert_exact(&what, &y, &want_value);
                assert_exact(&format!("{what} gradient"), &xl.grad(), &want_grad);
            } else {
                // exp and erf may be vectorised differently elsewhere.
                assert_close(&what, &y, &want_value, 16.0);
                assert_close(&format!("{what} gradient"), &xl.grad(), &want_grad, 16.0);
            }
        }
    }
}

#[test]
fn identity_is_the_input_itself() {
    let x = wavy(&[2, 3, 2, 2], 0.0, 1.0);
    let w = wavy(&[2, 3, 2, 2], 1.0, 1.0);
    for f in FORMATS {
        let xl = leaf(&x, f);
        let y = ops::identity(&xl);
        assert_eq!(y.data_ptr(), xl.data_ptr(), "no copy");
        assert_eq!(y.stride(), xl.stride());
        assert_exact("identity", &y, &x);
        backward_weighted(&y, &w);
        assert_exact("identity gradient", &xl.grad(), &w);
    }
}

// -------------------------------------------------------------------- dropout

#[test]
fn dropout_is_identity_in_evaluation_and_inverted_dropout_in_training() {
    let shape = [8, 16, 32, 32];
    // Values in [1, 2): a zero in the output is a dropped element.
    let x = wavy(&shape, 0.4, 0.5) + 1.5;
    let w = wavy(&shape, 2.2, 1.0);
    for f in FORMATS {
        // Evaluation (and p = 0 in training): x itself.
        for (p, train) in [(0.3, false), (1.0, false), (0.0, true)] {
            let xl = leaf(&x, f);
            let y = ops::dropout(&xl, p, train);
            assert_eq!(y.data_ptr(), xl.data_ptr(), "p {p} train {train}: no copy");
            backward_weighted(&y, &w);
            assert_exact("dropout gradient in evaluation", &xl.grad(), &w);
        }
        for p in [0.1, 0.5] {
            let what = format!("dropout p = {p} ({f:?})");
            let xl = leaf(&x, f);
            tch::manual_seed(7);
            let y = ops::dropout(&xl, p, true);
            assert_eq!(y.size(), shape);
            let kept = y.ne(0.0).to_kind(Kind::Float);
            // The fraction dropped: binomial(n, p) / n, within 6 standard
            // deviations of p (fails by chance with probability 2e-9).
            let n = kept.numel() as f64;
            let dropped = 1.0 - kept.sum(Kind::Float).double_value(&[]) / n;
            let sd = (p * (1.0 - p) / n).sqrt();
            assert!((dropped - p).abs() <= 6.0 * sd, "{what}: dropped {dropped}");
            // Survivors scaled by 1 / (1 - p) (libtorch multiplies by a
            // float32 1 / (1 - p), not divides: within float rounding).
            let scale = 1.0 / (1.0 - p);
            assert_close(&what, &y, &(&x * &kept * scale), 4.0);
            // The gradient goes through the same mask and scale.
            backward_weighted(&y, &w);
            assert_close(
                &format!("{what} gradient"),
                &xl.grad(),
                &(&w * &kept * scale),
                4.0,
            );
            // The same seed draws the same mask, another seed another one.
            tch::manual_seed(7);
            assert!(ops::dropout(&xl, p, true).equal(&y), "{what}: same seed");
            tch::manual_seed(8);
            assert!(!ops::dropout(&xl, p, true).equal(&y), "{what}: other seed");
        }
        // p = 1: everything dropped.
        let y = ops::dropout(&leaf(&x, f), 1.0, true);
        assert_eq!(y.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}

#[test]
#[should_panic]
fn dropout_probability_must_be_in_0_1() {
    let _ = ops::dropout(&coded([1, 2, 2, 2], 0.0), 1.5, false);
}

// ------------------------------------------- one activation quantizer, shared

/// Every kind of activation quantizer, with its clipping value under `path`
/// where it has one.
type MakeQuant = fn(&nn::Path) -> ActQuant;

const QUANTIZERS: [(&str, MakeQuant); 5] = [
    ("off", |_| ActQuant::off()),
    ("dorefa 4", |_| ActQuant::dorefa(4)),
    ("pact 4", |p| ActQuant::pact(p, 4, 2.0)),
    ("mpact 4", |p| ActQuant::mpact(p, 4, 1.5)),
    ("fixed-scale pact 4", |_| ActQuant::fixed_scale_pact(4, 2.0)),
];

/// Activations over every quantizer's clipping range, with the bounds
/// themselves planted (PACT's 2, mPACT's +-1.5, DoReFa's 0 and 10, the
/// fixed scale 2).
fn activations(shape: &[i64], seed: f32) -> Tensor {
    let specials = [2.0, 1.5, -1.5, 0.0, 10.0, -0.0, 12.0];
    from_fn(shape, |i| {
        if i % 5 == 0 {
            specials[(i / 5) % specials.len()]
        } else {
            (i as f32 * 0.61 + seed).sin() * 4.5
        }
    })
}

/// Upstream gradients 1, 2 or 3: integers, so that the clipping value's
/// gradient (a sum over the elements) is exact in any order of summation
/// and the two sides can be compared bit for bit.
fn integer_weights(shape: &[i64], seed: usize) -> Tensor {
    from_fn(shape, |i| ((i * 7 + seed) % 3 + 1) as f32)
}

/// A quantizer of `make`'s kind with its own clipping value (`alpha` under a
/// fresh variable store, at the kind's initial value).
fn quantizer(make: MakeQuant) -> (nn::VarStore, ActQuant) {
    let vs = nn::VarStore::new(Device::Cpu);
    let q = make(&(vs.root() / "q"));
    (vs, q)
}

fn alpha_grad(q: &ActQuant) -> Option<Tensor> {
    q.alpha().map(Tensor::grad)
}

#[test]
fn one_quantizer_after_concat_equals_the_same_quantizer_on_each_input() {
    let (sa, sb) = ([2, 3, 4, 5], [2, 2, 4, 5]);
    let (a, b) = (activations(&sa, 0.2), activations(&sb, 1.7));
    let w = integer_weights(&[2, 5, 4, 5], 1);
    for fused in [true, false] {
        quant::set_fused_kernels(fused);
        for (name, make) in QUANTIZERS {
            for (fa, fb) in [
                (Format::Nchw, Format::Nchw),
                (Format::ChannelsLast, Format::ChannelsLast),
                (Format::Nchw, Format::ChannelsLast),
            ] {
                let what = format!("{name} (fused {fused}, {fa:?} + {fb:?})");
                // After the concat: one quantizer on the joined tensor.
                let (_vs1, q1) = quantizer(make);
                let (a1, b1) = (leaf(&a, fa), leaf(&b, fb));
                let after = q1.forward(&ops::concat(&[&a1, &b1]));
                backward_weighted(&after, &w);
                // Before it: the same quantizer (the same alpha) on each input.
                let (_vs2, q2) = quantizer(make);
                let (a2, b2) = (leaf(&a, fa), leaf(&b, fb));
                let each = ops::concat(&[&q2.forward(&a2), &q2.forward(&b2)]);
                backward_weighted(&each, &w);

                assert_exact(&what, &after, &each);
                assert_exact(&format!("{what}: d/da"), &a1.grad(), &a2.grad());
                assert_exact(&format!("{what}: d/db"), &b1.grad(), &b2.grad());
                if let (Some(g1), Some(g2)) = (alpha_grad(&q1), alpha_grad(&q2)) {
                    assert_exact(&format!("{what}: d/dalpha"), &g1, &g2);
                    assert_ne!(g1.double_value(&[]), 0.0, "{what}: alpha gets a gradient");
                }
                if name != "off" {
                    assert!(!after.equal(&ops::concat(&[&a1, &b1])), "{what}: quantized");
                }
            }
        }
    }
}

#[test]
fn one_quantizer_before_split_equals_the_same_quantizer_on_each_part() {
    let shape = [2, 5, 4, 5];
    let sizes = [2, 3];
    let x = activations(&shape, 0.9);
    let ws = [
        integer_weights(&[2, 2, 4, 5], 0),
        integer_weights(&[2, 3, 4, 5], 2),
    ];
    let loss = |parts: &[Tensor]| {
        parts
            .iter()
            .zip(&ws)
            .map(|(p, w)| (p * w).sum(Kind::Float))
            .reduce(|s, t| s + t)
            .unwrap()
    };
    for fused in [true, false] {
        quant::set_fused_kernels(fused);
        for (name, make) in QUANTIZERS {
            for f in FORMATS {
                let what = format!("{name} (fused {fused}, {f:?})");
                // Quantize, then split.
                let (_vs1, q1) = quantizer(make);
                let x1 = leaf(&x, f);
                let first = ops::split(&q1.forward(&x1), &sizes);
                loss(&first).backward();
                // Split, then quantize each part with the shared quantizer.
                let (_vs2, q2) = quantizer(make);
                let x2 = leaf(&x, f);
                let then: Vec<Tensor> = ops::split(&x2, &sizes)
                    .iter()
                    .map(|p| q2.forward(p))
                    .collect();
                loss(&then).backward();

                for (p1, p2) in first.iter().zip(&then) {
                    assert_exact(&what, p1, p2);
                }
                assert_exact(&format!("{what}: d/dx"), &x1.grad(), &x2.grad());
                if let (Some(g1), Some(g2)) = (alpha_grad(&q1), alpha_grad(&q2)) {
                    assert_exact(&format!("{what}: d/dalpha"), &g1, &g2);
                    assert_ne!(g1.double_value(&[]), 0.0, "{what}: alpha gets a gradient");
                }
            }
        }
    }
}

/// `channels(x, start, len)` is the part of `split` that starts there.
#[test]
fn channels_is_one_part_of_a_split() {
    let x = Tensor::arange(2 * 6 * 2 * 2, (Kind::Float, Device::Cpu)).view([2, 6, 2, 2]);
    let parts = qatc_runtime::ops::split(&x, &[1, 2, 3]);
    let mut start = 0;
    for (p, len) in parts.iter().zip([1, 2, 3]) {
        let c = qatc_runtime::ops::channels(&x, start, len);
        assert_eq!(c.size(), p.size());
        assert!(c.equal(p));
        start += len;
    }
}
