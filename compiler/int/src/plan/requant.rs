//! Requantization: a pending per-channel sum turned into integers in a
//! quantizer's domain.
//!
//! [`Builder::target`] reads a quantizer's integer domain off the
//! checkpoint (`q = clamp(round(x * gain))`, value `q / scale`: mPACT,
//! PACT, fixed PACT, DoReFa). [`Builder::requant`] emits one
//! [`Requant`] layer for a [`Lin`]:
//! `out = clamp(round_div(sum_t mult_t[c] * src_t + bias[c], 2^shift), lo, hi)`
//! with each term's multiplier `gain * k_t[c] / denom_t` and the bias
//! `gain * bias[c]` as `fixed<bits, int_bits>` integers (computed in
//! float32 as the seed does under `trunc`, in f64 otherwise; `scaled`
//! picks the binary point per layer), a pending ReLU/ReLU6 as the clamp,
//! the seed's floor division for pooled features. Channels that output
//! one clamp bound for every input and whose constants do not fit are
//! folded to that constant ([`IntPlan::folded`](super::IntPlan::folded)).
//! [`Builder::term_reach`] and [`Builder::channel_reach`] bound how far a
//! sum can move, for that folding and for sizing a materialised value.
//!
//! Invariants: a constant that does not fit its format is an
//! [`IntError::FormatOverflow`] (or, with `saturate_constants`, clamped and
//! recorded); a non-positive or NaN clipping value is an
//! [`IntError::BadClip`]. `target` is never called with
//! [`Quantizer::None`] (its callers handle the identity first).

// Per-channel loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use super::builder::{unsupported, Builder, Lin, Rectify, Term, Q};
use super::weights::FLOAT_INPUT_BOUND;
use super::{ConvInput, Layer, Requant, RequantTerm, TensorKind};
use crate::fixed::{Div, FixedFormat, Rounding};
use crate::IntError;
use qatc::ir::{Node, Quantizer};

/// Where a quantizer sends values: `q = clamp(round(x * gain))`, value `q / scale`.
pub(super) struct Target {
    pub(super) gain: f64,
    pub(super) scale: f64,
    pub(super) lo: i64,
    pub(super) hi: i64,
    pub(super) bits: u32,
}

