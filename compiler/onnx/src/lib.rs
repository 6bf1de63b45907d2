//! qatc-onnx: a trained qatc model as ONNX, for the runtimes deployers use.
//!
//! ```text
//! ir::Graph + Checkpoint --write_qdq---> ONNX bytes (QDQ: QuantizeLinear / DequantizeLinear)
//!                        --write_qonnx-> ONNX bytes (QONNX: Quant nodes, for FINN / hls4ml)
//! ```
//!
//! One lowering pass (`lower`) writes both: every op but the quantizers is
//! shared, and each format supplies how a weight and an activation
//! quantizer are written (`qdq`, [`qonnx`]).
//!
//! Input: a lowered graph (one spec and profile) and a trained checkpoint
//! in the model's own variable names (`qatc_int::Checkpoint`, as `qatc int`
//! and `qatc export` read it). Output: a serialized `onnx.ModelProto`
//! ([`proto`]: prost messages with onnx.proto's field numbers; no protoc).
//!
//! The QDQ model computes the model's fake-quant **eval** forward, the one
//! `qatc eval` runs (`runtime/src/quant.rs`, seed reference section 1):
//!
//! - **Weights** (conv, linear) are stored as the integer codes of the
//!   seed's DoReFa weight quantizer, `round(tanh(w)/max|tanh(w)| * (2^(b-1)-1))`,
//!   with one scale per tensor (`1/(2^(b-1)-1)`, as qatc computes it) and
//!   dequantized by `DequantizeLinear` in front of `Conv` (groups and
//!   depthwise included) or `Gemm`. Up to 8 bits in `int8`; 9 to 16 bits in
//!   `int32` at opset 13 (`int16` from opset 21); 32-bit weights stay float.
//!   2-bit weights are `sign` codes with scale 1, 1-bit weights `sign(w)`
//!   with scale `mean|w|`.
//! - **Activation quantizers** become `QuantizeLinear -> Clip ->
//!   DequantizeLinear` (QCDQ) with zero point 0 ([`act_quant_form`]):
//!   mPACT at `b` bits: `int8`, scale `|a|/(2^(b-1)-1)`, clip
//!   `[-(2^(b-1)-1), 2^(b-1)-1]` (narrow range, so present at 8 bits too);
//!   PACT: `uint8`, scale `a/(2^b-1)`, clip `[0, 2^b-1]`; fixed-scale PACT
//!   the same with its constant `s`; DoReFa: `uint8`, quantize scale
//!   `10/(2^b-1)` and dequantize scale `1/(2^b-1)` (the seed's `0.1` is
//!   never undone, so the two scales differ by it). The `Clip` is left out
//!   where the container's own saturation is the clamp (PACT / DoReFa at 8
//!   bits). Rounding: ONNX's QuantizeLinear rounds half to even, as
//!   `torch.round` does; the two compute `x / scale` and `x * (1/scale)`
//!   in float32, so a value within an ulp of a rounding tie may land one
//!   step apart. 9 to 16-bit activations need 16-bit containers
//!   (`int16`/`uint16`), which QuantizeLinear has from opset 21: there the
//!   clamp is a float `Clip` before the quantizer (ONNX Runtime has no
//!   16-bit integer `Clip`). A quantizer at 32 bits is the identity.
//! - **BN** stays a `BatchNormalization` (inference form, eps 1e-5), as the
//!   fake-quant model keeps it unfolded; ReLU6 is `Clip(0, 6)`; pooling,
//!   flatten and residual adds are their ONNX ops; concat is `Concat` on
//!   the channels, a split part `Slice`, a channel shuffle
//!   `Reshape -> Transpose -> Reshape`, a gating multiply `Mul` (the
//!   `C x 1 x 1` gate broadcast), the smooth and hard activations their ONNX
//!   ops or their definitions where the opset lacks one (`lower`).
//!
//! The **QONNX** model ([`write_qonnx`]) is the same graph with every
//! quantizer one QONNX `Quant` node ([`qonnx::quant_params`]): weights
//! `code * scale` as float through a `Quant` that leaves them unchanged,
//! activations on the same grids as above (DoReFa's `0.1` a `Mul` in
//! front), any bit-width up to 16 at opset 13.
//!
//! Names follow the spec: the value each IR node computes, and the ONNX
//! node computing it, carry the IR node's name (`s2.0.conv1`,
//! `stem.act_quant_out`); constants add a suffix (`.weight_q`,
//! `.weight_scale`, `.scale`, `.zero_point`). The graph input is `input`
//! (`[N, C, H, W]`, float32, the normalised image), the output the fc's
//! logits `[N, classes]`.
//!
//! Invariants: nothing panics on user input; what a format cannot express is an
//! [`OnnxError`] naming the layer (1-bit DoReFa activations, 16-bit
//! activations in QDQ at opset 13, adaptive pooling with unequal windows),
//! the reason naming the format.

