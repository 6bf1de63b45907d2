#!/usr/bin/env bash
# The GPU device check (issue 19): qatc on a CUDA machine, in one short run.
#
#   scripts/device-check.sh prepare        on this (CPU) machine: build, bundle into .device/
#   scripts/device-check.sh run [--device D] [--train-seconds S] [--bench-steps N] [--bench-batches 'B...']
#                                          on the GPU machine (or here, to rehearse:
#                                          QATC_DEVICE_TORCH=~/.cache/qatc/torch-2.11.0 scripts/device-check.sh run
#                                          --device cpu --train-seconds 60 --bench-steps 2 --bench-batches 16
#                                          --train-limit 2000)
#
# The GPU machine (../shared/docs/gpu-machine.md) has no network, no Rust and
# libtorch 2.11 (the PyTorch 2.11 wheel under /opt/torch/.venv, CUDA 13),
# not the project's 2.13. So `prepare` builds here, against the PyPI wheel
# torch==2.11.0 (installed once into its own versioned cache by
# scripts/libtorch-env.sh with QATC_TORCH_VERSION=2.11.0) with tch 0.24, the
# tch release made for it, in a scratch copy of the tree whose manifests it
# switches from tch 0.26 (the project's default build, what CI tests, is
# untouched). Every binary links libtorch_cuda.so with `--no-as-needed`:
# no code of qatc names a symbol of it (CUDA support registers itself from
# the library's static initialisers), so the linker, which drops unneeded
# libraries by default on Debian and Ubuntu, would leave it out, and
# `tch::Cuda::is_available()` would be false on the GPU (tch-rs issue 980).
# The flags go into this build's RUSTFLAGS: a library's build script cannot
# pass link arguments to its dependents' links (`rustc-link-arg`), and the
# `-as-needed` modifier of `rustc-link-lib` is unstable. With an explicit
# `--target`, RUSTFLAGS reach only the target's artefacts, not the build
# scripts and proc macros cargo compiles for the host.
# It builds the model binaries (train, bench) and the golden test binaries,
# checks with ldd that each links libtorch_cuda.so, strips them, and packs
# them with a golden set (the files of ../shared/golden-seeds/seed1 the tests
# read, marked compact so MobileNetV2 is skipped: it would not fit) into
# .device/bundle.tar.xz, beside a copy of CIFAR-10
# (../shared/data/cifar10-jpeg-q75.tar.gz). .device/ is ignored by git; the
# device tool carries it: run(command="scripts/device-check.sh run",
# carry=[".device"], timeout_s=560).
#
# `run` unpacks the bundle, points the binaries at the machine's libtorch
# (LD_LIBRARY_PATH: torch/lib and the nvidia/*/lib folders of the wheel) and,
# writing everything under $OUT (at most 8 files come back):
#   1. env.txt      the GPU, driver, libraries; ldd of every binary;
#   2. golden.txt   the golden tests on the device (QATC_TEST_DEVICE), with
#                   the tolerances each test states for CUDA;
#   3. bench.jsonl  `bench --device D` of ResNet20 w8a8, ToyNet cfg-1* and
#                   MobileNetV2 cfg-1*, float against QAT, batch 128 and 512;
#   4. train.csv    ResNet20 w8a8 trained on the full CIFAR-10 for as many
#                   epochs as fit in --train-seconds (default 240), stopped by
#                   SIGINT (the trainer finishes its checkpoint): the epoch
#                   times, data wait and accuracy of metrics.csv;
#      gpu.csv      GPU utilisation and memory sampled every 500 ms meanwhile;
#   5. summary.md   the numbers of all of the above, one page.
# Each phase runs even when an earlier one failed; the exit status is 1 if
# any failed.
#
# The binaries' compile-time paths (the tests find spec/ and their golden
# set through CARGO_MANIFEST_DIR) point into the scratch copy,
# /tmp/qatc-device-check/src; `run` makes that path a link to the tree it
# runs in.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
torch_version=2.11.0
tch_version=0.24
scratch=/tmp/qatc-device-check
src=$scratch/src
bundle=$root/.device
models=(resnet20 toynet mobilenetv2)
tests=(golden_models golden_resnet20_blocks golden_quantizers)

die() {
  echo "device-check: $*" >&2
  exit 1
}

