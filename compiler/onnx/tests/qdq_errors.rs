//! What QDQ cannot express is an error naming the layer; the pieces of the
//! export (weight codes, quantizer forms) against the seed's formulas.

mod common;

use common::{load, synthetic_checkpoint};
use qatc::driver::{self, Source, Syntax};
use qatc::ir::Quantizer;
use qatc_onnx::builder::Container;
use qatc_onnx::{act_quant_form, weight_codes, write_qdq_with, OnnxError, QdqOptions};

#[test]
fn sixteen_bit_activations_at_opset_13_name_the_layer() {
    let (_, g) = load("toynet", "cfg-1*");
    let ck = synthetic_checkpoint(&g, 1);
    let err = write_qdq_with(&g, &ck, &QdqOptions { opset: Some(13) }).unwrap_err();
    assert!(
        matches!(&err, OnnxError::NeedsOpset21 { layer, bits: 16, opset: 13 } if layer == "head.act_quant_out"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "layer `head.act_quant_out`: 16-bit activations need 16-bit QuantizeLinear, which ONNX \
         has from opset 21 on; this export is opset 13 (use opset 21: `--opset 21`, or no \
         `--opset`; or `--format qonnx`, whose Quant has any bit-width at opset 13)"
    );
    assert!(write_qdq_with(&g, &ck, &QdqOptions { opset: Some(21) }).is_ok());
    for opset in [12, 22] {
        let err = write_qdq_with(&g, &ck, &QdqOptions { opset: Some(opset) }).unwrap_err();
        assert!(matches!(err, OnnxError::Opset(o) if o == opset), "{err:?}");
    }
}

#[test]
fn a_missing_tensor_is_an_error() {
    let (_, g) = load("resnet20", "w8a8");
    let mut ck = synthetic_checkpoint(&g, 1);
    ck.tensors.remove("stage2.0.conv1.weight");
    let err = qatc_onnx::write_qdq(&g, &ck).unwrap_err();
    assert!(matches!(err, OnnxError::Checkpoint(_)), "{err:?}");
    assert!(err.to_string().contains("stage2.0.conv1.weight"), "{err}");
}

fn inline(text: &str) -> qatc::ir::Graph {
    let src = Source::from_text("t.qspec", text, Syntax::Qspec);
    driver::compile(&src)
        .and_then(|c| c.into_graph(None))
        .unwrap_or_else(|d| panic!("{}", d.render_plain(&src.name, &src.text)))
}

#[test]
fn one_bit_dorefa_activations_name_the_layer() {
    let g = inline(
        "model t {\n  input 3x8x8\n  classes 10\n  quant {\n    weights dorefa\n    acts \
         dorefa\n  }\n  stem: conv3x3(4) -> bn -> relu -> act(1) as q\n  fc: flatten -> \
         linear(classes)\n}\n",
    );
    let ck = synthetic_checkpoint(&g, 1);
    let err = qatc_onnx::write_qdq(&g, &ck).unwrap_err();
    let OnnxError::Unsupported { layer, op, reason } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((layer.as_str(), *op), ("stem.q", "act"), "{err}");
    assert!(reason.contains("sign"), "{err}");
}

#[test]
fn weight_codes_are_the_seeds_dorefa_weights() {
    let w = [-0.9f32, -0.2, 0.0, 0.05, 0.3, 1.4];
    let t: Vec<f32> = w.iter().map(|x| x.tanh()).collect();
    let max = t.iter().fold(0f32, |m, x| m.max(x.abs()));
    for bits in [3, 4, 8, 16] {
        let n = ((1 << (bits - 1)) - 1) as f32;
        let (codes, scale) = weight_codes(&w, bits);
        assert_eq!(scale, 1.0 / n);
        for ((c, x), w) in codes.iter().zip(&t).zip(&w) {
            // The fake-quant weight round(t n)/n, as DequantizeLinear
            // computes it (code * scale), within float rounding.
            let fake = ((x / max) * n).round_ties_even() / n;
            assert!(
                (*c as f32 * scale - fake).abs() <= 1e-6,
                "{bits} bit, w {w}"
            );
            assert!(c.abs() <= n as i64);
        }
    }
    assert_eq!(weight_codes(&w, 2), (vec![-1, -1, 0, 1, 1, 1], 1.0));
    let (codes, scale) = weight_codes(&w, 1);
    assert_eq!(codes, [-1, -1, 0, 1, 1, 1]);
    assert!((scale - 2.85 / 6.0).abs() < 1e-6);
}

#[test]
fn quantizer_forms() {
    // mPACT 8 bit, a = 2.54: int8, narrow range, scale a/127.
    let f = act_quant_form(&Quantizer::Mpact { alpha: 10.0 }, 8, Some(-2.54)).unwrap();
    assert_eq!(f.container, Container::I8);
    assert_eq!((f.lo, f.hi), (-127, 127));
    assert_eq!(f.q_scale, f.dq_scale);
    assert!((f.q_scale - 0.02).abs() < 1e-7);
    // PACT 4 bit: uint8 clipped to 15 levels.
    let f = act_quant_form(&Quantizer::Pact { alpha: 6.0 }, 4, Some(3.0)).unwrap();
    assert_eq!((f.container, f.lo, f.hi), (Container::U8, 0, 15));
    assert!((f.q_scale - 0.2).abs() < 1e-7);
    // DoReFa 8 bit: the 0.1 lives in the quantize scale only.
    let f = act_quant_form(&Quantizer::Dorefa, 8, None).unwrap();
    assert_eq!((f.container, f.lo, f.hi), (Container::U8, 0, 255));
    assert!((f.q_scale - 10.0 / 255.0).abs() < 1e-7);
    assert!((f.dq_scale - 1.0 / 255.0).abs() < 1e-9);
    // Fixed-scale PACT and 16-bit mPACT.
    let f = act_quant_form(&Quantizer::PactFixed { scale: 4.0 }, 2, None).unwrap();
    assert_eq!((f.lo, f.hi, f.q_scale), (0, 3, 4.0 / 3.0));
    let f = act_quant_form(&Quantizer::Mpact { alpha: 6.0 }, 16, Some(6.0)).unwrap();
    assert_eq!((f.container, f.lo, f.hi), (Container::I16, -32767, 32767));
    assert_eq!(f.x_clip, (-6.0, 6.0));
    // No form: a zero clipping value, 1-bit DoReFa.
    assert!(act_quant_form(&Quantizer::Mpact { alpha: 1.0 }, 8, Some(0.0)).is_err());
    assert!(act_quant_form(&Quantizer::Pact { alpha: 1.0 }, 8, Some(f32::NAN)).is_err());
    assert!(act_quant_form(&Quantizer::Dorefa, 1, None).is_err());
}
