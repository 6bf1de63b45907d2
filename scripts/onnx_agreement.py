"""The comparisons of scripts/onnx-agreement.sh (docs/export.md, "Agreement
on trained checkpoints"). Run with `$QATC_ONNX_PYTHON` and
`PYTHONPATH=$QATC_ONNX_PYTHONPATH` (`source scripts/onnx-env.sh`).

    python3 onnx_agreement.py DIR [--qonnx-images M] [--label NAME]

DIR, as onnx-agreement.sh fills it:
    fq-logits.csv            qatc eval --logits: the fake-quant eval forward (libtorch)
    int-<rounding>/          qatc int bench --dump: inputs.f32, logits.f32, meta.json
                             (the images every runtime gets, their labels, the
                             integer engine's logits)
    onnx/*.onnx              qatc export --format onnx (QDQ)
    qonnx/*.onnx             qatc export --format qonnx (where this qatc has it)
    onnx-int-<rounding>/*.onnx  qatc export --format onnx-int --rounding R (idem)

Comparisons, on the same N images:
    QDQ in ONNX Runtime (CPU provider, one thread; graph optimisations off,
      then all on) against the fake-quant logits;
    QONNX in qonnx's executor (qonnx.core.onnx_exec.execute_onnx) on M of
      them (image i*N/M) against the fake-quant logits;
    onnx-int in ONNX Runtime (off and all on) against the integer engine's
      logits of the same rounding (bit-equal expected);
    the integer engine itself against the fake-quant logits, for context.
Each row: images, top-1 agreement with the reference, rows bit-equal,
max |logit diff|, accuracy of the runtime and of the reference.

Prints a markdown table and writes DIR/agreement.json.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np


def load_int(d):
    meta = json.load(open(os.path.join(d, "meta.json")))
    n, *chw = meta["shape"]
    x = np.fromfile(os.path.join(d, "inputs.f32"), dtype="<f4").reshape([n] + chw)
    logits = np.fromfile(os.path.join(d, "logits.f32"), dtype="<f4").reshape(n, -1)
    return meta, x, logits


def one_onnx(d):
    files = sorted(glob.glob(os.path.join(d, "*.onnx")))
    return files[0] if files else None


def ort_run(path, x, level, batch=64):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def qonnx_run(path, x, batch=50):
    """qonnx's executor needs every shape known: the batch dimension is
    fixed to the batch run and shapes inferred (qonnx's InferShapes)."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes
    import qonnx.core.onnx_exec as oe

    # qonnx 1.0.0 builds its one-node models with onnx's newest IR version,
    # which ONNX Runtime 1.31 does not load: lowered to 10, as the tests do
    # (compiler/onnx/tests/common/mod.rs).
    if not getattr(oe.qonnx_make_model, "_ir10", False):
        make = oe.qonnx_make_model

        def make_ir10(graph, **kw):
            m = make(graph, **kw)
            m.ir_version = min(m.ir_version, 10)
            return m

        make_ir10._ir10 = True
        oe.qonnx_make_model = make_ir10

    base = onnx.load(path)
    models = {}

    def model_for(b):
        if b not in models:
            m = onnx.ModelProto()
            m.CopyFrom(base)
            for v in list(m.graph.input) + list(m.graph.output):
                v.type.tensor_type.shape.dim[0].dim_value = b
            del m.graph.value_info[:]
            models[b] = ModelWrapper(m).transform(InferShapes())
        return models[b]

    iname, oname = base.graph.input[0].name, base.graph.output[0].name
    outs = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        outs.append(execute_onnx(model_for(len(xb)), {iname: xb})[oname])
    return np.concatenate(outs).reshape(len(x), -1)


def compare(name, got, ref, labels, ref_name):
    n = len(got)
    ref = ref[:n]
    labels = np.asarray(labels[:n])
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return {
        "runtime": name,
        "reference": ref_name,
        "images": n,
        "same_top1": float(np.mean(got.argmax(1) == ref.argmax(1)) * 100),
        "rows_bit_equal": int(np.sum(np.all(got == ref, axis=1))),
        "rows_within_1e-4": int(np.sum(diff.max(1) <= 1e-4 * np.maximum(np.abs(ref).max(1), 1e-30))),
        "max_abs_diff": float(diff.max()) if n else 0.0,
        "max_logit": float(np.abs(ref).max()) if n else 0.0,
        "acc": float(np.mean(got.argmax(1) == labels) * 100),
        "ref_acc": float(np.mean(ref.argmax(1) == labels) * 100),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--qonnx-images", type=int, default=100)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    d = a.dir
    rows, notes = [], []

    ints = {}
    for r in ("trunc", "nearest"):
        p = os.path.join(d, f"int-{r}")
        if os.path.exists(os.path.join(p, "meta.json")):
            ints[r] = load_int(p)
        else:
            notes.append(f"no integer engine run with {r} rounding (see the log)")
    if not ints:
        sys.exit("onnx_agreement: no int-*/ dump in " + d)
    meta, x, _ = next(iter(ints.values()))
    labels = meta["labels"]
    n = len(x)

    fq = None
    fq_file = os.path.join(d, "fq-logits.csv")
    if os.path.exists(fq_file):
        fq = np.loadtxt(fq_file, delimiter=",", dtype=np.float32, ndmin=2)
        if len(fq) != n:
            sys.exit(f"onnx_agreement: {len(fq)} fake-quant rows, {n} images")
    else:
        notes.append("no fake-quant logits (qatc eval failed, see the log)")

    qdq = one_onnx(os.path.join(d, "onnx"))
    if qdq and fq is not None:
        off = ort_run(qdq, x, "off")
        rows.append(compare("QDQ, ONNX Runtime, optimisations off", off, fq, labels, "fake-quant (qatc eval)"))
        on = ort_run(qdq, x, "all")
        rows.append(compare("QDQ, ONNX Runtime, ORT_ENABLE_ALL", on, fq, labels, "fake-quant (qatc eval)"))
        rows[-1]["bit_equal_to_off"] = bool(np.array_equal(on, off))
        rows[-1]["max_diff_to_off"] = float(np.abs(on.astype(np.float64) - off).max())
        rows[-1]["same_top1_as_off"] = float(np.mean(on.argmax(1) == off.argmax(1)) * 100)
    elif not qdq:
        notes.append("no QDQ export (onnx/)")

    qon = one_onnx(os.path.join(d, "qonnx"))
    if qon and fq is not None:
        m = min(a.qonnx_images, n)
        pick = [i * n // m for i in range(m)]  # spread over the N, so every class is in
        got = qonnx_run(qon, x[pick])
        rows.append(compare(f"QONNX, qonnx executor ({m} of them, every {n // m}th)", got, fq[pick],
                            [labels[i] for i in pick], "fake-quant (qatc eval)"))
    elif not qon:
        notes.append("no QONNX export (this qatc has no --format qonnx, or it failed)")

    for r, (_, xi, il) in ints.items():
        p = one_onnx(os.path.join(d, f"onnx-int-{r}"))
        if p:
            for level, what in (("off", "optimisations off"), ("all", "ORT_ENABLE_ALL")):
                got = ort_run(p, xi, level)
                rows.append(compare(f"onnx-int {r}, ONNX Runtime, {what}", got, il, labels, f"qatc int ({r})"))
        else:
            notes.append(f"no onnx-int export with {r} rounding (this qatc has no --format onnx-int, or it failed)")
        if fq is not None:
            rows.append(compare(f"qatc int ({r}), the integer engine", il, fq, labels, "fake-quant (qatc eval)"))

    title = a.label or f"{meta['model']} {meta['profile']}"
    print(f"\n{title}: {n} test images ({meta.get('data')}, indices {meta['indices'][0]}, "
          f"{meta['indices'][1] if n > 1 else ''}, ...)")
    print("| runtime | reference | images | same top-1 | rows bit-equal | rows within 1e-4 (rel.) | max \\|logit diff\\| | largest logit | accuracy | reference accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['reference']} | {r['images']} | {r['same_top1']:.2f} % | "
              f"{r['rows_bit_equal']} | {r['rows_within_1e-4']} | {r['max_abs_diff']:.3g} | {r['max_logit']:.3g} | "
              f"{r['acc']:.2f} % | {r['ref_acc']:.2f} % |")
    for r in rows:
        if "bit_equal_to_off" in r:
            print(f"QDQ with ORT_ENABLE_ALL against optimisations off: bit-equal {r['bit_equal_to_off']}, "
                  f"max |logit diff| {r['max_diff_to_off']:.3g}, same top-1 {r['same_top1_as_off']:.2f} %")
    for note in notes:
        print("note:", note)
    json.dump({"label": title, "rows": rows, "notes": notes}, open(os.path.join(d, "agreement.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