prepare() {
  local shared="${QATC_SHARED:-$root/../shared}" target set cifar
  target="${QATC_DEVICE_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/qatc/device-check-target}"
  set="$shared/golden-seeds/seed1"
  cifar="$shared/data/cifar10-jpeg-q75.tar.gz"
  [ -f "$set/resnet20_taps.safetensors" ] || die "no golden set with taps at $set (set QATC_SHARED)"
  [ -f "$cifar" ] || die "no CIFAR-10 archive at $cifar (set QATC_SHARED)"
  # libtorch 2.11 for tch 0.24, in its own cache; nothing of the caller's
  # 2.13 environment may leak into this build.
  unset RUSTFLAGS RUSTDOCFLAGS QATC_TORCH_HOME PYTHONPATH LIBTORCH
  export QATC_TORCH_VERSION=$torch_version
  # shellcheck source=scripts/libtorch-env.sh
  source scripts/libtorch-env.sh
  export RUSTFLAGS="$RUSTFLAGS -C link-arg=-Wl,--no-as-needed -C link-arg=-ltorch_cuda -C link-arg=-Wl,--as-needed"

  echo "device-check: copying the tree to $src" >&2
  mkdir -p "$src"
  # Tracked and untracked-but-not-ignored files, with their times (so that
  # cargo rebuilds only what changed since the last prepare).
  git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$src"
  touch "$src/.device-check-scratch"
  local manifests
  mapfile -t manifests < <(cd "$src" && grep -rlE --include=Cargo.toml '^(tch|torch-sys) = ' .)
  [ "${#manifests[@]}" -gt 0 ] || die "no manifest names tch"
  for m in "${manifests[@]}"; do
    sed -i -E "s/^(tch|torch-sys) = \"[0-9.]+\"/\\1 = \"$tch_version\"/" "$src/$m"
  done
  if (cd "$src" && grep -rE --include=Cargo.toml "^(tch|torch-sys) = " . | grep -v "\"$tch_version\""); then
    die "a manifest still names another tch release"
  fi

  echo "device-check: building against libtorch $torch_version (tch $tch_version, libtorch_cuda linked) into $target" >&2
  local triple
  triple=$(rustc -vV | sed -n 's/^host: //p')
  local cargo_args=(--release --target "$triple")
  local pkgs=()
  for m in "${models[@]}"; do pkgs+=(-p "qatc-model-$m"); done
  (cd "$src" && CARGO_TARGET_DIR="$target" cargo build "${cargo_args[@]}" "${pkgs[@]}")
  local json="$scratch/tests.json"
  (cd "$src" && CARGO_TARGET_DIR="$target" cargo test "${cargo_args[@]}" --no-run \
    -p qatc-tests --test golden_models --test golden_resnet20_blocks \
    -p qatc-runtime --test golden_quantizers --message-format=json) >"$json"

  local stage="$scratch/stage"
  rm -rf "$stage"
  mkdir -p "$stage/bin" "$stage/golden"
  for m in "${models[@]}"; do
    cp "$target/$triple/release/qatc-model-$m" "$stage/bin/"
  done
  for t in "${tests[@]}"; do
    local exe
    exe=$(python3 - "$json" "$t" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
for line in open(path):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] == name and m["profile"]["test"]:
        print(m["executable"])
EOF
    )
    [ -n "$exe" ] || die "cargo built no test binary named $t"
    cp "$exe" "$stage/bin/$t"
  done
  for b in "$stage"/bin/*; do
    ldd "$b" | grep -q 'libtorch_cuda\.so' || die "$(basename "$b") does not link libtorch_cuda.so (ldd)"
    strip "$b"
  done
  for f in quantizers resnet20 resnet20_taps toynet; do
    cp "$set/$f.safetensors" "$stage/golden/"
  done
  python3 - "$set/meta.json" "$stage/golden/meta.json" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
# Marked compact: the tests skip what the set leaves out (qatc_testdata).
meta["compact"] = {"from": "golden-seeds/seed1", "for": "the GPU device check",
                   "whole": ["quantizers", "toynet", "resnet20", "resnet20_taps"],
                   "left_out": ["mobilenetv2", "toynet_int"]}
json.dump(meta, open(sys.argv[2], "w"), indent=1)
EOF
  rm -rf "$bundle"
  mkdir -p "$bundle"
  tar -cJf "$bundle/bundle.tar.xz" -C "$stage" .
  cp "$cifar" "$bundle/cifar10.tar.gz"
  local tree carried
  tree=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -cb "$bundle"/* | tail -1 | cut -f1)
  echo "device-check: .device/ holds $((carried / 1048576)) MiB, the tree $((tree / 1048576)) MiB (64 MiB travel at most)" >&2
  [ $((tree + carried)) -lt $((62 * 1048576)) ] || die "too large to travel"
  echo "device-check: ready; on the GPU machine: scripts/device-check.sh run (carry .device)" >&2
}

# --- run ------------------------------------------------------------------

failed=()
phase() {
  # phase NAME COMMAND...: runs it, says how long it took, records a failure.
  local name=$1 start=$SECONDS rc=0
  shift
  echo "== $name" >&2
  "$@" || rc=$?
  echo "== $name: exit $rc, $((SECONDS - start)) s" >&2
  [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

machine_env() {
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    nproc
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for b in "$work"/bin/*; do
      echo "-- ldd $(basename "$b")"
      ldd "$b" | grep -E 'torch|c10|not found' || true
    done
  } >"$out/env.txt" 2>&1
  if grep -q '=> not found' "$out/env.txt"; then
    echo "a library the binaries need is not found (env.txt)" >&2
    return 1
  fi
}

golden() {
  local rc=0 t
  for t in "${tests[@]}"; do
    echo "-- $t" >>"$out/golden.txt"
    QATC_TEST_DEVICE=$device QATC_GOLDEN="$work/golden" \
      "$work/bin/$t" --test-threads 1 --nocapture >>"$out/golden.txt" 2>&1 || rc=1
  done
  grep -E '^test result|FAILED|panicked' "$out/golden.txt" >&2 || true
  return "$rc"
}

# bench_one MODEL PROFILE BATCH MATH [ENV...]: one `bench --json` into bench.jsonl.
bench_one() {
  local m=$1 p=$2 b=$3 math=$4
  shift 4
  if ! env "$@" "$work/bin/qatc-model-$m" bench --device "$device" --profile "$p" --batch-size "$b" \
    --steps "$bench_steps" --warmup 3 --json >"$scratch/bench.json" 2>"$scratch/bench.err"; then
    echo "bench $m $p $b ($math) failed: $(tail -3 "$scratch/bench.err")" >&2
    return 1
  fi
  python3 - "$m" "$b" "$math" "$scratch/bench.json" >>"$out/bench.jsonl" <<'EOF'
import json, sys
r = json.load(open(sys.argv[4]))
print(json.dumps({"model": sys.argv[1], "batch": int(sys.argv[2]), "math": sys.argv[3], "report": r}))
EOF
}

bench() {
  local rc=0 m p b
  for spec in "resnet20 w8a8" "toynet cfg-1*" "mobilenetv2 cfg-1*"; do
    m=${spec%% *}
    p=${spec#* }
    for b in $bench_batches; do
      bench_one "$m" "$p" "$b" qatc || rc=1
    done
  done
  # What qatc's exact CUDA math costs: PyTorch's defaults (TF32 convolutions,
  # cuDNN free to pick non-deterministic algorithms) on the largest batch.
  if [ "$device" != cpu ]; then
    b=${bench_batches##* }
    bench_one resnet20 w8a8 "$b" pytorch-default QATC_CUDA_TF32=1 QATC_CUDA_DETERMINISTIC=0 || rc=1
  fi
  return "$rc"
}

train() {
  local run="$scratch/run" rc=0 smi=""
  rm -rf "$run"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,nounits -lms 500 \
      >"$out/gpu.csv" 2>/dev/null &
    smi=$!
  fi
  # As many epochs as fit: SIGINT at the deadline; the trainer stops at the
  # end of its step and writes its checkpoint (docs/training.md).
  timeout -s INT -k 60 "$train_seconds" "$work/bin/qatc-model-resnet20" train \
    --data "$bundle/cifar10.tar.gz" --profile w8a8 --device "$device" --epochs 200 --lr 0.1 \
    --out "$run" ${train_limit:+--limit-train "$train_limit" --limit-test "$train_limit"} \
    >"$scratch/train.log" 2>&1 || rc=$?
  [ -z "$smi" ] || kill "$smi" 2>/dev/null || true
  tail -15 "$scratch/train.log" >&2
  cp "$run/metrics.csv" "$out/train.csv" 2>/dev/null || {
    echo "no metrics.csv (train.log above)" >&2
    return 1
  }
  # 124/130: stopped at the deadline, as intended.
  case "$rc" in 0 | 124 | 130) return 0 ;; *) return "$rc" ;; esac
}

summary() {
  python3 - "$out" "$device" "${failed[*]:-}" >"$out/summary.md" <<'EOF'
import csv, json, os, sys
out, device, failed = sys.argv[1], sys.argv[2], sys.argv[3]
def read(name):
    p = os.path.join(out, name)
    return open(p).read() if os.path.exists(p) else ""
print(f"# qatc device check on `{device}`\n")
env = read("env.txt").splitlines()
print("```\n" + "\n".join(env[:4]) + "\n```\n")
print("## Golden tests\n")
for line in read("golden.txt").splitlines():
    if line.startswith(("-- ", "test result", "test ")) or "FAILED" in line:
        print("    " + line)
print("\n## Bench (median ms per step; images/s)\n")
print("| model | batch | float train | QAT train | QAT/float train | float eval | QAT eval | QAT/float eval |")
print("|---|---|---|---|---|---|---|---|")
for line in read("bench.jsonl").splitlines():
    r = json.loads(line)
    rep = r["report"]
    if "float" not in rep or "qat" not in rep:
        print(f'| {r["model"]} | {r["batch"]} | {json.dumps(rep)[:200]} |')
        continue
    def t(p, phase):
        x = rep[p]
        return f'{x[phase + "_ms_per_step"]:.2f} ({x[phase + "_images_per_s"]:.0f})'
    math = "" if r.get("math", "qatc") == "qatc" else f', {r["math"]} math'
    print(f'| {r["model"]} ({rep["qat"]["profile"]}{math}) | {r["batch"]} | {t("float", "train")} | {t("qat", "train")} '
          f'| {rep["train_ratio"]:.3f} | {t("float", "eval")} | {t("qat", "eval")} | {rep["eval_ratio"]:.3f} |')
print("\n## Training ResNet20 w8a8 on CIFAR-10\n")
rows = list(csv.DictReader(read("train.csv").splitlines()))
keys = ["epoch", "epoch_seconds", "data_wait_seconds", "train_images_per_s", "train_loss", "train_top1", "test_top1"]
if rows:
    cols = [k for k in keys if k in rows[0]]
    print("| " + " | ".join(cols) + " | data wait % |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        w = float(r.get("data_wait_seconds", 0) or 0) / max(float(r.get("epoch_seconds", 1) or 1), 1e-9)
        print("| " + " | ".join(r[c] for c in cols) + f" | {100*w:.2f} |")
util = [l.split(",") for l in read("gpu.csv").splitlines()[1:] if l.count(",") >= 2]
vals = [float(u[1]) for u in util if u[1].strip().replace(".", "").isdigit()]
if vals:
    print(f"\nGPU utilisation over {len(vals)} samples (500 ms): mean {sum(vals)/len(vals):.1f} %, "
          f"samples >= 90 %: {100*sum(v >= 90 for v in vals)/len(vals):.0f} %")
print("\n## Failed phases\n\n" + (failed or "none"))
EOF
}

run_check() {
  device=cuda
  train_seconds=240
  bench_steps=20
  bench_batches="128 512"
  train_limit=""
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --device) device=$2; shift 2 ;;
      --train-seconds) train_seconds=$2; shift 2 ;;
      --bench-steps) bench_steps=$2; shift 2 ;;
      --bench-batches) bench_batches=$2; shift 2 ;;
      --train-limit) train_limit=$2; shift 2 ;;
      *) die "unknown option $1 (run [--device D] [--train-seconds S] [--bench-steps N] [--bench-batches 'B...'] [--train-limit N])" ;;
    esac
  done
  out="${OUT:-$scratch/out}"
  mkdir -p "$out" "$scratch"
  [ -f "$bundle/bundle.tar.xz" ] || die "no $bundle/bundle.tar.xz: run \`scripts/device-check.sh prepare\` first (and carry .device)"
  exec > >(tee -a "$out/log.txt") 2>&1
  # The compile-time paths of the binaries.
  if [ "$(readlink -f "$src" 2>/dev/null)" != "$root" ] && [ ! -f "$src/.device-check-scratch" ]; then
    rm -rf "$src"
    ln -sfn "$root" "$src"
  fi
  work="$scratch/bundle"
  rm -rf "$work"
  mkdir -p "$work"
  tar -xJf "$bundle/bundle.tar.xz" -C "$work"
  # The machine's libtorch: torch/lib and the CUDA libraries of the wheel.
  local venv="${QATC_DEVICE_TORCH:-/opt/torch/.venv}" lib
  lib=$(find "$venv" -maxdepth 6 -path '*/torch/lib/libtorch_cpu.so' -print -quit)
  [ -n "$lib" ] || die "no torch/lib/libtorch_cpu.so under $venv (set QATC_DEVICE_TORCH)"
  lib=$(dirname "$lib")
  LD_LIBRARY_PATH="$lib"
  local d
  for d in "$(dirname "$(dirname "$lib")")"/nvidia/*/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
  export LD_LIBRARY_PATH
  export OMP_WAIT_POLICY=PASSIVE
  phase environment machine_env
  phase golden golden
  phase bench bench
  phase train train
  summary
  cat "$out/summary.md"
  [ "${#failed[@]}" -eq 0 ] || die "failed: ${failed[*]}"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run_check "$@" ;;
  *) die "usage: scripts/device-check.sh prepare | run [options] (see the top of this file)" ;;
esac
