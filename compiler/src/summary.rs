//! Cost report of a lowered model: per-layer params and MACs, totals, the
//! seed-compatible MAC count, weight memory and BOPs.
//!
//! Input: an [`ir::Graph`]. Output: a [`Summary`], printed as a table or
//! serialised to JSON (keys documented in docs/qspec.md).
//!
//! Counting conventions (seed reference section 4):
//! - params exclude clipping values (counted separately as `clip_values`);
//!   BN counts weight and bias (2 per channel), biases count;
//! - conv MACs = out elements x (in channels / groups) x k x k; fc MACs = in x out;
//! - the seed's legacy profiler adds 2 ops per BN output element, 1 per
//!   average-pool output element (unless the pool was a functional call it
//!   did not see), (kernel elements + 1) per adaptive-average-pool output
//!   element, and 0 for ReLU and max pooling;
//! - weight memory: conv / linear weights at their `w_bit` (32 = 4 bytes),
//!   biases at 32 bits, BN as 2 values per channel at `bn_bits`, clipping
//!   values at 32 bits; each tensor rounded up to whole bytes;
//! - BOPs = MACs x w_bit x a_bit, with a_bit the bit-width of the layer's input.

use crate::ir::{Graph, Op};
use crate::ops::hooks::{bytes, CostClass, Counts};
use serde::Serialize;
use std::fmt::Write;

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub op: String,
    pub slot: String,
    pub in_shape: String,
    pub out_shape: String,
    pub w_bit: Option<u32>,
    pub a_bit: u32,
    pub out_bit: u32,
    pub params: u64,
    pub macs: u64,
    /// Extra ops the seed's profiler counted for this layer (BN, pooling).
    pub seed_ops: u64,
    pub weight_bytes: u64,
    pub bops: u64,
    /// The op has no exact integer form (sigmoid, swish, gelu): integer
    /// inference needs a lookup table. Absent from the JSON when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inexact_in_integers: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub params: u64,
    pub clip_values: u64,
    pub conv_macs: u64,
    pub fc_macs: u64,
    pub bn_ops: u64,
    pub pool_ops: u64,
    /// conv + fc MACs + BN ops + pool ops: the seed's "MADDS".
    pub seed_macs: u64,
    pub weight_bytes: u64,
    pub bops: u64,
    /// Largest single activation tensor of one sample, at its bit-width.
    pub peak_activation_bytes: u64,
    pub layers: u64,
    pub act_quantizers: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub profile: String,
    pub input: String,
    pub classes: i64,
    pub layers: Vec<LayerRow>,
    pub totals: Totals,
}

/// Computes the report for a graph.
pub fn summarize(g: &Graph) -> Summary {
    let mut rows = Vec::new();
    let mut t = Totals::default();
    for n in &g.nodes {
        if matches!(n.op, Op::Input(_)) {
            continue;
        }
        let out = n.out_shape.numel() as u64;
        let w_bit = n.w_bit.unwrap_or(32) as u64;
        let Counts {
            params,
            macs,
            seed_ops,
            weight_bytes,
            class,
        } = n.op.hooks().counts(&n.io());
        match class {
            CostClass::Conv => t.conv_macs = t.conv_macs.saturating_add(macs),
            CostClass::Fc => t.fc_macs = t.fc_macs.saturating_add(macs),
            CostClass::BatchNorm => t.bn_ops = t.bn_ops.saturating_add(seed_ops),
            CostClass::Pool => t.pool_ops = t.pool_ops.saturating_add(seed_ops),
            CostClass::ActQuant { clip } => {
                t.act_quantizers += 1;
                t.clip_values += u64::from(clip);
            }
            CostClass::None => {}
        }
        let bops = macs.saturating_mul(w_bit * n.a_bit as u64);
        t.params = t.params.saturating_add(params);
        t.weight_bytes = t.weight_bytes.saturating_add(weight_bytes);
        t.bops = t.bops.saturating_add(bops);
        t.layers += 1;
        t.peak_activation_bytes = t.peak_activation_bytes.max(bytes(out * n.out_bit as u64));
        rows.push(LayerRow {
            name: n.name.clone(),
            op: n.op.kind().to_string(),
            slot: g.slots[n.slot].name.clone(),
            in_shape: n.in_shape.to_string(),
            out_shape: n.out_shape.to_string(),
            w_bit: n.w_bit,
            a_bit: n.a_bit,
            out_bit: n.out_bit,
            params,
            macs,
            seed_ops,
            weight_bytes,
            bops,
            inexact_in_integers: !n.op.hooks().exact_in_integers(),
        });
    }
    t.seed_macs = t
        .conv_macs
        .saturating_add(t.fc_macs)
        .saturating_add(t.bn_ops)
        .saturating_add(t.pool_ops);
    let input = g
        .nodes
        .first()
        .map(|n| n.out_shape.to_string())
        .unwrap_or_default();
    Summary {
        model: g.model.clone(),
        profile: g.profile.clone(),
        input,
        classes: g.classes,
        layers: rows,
        totals: t,
    }
}