impl Builder<'_> {
    /// The quantizer's integer domain.
    pub(super) fn target(&mut self, n: &Node, q: &Quantizer) -> Result<Target, IntError> {
        let b = n.out_bit;
        let alpha = |me: &mut Self| -> Result<f64, IntError> {
            let a = me.ck.scalar(&format!("{}.alpha", n.name))?;
            me.clips.insert(n.name.clone(), a);
            if a.is_nan() || a <= 0.0 {
                return Err(IntError::BadClip {
                    layer: n.name.clone(),
                    alpha: a as f64,
                });
            }
            Ok(a as f64)
        };
        let trunc = self.opts.rounding == Rounding::Trunc;
        Ok(match q {
            Quantizer::Mpact { .. } => {
                if b < 2 {
                    return Err(unsupported(&n.name, "mPACT needs at least 2 bits"));
                }
                let a = alpha(self)?;
                let r = (1i64 << (b - 1)) - 1;
                let s = r as f64 / a;
                Target {
                    gain: s,
                    scale: s,
                    // The seed clamps to [-r-1, r]; the fake quantizer to [-r, r].
                    lo: if trunc { -r - 1 } else { -r },
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::Pact { .. } => {
                let a = alpha(self)?;
                let r = (1i64 << b) - 1;
                let s = r as f64 / a;
                Target {
                    gain: s,
                    scale: s,
                    lo: 0,
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::PactFixed { scale } => {
                let r = (1i64 << b) - 1;
                let s = r as f64 / scale;
                Target {
                    gain: s,
                    scale: s,
                    lo: 0,
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::Dorefa => {
                if b < 2 {
                    return Err(unsupported(
                        &n.name,
                        "1-bit DoReFa activations (sign) have no integer form here",
                    ));
                }
                let r = (1i64 << b) - 1;
                Target {
                    gain: 0.1 * r as f64,
                    scale: r as f64,
                    lo: 0,
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::None => unreachable!("identity handled by the caller"),
        })
    }

    /// Turns a pending sum into integers in `t`'s domain.
    pub(super) fn requant(
        &mut self,
        n: &Node,
        lin: &Lin,
        t: &Target,
        fmt: FixedFormat,
    ) -> Result<Q, IntError> {
        let per_layer = self.opts.rounding == Rounding::Scaled;
        self.requant_at(n, lin, t, fmt, per_layer)
    }

    /// [`Self::requant`]; with `per_layer`, the binary point placed for
    /// this requantization and the constants rounded from their exact
    /// values whatever the mode (as `scaled` does).
    pub(super) fn requant_at(
        &mut self,
        n: &Node,
        lin: &Lin,
        t: &Target,
        fmt: FixedFormat,
        per_layer: bool,
    ) -> Result<Q, IntError> {
        let trunc = self.opts.rounding == Rounding::Trunc;
        let nearest = per_layer || !trunc;
        let c = lin.channels;
        // `scaled`: the binary point that gives the largest constant the
        // format's full width.
        let fmt = if per_layer {
            let mut maxv = 0f64;
            for term in &lin.terms {
                for ch in 0..c {
                    maxv = maxv.max((t.gain / term.denom * term.k[ch]).abs());
                }
            }
            for ch in 0..c {
                maxv = maxv.max((t.gain * lin.bias[ch]).abs());
            }
            let room = ((1u64 << (fmt.bits - 1)) - 1) as f64;
            let frac = if maxv > 0.0 {
                (room / maxv).log2().floor().clamp(0.0, 56.0) as u32
            } else {
                fmt.frac()
            };
            // `frac` fraction bits; the integer part is what is left of the
            // width, at least one bit (the constants fit the width by the
            // choice of `frac`).
            let int_bits = fmt.bits.saturating_sub(frac).max(1);
            FixedFormat::new(frac + int_bits, int_bits)
        } else {
            fmt
        };
        let (mut lo, mut hi) = (t.lo, t.hi);
        match lin.relu {
            Rectify::None => {}
            Rectify::Relu => lo = lo.max(0),
            Rectify::Relu6 => {
                lo = lo.max(0);
                let six = 6.0 * t.gain;
                hi = hi.min(if trunc { six.trunc() } else { six.round() } as i64);
            }
            Rectify::Clamp { lo: l, hi: h } => {
                // The interval's ends in the output grid, rounded as the
                // values are (rounding is monotone, so rounding the clamped
                // value is clamping the rounded one to the rounded ends),
                // within the quantizer's range (so that `lo <= hi`).
                let end = |v: f64| {
                    let x = v * t.gain;
                    (if trunc { x.trunc() } else { x.round() }).clamp(t.lo as f64, t.hi as f64)
                        as i64
                };
                if l.is_finite() {
                    lo = lo.max(end(l));
                }
                if h.is_finite() {
                    hi = hi.min(end(h));
                }
            }
        }
        // A term's multiplier and the bias of channel `ch`, as (f32, f64):
        // the seed's float32 computation and the exact value.
        let mult_of = |term: &Term, ch: usize| -> (f32, f64) {
            let r32 = if term.recip_f32 {
                (1.0f32 / term.denom as f32) * t.gain as f32
            } else {
                (t.gain / term.denom) as f32
            };
            let m32 = term.k_f32.as_ref().map_or(r32, |k| r32 * k[ch]);
            (m32, t.gain / term.denom * term.k[ch])
        };
        let bias_of = |ch: usize| (t.gain as f32 * lin.bias_f32[ch], t.gain * lin.bias[ch]);
        // A channel whose output is the same clamp bound for every input the
        // layer can get (its real pre-clamp value, bias plus the multipliers
        // times the accumulators' worst-case bounds, stays more than one
        // step beyond `lo` or `hi`) is a constant. Where its constants do
        // not fit the format (a channel that batch norm scaled by a
        // near-zero variance: huge multiplier and bias), it is folded into
        // that constant instead of failing: exact, since the fake-quant
        // model outputs the same bound there. Not with
        // `saturate_constants`, which keeps the seed's clamped constants.
        let fold: Vec<Option<i64>> = (0..c)
            .map(|ch| {
                if self.opts.saturate_constants {
                    return None;
                }
                let reach = t.gain * self.channel_reach(lin, ch, false);
                let (b32, b) = bias_of(ch);
                let value = if !reach.is_finite() || !b.is_finite() {
                    None
                } else if b + reach < lo as f64 - 1.0 {
                    Some(lo)
                } else if b - reach > hi as f64 + 1.0 {
                    Some(hi)
                } else {
                    None
                }?;
                let all_fit = self.fits(nearest, b32, b, fmt)
                    && lin.terms.iter().all(|term| {
                        let (m32, m64) = mult_of(term, ch);
                        self.fits(nearest, m32, m64, fmt)
                    });
                (!all_fit).then_some(value)
            })
            .collect();
        for (ch, v) in fold.iter().enumerate() {
            if let Some(v) = v {
                self.folded.push(format!(
                    "{}: channel {ch} -> {v} (constants beyond {fmt}; the output is {v} for every input)",
                    n.name
                ));
            }
        }
        let mut terms = Vec::new();
        let mut worst = 0f64;
        for term in &lin.terms {
            let mut mult = Vec::with_capacity(c);
            let mut real = Vec::with_capacity(c);
            let mut mmax = 0f64;
            for ch in 0..c {
                let (m32, m64) = mult_of(term, ch);
                let m = match fold[ch] {
                    Some(_) => 0,
                    None => self.fixed(nearest, &n.name, "multiplier", m32, m64, fmt)?,
                };
                mmax = mmax.max(m.unsigned_abs() as f64);
                mult.push(m);
                real.push(m64);
            }
            worst += mmax * term.bound;
            terms.push(RequantTerm {
                src: term.src,
                mult,
                real,
            });
        }
        let mut bias = Vec::with_capacity(c);
        let mut bias_real = Vec::with_capacity(c);
        for ch in 0..c {
            let (b32, b64) = bias_of(ch);
            let b = match fold[ch] {
                // The bound itself, at the binary point.
                Some(v) => v << fmt.frac(),
                None => self.fixed(nearest, &n.name, "bias", b32, b64, fmt)?,
            };
            worst += b.unsigned_abs() as f64;
            bias.push(b);
            bias_real.push(b64);
        }
        let mut div = if trunc { Div::Trunc } else { Div::Nearest };
        // The seed rescales the pooled features with a floor division and
        // clamps them to [-2^(b-1), 2^(b-1)] (ToyNet's `INTforward`).
        if trunc && lin.terms.len() == 1 && lin.terms[0].pooled && lin.terms[0].k_f32.is_none() {
            div = Div::Floor;
            hi += 1;
        }
        let shape = self.tensors[lin.terms[0].src].shape;
        let out = self.new_tensor(
            &n.name,
            [c, shape[1], shape[2]],
            TensorKind::Act {
                scale: t.scale,
                lo,
                hi,
                bits: t.bits,
            },
            false,
        );
        self.layers.push(Layer::Requant(Requant {
            name: n.name.clone(),
            terms,
            bias,
            bias_real,
            format: fmt,
            shift: fmt.frac(),
            div,
            lo,
            hi,
            output: out,
            wide: worst >= 4.0e18,
        }));
        self.node_tensors.insert(n.name.clone(), out);
        Ok(Q {
            t: out,
            scale: t.scale,
            lo,
            hi,
            pooled: false,
        })
    }

    /// How far a term's accumulator reaches in channel `ch`: its
    /// worst-case bound, or for the accumulator of a conv that reads the
    /// float input (whose bound is unknown), the weights' row sum times
    /// [`FLOAT_INPUT_BOUND`].
    pub(super) fn term_reach(&self, term: &Term, ch: usize) -> f64 {
        if term.bound < 2f64.powi(40) {
            return term.bound;
        }
        // Through the channel gathers (split, shuffle) to the conv's own channel.
        let (mut src, mut ch) = (term.src, ch);
        while let Some((s, c)) = self.layers.iter().find_map(|l| match l {
            Layer::Channels(g) if g.output == src => Some((g.input, g.from[ch])),
            _ => None,
        }) {
            (src, ch) = (s, c);
        }
        self.layers
            .iter()
            .find_map(|l| match l {
                Layer::Conv(c) if c.output == src && matches!(c.input, ConvInput::Float) => {
                    let per = c.weights.len() / c.cout.max(1);
                    let row = &c.weights[ch * per..(ch + 1) * per];
                    let sum: f64 = row.iter().map(|w| w.unsigned_abs() as f64).sum();
                    Some(sum * FLOAT_INPUT_BOUND * c.float_scale)
                }
                _ => None,
            })
            .unwrap_or(term.bound)
    }

    /// How far the pending sum of channel `ch` can move from its bias, in
    /// real units: the sum over its terms of |multiplier| times the
    /// accumulator's worst-case bound, or with `sizing` times
    /// [`Self::term_reach`] (which assumes float inputs within
    /// [`FLOAT_INPUT_BOUND`]: for choosing a scale, never for a proof).
    pub(super) fn channel_reach(&self, lin: &Lin, ch: usize, sizing: bool) -> f64 {
        lin.terms
            .iter()
            .map(|term| {
                let bound = if sizing {
                    self.term_reach(term, ch)
                } else {
                    term.bound
                };
                (term.k[ch] / term.denom).abs() * bound
            })
            .sum()
    }
}