pub mod builder;
pub mod int;
pub mod int8;
mod lower;
pub mod proto;
mod qdq;
pub mod qonnx;

pub use int::{write_int_onnx, IntOnnxError};
pub use int8::{write_int8_onnx, Int8OnnxError, Int8Weights};
pub use qdq::{act_quant_form, min_opset, weight_codes, ActQuantForm};
pub use qonnx::{quant_params, QuantParams};

use prost::Message;
use qatc::ir::Graph;
use qatc_int::Checkpoint;

/// The lowest opset written: 8-bit QuantizeLinear / DequantizeLinear,
/// int32 DequantizeLinear, Clip on integer tensors.
pub const MIN_OPSET: i64 = 13;
/// The highest opset written (16-bit QuantizeLinear / DequantizeLinear).
pub const MAX_OPSET: i64 = 21;

/// Options of [`write_qdq_with`] and [`write_qonnx_with`].
#[derive(Clone, Debug, Default)]
pub struct QdqOptions {
    /// The ONNX opset (13 to 21); `None`: the lowest that holds the model
    /// (QDQ: [`min_opset`], 13, or 21 where an activation has 9 to 16 bits;
    /// QONNX: 13).
    pub opset: Option<i64>,
}

/// What the ONNX export can reject.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// A construct the format has no form for, naming the layer; the
    /// reason names the format (`no QDQ form: ...`).
    #[error("layer `{layer}` ({op}): {reason}")]
    Unsupported {
        layer: String,
        op: &'static str,
        reason: String,
    },
    /// An activation quantizer wider than 8 bits at an opset without 16-bit
    /// QuantizeLinear.
    #[error(
        "layer `{layer}`: {bits}-bit activations need 16-bit QuantizeLinear, which ONNX has from \
         opset 21 on; this export is opset {opset} (use opset 21: `--opset 21`, or no `--opset`; \
         or `--format qonnx`, whose Quant has any bit-width at opset 13)"
    )]
    NeedsOpset21 {
        layer: String,
        bits: u32,
        opset: i64,
    },
    #[error("ONNX opset {0} is not supported: qatc writes opsets {MIN_OPSET} to {MAX_OPSET}")]
    Opset(i64),
    /// A checkpoint without a tensor the graph needs.
    #[error(transparent)]
    Checkpoint(#[from] qatc_int::IntError),
}

/// The QDQ ONNX model of `graph` with the trained values of `ck`, at the
/// lowest opset that holds it, serialized (an `.onnx` file's bytes).
pub fn write_qdq(graph: &Graph, ck: &Checkpoint) -> Result<Vec<u8>, OnnxError> {
    write_qdq_with(graph, ck, &QdqOptions::default())
}

/// [`write_qdq`] with options.
pub fn write_qdq_with(
    graph: &Graph,
    ck: &Checkpoint,
    opts: &QdqOptions,
) -> Result<Vec<u8>, OnnxError> {
    Ok(qdq_model(graph, ck, opts)?.encode_to_vec())
}

/// The QDQ model as a message (for inspection; [`write_qdq_with`]
/// serializes it).
pub fn qdq_model(
    graph: &Graph,
    ck: &Checkpoint,
    opts: &QdqOptions,
) -> Result<proto::ModelProto, OnnxError> {
    let opset = opts.opset.unwrap_or_else(|| min_opset(graph));
    lower::model(graph, ck, opset, &qdq::Qdq)
}

/// The QONNX model of `graph` with the trained values of `ck` (opset 13),
/// serialized (an `.onnx` file's bytes): the same fake-quant eval forward
/// as [`write_qdq`], every quantizer a QONNX `Quant` node.
pub fn write_qonnx(graph: &Graph, ck: &Checkpoint) -> Result<Vec<u8>, OnnxError> {
    write_qonnx_with(graph, ck, &QdqOptions::default())
}

/// [`write_qonnx`] with options.
pub fn write_qonnx_with(
    graph: &Graph,
    ck: &Checkpoint,
    opts: &QdqOptions,
) -> Result<Vec<u8>, OnnxError> {
    Ok(qonnx_model(graph, ck, opts)?.encode_to_vec())
}

/// The QONNX model as a message.
pub fn qonnx_model(
    graph: &Graph,
    ck: &Checkpoint,
    opts: &QdqOptions,
) -> Result<proto::ModelProto, OnnxError> {
    lower::model(graph, ck, opts.opset.unwrap_or(MIN_OPSET), &qonnx::Qonnx)
}
