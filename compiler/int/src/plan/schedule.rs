//! The order the plan's layers run in, where the graph's order leaves a
//! choice: a residual add's shortcut is computed before the last layer of
//! its main path.
//!
//! The graph lists a block's main path first and its shortcut after it
//! (MobileNetV2's `conv3` before `shortcut.0`, ResNet20's `conv2` before
//! `identity_conv`), so the add's requantization reads an accumulator
//! computed several layers earlier. Moving the shortcut's layers up puts
//! the add right after the conv of its accumulator, with its other term
//! already written: the engine can then requantize the sum in that conv's
//! epilogue (`engine::fused`). The layers compute the same values in
//! either order; only where nothing between the conv and the add depends
//! on the conv (or on anything else between them) is a layer moved.

use super::{Layer, TensorId};

/// Reorders `layers` so that, where possible, every two-term
/// requantization directly follows the conv whose accumulator it reads,
/// the layers that compute its other term moved before that conv.
pub(super) fn hoist_shortcuts(layers: &mut Vec<Layer>) {
    let mut r = 0;
    while r < layers.len() {
        if let Some(order) = hoisted(layers, r) {
            let mut old: Vec<Option<Layer>> =
                std::mem::take(layers).into_iter().map(Some).collect();
            *layers = order.into_iter().filter_map(|i| old[i].take()).collect();
        }
        r += 1;
    }
}

/// The new order of `layers` when layer `r` is a two-term requantization
/// of a conv's accumulator (conv at `a < r`) whose other term some layer
/// between them writes, and the layers between them are exactly the ones
/// that term needs, none reading the conv's output: `..a`, those layers,
/// the conv, `r..`. Else `None`.
fn hoisted(layers: &[Layer], r: usize) -> Option<Vec<usize>> {
    let Layer::Requant(req) = &layers[r] else {
        return None;
    };
    let [t0, t1] = req.terms.as_slice() else {
        return None;
    };
    let writer = |t: TensorId| layers[..r].iter().rposition(|l| l.output() == t);
    let conv = |t: TensorId| writer(t).filter(|&i| matches!(layers[i], Layer::Conv(_)));
    // The accumulator's conv: the earlier of the two terms' writers.
    let (a, other) = match (conv(t0.src), conv(t1.src)) {
        (Some(a), _) if writer(t1.src).is_some_and(|q| q > a) => (a, t1.src),
        (_, Some(a)) if writer(t0.src).is_some_and(|q| q > a) => (a, t0.src),
        _ => return None,
    };
    let acc = layers[a].output();
    // The layers between that the other term needs, back from its writer.
    let mut needed = vec![other];
    for l in layers[a + 1..r].iter().rev() {
        if !needed.contains(&l.output()) {
            return None;
        }
        needed.extend(l.inputs());
    }
    if needed.contains(&acc) {
        return None;
    }
    Some(
        (0..a)
            .chain(a + 1..r)
            .chain([a])
            .chain(r..layers.len())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::layer;
    use crate::fixed::Div;
    use crate::plan::{ConvInput, Requant, RequantTerm};
    use crate::FixedFormat;

    fn conv(name: &str, input: TensorId, output: TensorId) -> Layer {
        let mut l = layer(2, 2, 1, 1, 0, 1, [2, 2], vec![1; 4]);
        l.name = name.into();
        l.input = ConvInput::Tensor(input);
        l.output = output;
        Layer::Conv(l)
    }

    fn requant(name: &str, srcs: &[TensorId], output: TensorId) -> Layer {
        Layer::Requant(Requant {
            name: name.into(),
            terms: srcs
                .iter()
                .map(|&src| RequantTerm {
                    src,
                    mult: vec![1; 2],
                    real: vec![0.0; 2],
                })
                .collect(),
            bias: vec![0; 2],
            bias_real: vec![0.0; 2],
            format: FixedFormat::new(32, 16),
            shift: 0,
            div: Div::Floor,
            lo: -128,
            hi: 127,
            output,
            wide: false,
        })
    }

    fn names(layers: &[Layer]) -> Vec<&str> {
        layers.iter().map(Layer::name).collect()
    }

    /// MobileNetV2's block: `conv3` (tensor 1 into 2), then the shortcut
    /// conv and its quantizer (0 into 3 into 4), then the add of 2 and 4.
    fn block() -> Vec<Layer> {
        vec![
            conv("conv1", 0, 1),
            conv("conv3", 1, 2),
            conv("shortcut", 0, 3),
            requant("sq", &[3], 4),
            requant("add", &[2, 4], 5),
            conv("next", 5, 6),
        ]
    }

    #[test]
    fn a_shortcut_moves_before_the_conv_its_add_follows() {
        let mut layers = block();
        hoist_shortcuts(&mut layers);
        assert_eq!(
            names(&layers),
            ["conv1", "shortcut", "sq", "conv3", "add", "next"]
        );
        // Terms in the other order: the same.
        let mut swapped = block();
        if let Layer::Requant(r) = &mut swapped[4] {
            r.terms.reverse();
        }
        hoist_shortcuts(&mut swapped);
        assert_eq!(names(&swapped), names(&layers));
        // Already in place: unchanged.
        let before = names(&layers).join(" ");
        hoist_shortcuts(&mut layers);
        assert_eq!(names(&layers).join(" "), before);
    }

    #[test]
    fn nothing_moves_past_what_it_depends_on() {
        // The shortcut reads the main path's accumulator.
        let mut reads_acc = block();
        reads_acc[2] = conv("shortcut", 2, 3);
        hoist_shortcuts(&mut reads_acc);
        assert_eq!(names(&reads_acc), names(&block()));
        // A layer between that the add does not need.
        let mut other = block();
        other.insert(3, conv("side", 0, 7));
        let want = names(&other).join(" ");
        hoist_shortcuts(&mut other);
        assert_eq!(names(&other).join(" "), want);
        // The other term written before the conv (an identity shortcut).
        let mut identity = vec![
            conv("conv1", 0, 1),
            conv("conv2", 1, 2),
            requant("add", &[2, 0], 5),
        ];
        hoist_shortcuts(&mut identity);
        assert_eq!(names(&identity), ["conv1", "conv2", "add"]);
    }
}
