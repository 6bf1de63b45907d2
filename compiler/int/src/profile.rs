//! Where the integer engine's time goes: every layer of a plan timed on one
//! thread over a set of images (`qatc int bench --layers`).
//!
//! Input: a plan and images. Output: per layer of the plan (and the output
//! layer) its kind in words, its multiply-accumulates per image and its
//! time on the median image (robust to a thread preempted mid-layer); [`LayerProfile::by_kind`] sums them per kind of work.
//! The plan runs as `evaluate` runs it: a requantization fused into the
//! conv before it is timed with that conv (its own line says so, at 0).
//! The clock is read around each layer, so the profile costs a little time
//! of its own: the throughput figures of `qatc int bench` are measured
//! without it.

use crate::engine::{self, SimOptions};
use crate::plan::{ConvInput, IntPlan, Layer, PoolKind};
use crate::{Images, IntError};
use serde::Serialize;

/// One layer's share of an image's time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerTime {
    /// Index into `plan.layers` (`plan.layers.len()`: the output layer).
    pub index: usize,
    pub name: String,
    /// What the layer computes, in words (`conv 3x3 s1 16->16 at 32x32`).
    pub kind: String,
    /// The group it is summed into by [`LayerProfile::by_kind`].
    pub group: &'static str,
    /// Multiply-accumulates per image (convs and linears; 0 otherwise).
    pub macs: u64,
    /// Time per image, nanoseconds: the median over the images.
    pub ns: f64,
}

/// Every layer's time, in plan order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerProfile {
    pub images: usize,
    pub layers: Vec<LayerTime>,
}

impl LayerProfile {
    /// Nanoseconds per image, all layers.
    pub fn total_ns(&self) -> f64 {
        self.layers.iter().map(|l| l.ns).sum()
    }