/// Groups digits: 1234567 -> "1,234,567".
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Summary {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model {} (profile {}), input {}, {} classes",
            self.model, self.profile, self.input, self.classes
        );
        let headers = [
            "layer", "op", "input", "output", "w_bit", "a_bit", "params", "MACs",
        ];
        let mut cells: Vec<[String; 8]> = Vec::new();
        for r in &self.layers {
            cells.push([
                r.name.clone(),
                r.op.clone(),
                r.in_shape.clone(),
                r.out_shape.clone(),
                r.w_bit.map(|w| w.to_string()).unwrap_or_else(|| "-".into()),
                if r.op == "act" {
                    r.out_bit.to_string()
                } else {
                    r.a_bit.to_string()
                },
                thousands(r.params),
                thousands(r.macs),
            ]);
        }
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for c in &cells {
            for (i, v) in c.iter().enumerate() {
                widths[i] = widths[i].max(v.len());
            }
        }
        let fmt_row = |vals: &[String]| -> String {
            vals.iter()
                .enumerate()
                .map(|(i, v)| {
                    if i < 4 {
                        format!("{:<w$}", v, w = widths[i])
                    } else {
                        format!("{:>w$}", v, w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let _ = writeln!(s, "{}", fmt_row(&headers.map(String::from)));
        let _ = writeln!(
            s,
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for c in &cells {
            let _ = writeln!(s, "{}", fmt_row(c));
        }
        let t = &self.totals;
        let _ = writeln!(s);
        let m = |v: u64| format!("{:.6} M", v as f64 / 1e6);
        let lines = [
            (
                "params (clipping values excluded)",
                format!("{} ({})", thousands(t.params), m(t.params)),
            ),
            ("clipping values", thousands(t.clip_values)),
            ("conv MACs", thousands(t.conv_macs)),
            ("fc MACs", thousands(t.fc_macs)),
            ("BN ops", thousands(t.bn_ops)),
            ("pool ops", thousands(t.pool_ops)),
            (
                "seed-compatible total",
                format!("{} ({})", thousands(t.seed_macs), m(t.seed_macs)),
            ),
            (
                "weight memory",
                format!("{} bytes", thousands(t.weight_bytes)),
            ),
            (
                "peak activation",
                format!("{} bytes", thousands(t.peak_activation_bytes)),
            ),
            ("BOPs", thousands(t.bops)),
        ];
        for (k, v) in lines {
            let _ = writeln!(s, "{k:<34} {v}");
        }
        let inexact: Vec<&str> = self
            .layers
            .iter()
            .filter(|r| r.inexact_in_integers)
            .map(|r| r.name.as_str())
            .collect();
        if !inexact.is_empty() {
            let _ = writeln!(
                s,
                "no exact integer form (integer inference needs a lookup table): {}",
                inexact.join(", ")
            );
        }
        s
    }
}
