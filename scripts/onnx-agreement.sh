#!/usr/bin/env bash
# Agreement of the ONNX exports with qatc on a trained checkpoint
# (docs/export.md, "Agreement on trained checkpoints").
#
#   scripts/onnx-agreement.sh SPEC PROFILE CHECKPOINT OUT_DIR [options] [-- FLAGS]
#
# options:
#   --data D            data set [default: ../shared/data/cifar10-jpeg-q75.tar.gz]
#   --images N          test images, spread evenly over the split (image
#                       i*len/N, as `qatc eval --limit` takes them) [default: 1000]
#   --qonnx-images M    of those, how many (every N/M-th) the slow qonnx executor runs [default: 100]
# FLAGS after `--` go to `qatc int bench` and `qatc export` (the integer
# plan's flags, e.g. --saturate-constants, --fixed head=32,18).
#
# What it runs, everything into OUT_DIR (log: OUT_DIR/log.txt):
#   qatc eval SPEC --profile P --checkpoint F --data D --limit N --logits fq-logits.csv
#       the fake-quant eval forward (libtorch, the generated model crate)
#   qatc int bench ... --images N --spread --rounds 1 --rounding R --dump int-R   (R: trunc, nearest)
#       the same images as float32 (inputs.f32), labels, and the integer engine's logits
#   qatc export ... --format onnx -o onnx            (QDQ)
#   qatc export ... --format qonnx -o qonnx          (where this qatc has it)
#   qatc export ... --format onnx-int --rounding R -o onnx-int-R   (idem)
#   scripts/onnx_agreement.py OUT_DIR: runs each export (ONNX Runtime, CPU,
#       one thread, optimisations off and all on; QONNX in qonnx's executor)
#       on inputs.f32 and compares: QDQ and QONNX with the fake-quant logits,
#       onnx-int with `qatc int` of the same rounding (bit-equal expected).
#       Prints a markdown table, writes OUT_DIR/agreement.json.
# A format this qatc does not have (or that refuses the model) is a note in
# the table, not a failure. Exit 1 only when nothing could be compared.
#
# QATC_MODEL_BIN=DIR: run DIR/qatc-model-<model> eval (already built)
# instead of `qatc eval`, which builds the model crate with cargo first.
# Needs libtorch (scripts/libtorch-env.sh, as ./dev) for `qatc eval` and
# the ONNX Python (scripts/onnx-env.sh); both are sourced here. The qatc
# binary: $QATC, default target/release/qatc (build it with
# `./dev cargo build --release -p qatc-cli`).
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 1; }
[ "$#" -ge 4 ] || usage
root="$(cd "$(dirname "$0")/.." && pwd)"
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
spec="$(abspath "$1")"; profile="$2"; ck="$(abspath "$3")"; out="$(abspath "$4")"
shift 4
data="$root/../shared/data/cifar10-jpeg-q75.tar.gz"
images=1000
qonnx_images=100
extra=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --data) data="$(abspath "$2")"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    --qonnx-images) qonnx_images="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) usage ;;
  esac
done
q="${QATC:-$root/target/release/qatc}"
[ -x "$q" ] || { echo "no qatc binary at $q: ./dev cargo build --release -p qatc-cli (or set QATC)" >&2; exit 1; }

cd "$root"
set +u
source scripts/libtorch-env.sh
source scripts/onnx-env.sh
set -u
[ -n "${QATC_ONNX_PYTHONPATH:-}" ] || { echo "no ONNX tooling: source scripts/onnx-env.sh failed (see above)" >&2; exit 1; }

mkdir -p "$out"
log="$out/log.txt"
: > "$log"
plan=("$spec" --profile "$profile" --checkpoint "$ck")
step() { echo "+ $*" >> "$log"; "$@" >> "$log" 2>&1; }

rm -rf "$out"/int-* "$out"/onnx "$out"/qonnx "$out"/onnx-int-* "$out/fq-logits.csv"
# qatc eval builds the model crate with cargo first; QATC_MODEL_BIN=DIR runs
# DIR/qatc-model-<model> eval directly instead (a model binary built
# already, e.g. target/release, when cargo is busy or the tree mid-edit).
if [ -n "${QATC_MODEL_BIN:-}" ]; then
  model="$(basename "$spec" .qspec)"
  evalcmd=("$QATC_MODEL_BIN/qatc-model-${model//_/-}" eval --profile "$profile" --checkpoint "$ck")
else
  evalcmd=("$q" eval "${plan[@]}")
fi
step "${evalcmd[@]}" --data "$data" --limit "$images" --logits "$out/fq-logits.csv" \
  || echo "qatc eval failed (see $log)" >&2
for r in trunc nearest; do
  step "$q" int bench "${plan[@]}" --data "$data" --images "$images" --spread --rounds 1 \
    --rounding "$r" --dump "$out/int-$r" "${extra[@]}" \
    || echo "qatc int bench --rounding $r failed (see $log)" >&2
done
step "$q" export "${plan[@]}" --format onnx -o "$out/onnx" "${extra[@]}" \
  || echo "no QDQ export (see $log)" >&2
step "$q" export "${plan[@]}" --format qonnx -o "$out/qonnx" "${extra[@]}" \
  || echo "no QONNX export (see $log)" >&2
for r in trunc nearest; do
  step "$q" export "${plan[@]}" --format onnx-int --rounding "$r" -o "$out/onnx-int-$r" "${extra[@]}" \
    || echo "no onnx-int export with $r rounding (see $log)" >&2
done
PYTHONPATH="$QATC_ONNX_PYTHONPATH" "$QATC_ONNX_PYTHON" scripts/onnx_agreement.py "$out" \
  --qonnx-images "$qonnx_images" | tee -a "$log"