    /// `(group, ns per image, MACs per image, layers)` per group, the most
    /// expensive first.
    pub fn by_kind(&self) -> Vec<(&'static str, f64, u64, usize)> {
        let mut groups: Vec<(&'static str, f64, u64, usize)> = Vec::new();
        for l in &self.layers {
            match groups.iter_mut().find(|g| g.0 == l.group) {
                Some(g) => {
                    g.1 += l.ns;
                    g.2 += l.macs;
                    g.3 += 1;
                }
                None => groups.push((l.group, l.ns, l.macs, 1)),
            }
        }
        groups.sort_by(|a, b| b.1.total_cmp(&a.1));
        groups
    }
}

/// A layer's kind in words, its group and its multiply-accumulates.
fn describe(plan: &IntPlan, layer: &Layer) -> (String, &'static str, u64) {
    let shape = |t: usize| {
        let [c, h, w] = plan.tensors[t].shape;
        format!("{c}x{h}x{w}")
    };
    match layer {
        Layer::Conv(l) => {
            let [oh, ow] = l.out_hw;
            let macs = (l.cout * oh * ow * l.fan_in) as u64;
            let k = l.kernel;
            let (what, group) = if l.input == ConvInput::Float {
                ("float conv", "float stem conv")
            } else if l.in_hw == [1, 1] && k == 1 {
                ("linear", "linear")
            } else if l.groups == l.cin && l.groups == l.cout && l.groups > 1 {
                ("depthwise", "depthwise conv")
            } else if l.groups > 1 {
                ("grouped conv", "grouped conv")
            } else if k == 1 {
                ("conv", "1x1 conv")
            } else {
                ("conv", "kxk conv")
            };
            let groups = if l.groups > 1 && l.groups != l.cin {
                format!(" g{}", l.groups)
            } else {
                String::new()
            };
            (
                format!(
                    "{what} {k}x{k} s{}{groups} {}->{} at {}x{}",
                    l.stride, l.cin, l.cout, oh, ow
                ),
                group,
                macs,
            )
        }
        Layer::Requant(r) => {
            let terms = r.terms.len();
            (
                format!(
                    "requant {} term{} -> {}",
                    terms,
                    if terms == 1 { "" } else { "s" },
                    shape(r.output)
                ),
                if terms == 1 {
                    "requantization"
                } else {
                    "residual add (requantization)"
                },
                0,
            )
        }
        Layer::QuantizeInput(q) => (
            format!("quantize input -> {}", shape(q.output)),
            "input quantization",
            0,
        ),
        Layer::Pool(p) => {
            let kind = match p.kind {
                PoolKind::Avg { kernel, stride } => format!("avg pool {kernel}x{kernel} s{stride}"),
                PoolKind::Max { kernel, stride, .. } => {
                    format!("max pool {kernel}x{kernel} s{stride}")
                }
                PoolKind::Adaptive { size } => format!("adaptive avg pool to {size}x{size}"),
            };
            (format!("{kind} -> {}", shape(p.output)), "pooling", 0)
        }
        Layer::Channels(c) => (
            format!("channel gather -> {}", shape(c.output)),
            "split, shuffle, concat",
            0,
        ),
        Layer::Concat(c) => (
            format!("concat of {} -> {}", c.inputs.len(), shape(c.output)),
            "split, shuffle, concat",
            0,
        ),
        Layer::Mul(m) => (
            format!(
                "{} -> {}",
                if m.broadcast { "gate" } else { "multiply" },
                shape(m.output)
            ),
            "gating multiply",
            0,
        ),
        Layer::HardSwish(h) => (
            format!("hardswish -> {}", shape(h.output)),
            "activation functions",
            0,
        ),
        Layer::Lut(l) => (
            format!("{} lookup table -> {}", l.function, shape(l.output)),
            "activation functions",
            0,
        ),
    }
}

/// Runs every image through `plan` on this thread, timing each layer.
pub fn profile_layers(
    plan: &IntPlan,
    images: &dyn Images,
    sim: &SimOptions,
) -> Result<LayerProfile, IntError> {
    let weights = engine::Weights::new(plan);
    let mut ws = engine::Workspace::new(plan);
    // As `evaluate` runs (so as `qatc int bench` times): requantizations
    // fused into the convs before them where the plan allows.
    ws.fuse_requant(true);
    // Conv index -> the requantization it does, and back.
    let fused: Vec<Option<usize>> = (0..plan.layers.len())
        .map(|li| weights.fused_requant(li).filter(|_| sim.acc_bits.is_none()))
        .collect();
    let mut fused_into = vec![None; plan.layers.len()];
    for (c, &r) in fused.iter().enumerate() {
        if let Some(r) = r {
            fused_into[r] = Some(c);
        }
    }
    let mut img = vec![0f32; plan.input_len()];
    // One untimed image first (buffers sized, caches and pages warm).
    if !images.is_empty() {
        images.image(0, &mut img);
        engine::run_image(plan, &weights, &img, &mut ws, sim)?;
    }
    ws.time_layers(plan);
    // Per layer, its time on each image (the clock's running sums taken
    // apart image by image).
    let slots = plan.layers.len() + 1;
    let mut per_image = vec![Vec::with_capacity(images.len()); slots];
    let mut before = vec![0u64; slots];
    for i in 0..images.len() {
        images.image(i, &mut img);
        engine::run_image(plan, &weights, &img, &mut ws, sim)?;
        for ((times, b), &now) in per_image.iter_mut().zip(&mut before).zip(ws.layer_ns()) {
            times.push(now - *b);
            *b = now;
        }
    }
    // The median image: a thread preempted inside a layer (a shared
    // machine) adds milliseconds to one image's layer, which a mean over
    // a few hundred images would spread over every image.
    let ns: Vec<f64> = per_image
        .iter_mut()
        .map(|t| {
            t.sort_unstable();
            match t.len() {
                0 => 0.0,
                n if n % 2 == 1 => t[n / 2] as f64,
                n => (t[n / 2 - 1] + t[n / 2]) as f64 / 2.0,
            }
        })
        .collect();
    let mut layers: Vec<LayerTime> = plan
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let (mut kind, mut group, macs) = describe(plan, layer);
            if let Some(r) = fused[i] {
                kind = format!("{kind} + requant of {}", plan.layers[r].name());
            }
            if let Some(c) = fused_into[i] {
                kind = format!("(fused into {})", plan.layers[c].name());
                group = "requantization fused into a conv";
            }
            LayerTime {
                index: i,
                name: layer.name().to_string(),
                kind,
                group,
                macs,
                ns: ns[i],
            }
        })
        .collect();
    let o = &plan.output;
    layers.push(LayerTime {
        index: plan.layers.len(),
        name: "output".into(),
        kind: format!(
            "logits: {} term{} -> {} classes",
            o.terms.len(),
            if o.terms.len() == 1 { "" } else { "s" },
            o.classes
        ),
        group: "output (dequantization)",
        macs: 0,
        ns: ns[plan.layers.len()],
    });
    Ok(LayerProfile {
        images: images.len(),
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_sum_their_layers_and_sort_by_time() {
        let l = |group, ns, macs| LayerTime {
            index: 0,
            name: String::new(),
            kind: String::new(),
            group,
            macs,
            ns,
        };
        let p = LayerProfile {
            images: 1,
            layers: vec![l("a", 1.0, 10), l("b", 5.0, 0), l("a", 2.0, 5)],
        };
        assert_eq!(p.total_ns(), 8.0);
        assert_eq!(p.by_kind(), vec![("b", 5.0, 0, 1), ("a", 3.0, 15, 2)]);
    }
}
