# libtorch for tch, installed by the project itself. Sourced (bash) by ./dev
# and .ci/run, usually under `set -euo pipefail`; safe to source twice.
#
# Install: tch 0.26 (torch-sys) needs libtorch 2.13.0. We take it from the
# PyPI wheel `torch==2.13.0`, installed with `pip install --target` (no venv,
# so the directory can be renamed) into a versioned per-user cache,
#   QATC_TORCH_HOME (default ${XDG_CACHE_HOME:-$HOME/.cache}/qatc/torch-2.13.0)
# once per machine. The default Linux wheel is the CUDA build: its
# libtorch_cpu.so itself needs libcudart/libcupti, so its nvidia-* dependencies
# (about 5 GB together) are installed too; torch's own RPATH
# ($ORIGIN/../../nvidia/...) finds them, and no GPU is needed to run on CPU.
# The install goes to a temporary sibling directory that is renamed into place
# only after `import torch` succeeds there and a marker file is written, so an
# interrupted or concurrent install never leaves a half-filled cache (a lock
# file also keeps two installs from downloading at once). With the marker
# present this script only sets variables (no subprocess, well under 1 s).
#
# Build: with LIBTORCH_USE_PYTORCH=1 (the project's fixed choice), torch-sys
# asks `python3` on PATH (`python` inside a virtualenv) for torch's include
# and library directories and its C++ ABI. The wheel lives in a
# `pip --target` directory, not in site-packages, so this script puts that
# directory on PYTHONPATH; the same interpreter that installed the wheel
# (QATC_PYTHON, default python3) must be the python3 on PATH. LIBTORCH and
# friends are unset because torch-sys would prefer them.
#
# Run: binaries and tests must find libtorch without LD_LIBRARY_PATH, so every
# artefact gets an rpath to <cache>/torch/lib through RUSTFLAGS (and
# RUSTDOCFLAGS for doctests). Alternatives considered:
# - torch-sys passes `-Wl,-rpath` only to the C++ compiler building its own
#   objects, which has no effect on the final link;
# - `cargo:rustc-link-arg` from a build script applies only to that package's
#   own targets, never to dependents, so every crate linking the runtime (the
#   qatc binary, each generated model crate, the tests crate) would need its
#   own build.rs, and forgetting one gives a binary that fails to start;
# - cargo's automatic LD_LIBRARY_PATH for `cargo run/test` keeps only
#   directories inside the target directory, and does not help binaries
#   started directly (target/release/qatc).
# Since building against libtorch needs this script's LIBTORCH anyway, adding
# the rpath here costs no extra requirement. The flags depend only on the
# cache path, so they are stable between runs (a changed RUSTFLAGS would
# rebuild everything); they are appended to any RUSTFLAGS already set, once.
# Cargo keys artefacts by their flags, so crates built both through this
# script and by plain `cargo` (e.g. the compiler alone) are compiled once per
# flag set and then reused, not rebuilt on every switch. Note that RUSTFLAGS
# overrides `build.rustflags` in cargo config files (the project has none).

# QATC_TORCH_VERSION selects another libtorch for a build made for another
# site (scripts/device-check.sh builds against the GPU machine's 2.11.0 with
# the tch release made for it); the project's own builds and CI use 2.13.0.
_qatc_torch_version="${QATC_TORCH_VERSION:-2.13.0}"
: "${QATC_TORCH_HOME:=${XDG_CACHE_HOME:-${HOME:?set HOME or QATC_TORCH_HOME}/.cache}/qatc/torch-$_qatc_torch_version}"
export QATC_TORCH_HOME
_qatc_torch_marker="$QATC_TORCH_HOME/.qatc-installed"

# Installs torch into $QATC_TORCH_HOME, holding a lock (where flock exists) so
# that concurrent runs download it once. Errors are checked one by one because
# `set -e` does not apply inside a function called from an `||` list.
_qatc_torch_install() {
  local lockfd="" rc=0
  mkdir -p "$(dirname "$QATC_TORCH_HOME")" || return 1
  if command -v flock >/dev/null 2>&1; then
    exec {lockfd}>"$QATC_TORCH_HOME.lock" || return 1
    flock "$lockfd" || rc=1
  fi
  if [ "$rc" = 0 ] && [ ! -f "$_qatc_torch_marker" ]; then
    _qatc_torch_install_locked || rc=1
  fi
  if [ -n "$lockfd" ]; then exec {lockfd}>&-; fi
  return "$rc"
}

_qatc_torch_install_locked() {
  local home="$QATC_TORCH_HOME" python="${QATC_PYTHON:-python3}" tmp abi start
  if [ -e "$home" ]; then
    echo "qatc: $home exists but holds no finished torch install (no $(basename "$_qatc_torch_marker")); remove it or point QATC_TORCH_HOME elsewhere" >&2
    return 1
  fi
  # Leftovers of installs that were killed outright (a normal failure cleans up).
  find "$(dirname "$home")" -maxdepth 1 -name "$(basename "$home").tmp.*" -mmin +720 \
    -exec rm -rf {} + 2>/dev/null
  tmp=$(mktemp -d "$home.tmp.XXXXXX") && chmod 755 "$tmp" || return 1
  echo "qatc: installing torch==$_qatc_torch_version (libtorch for tch) into $home" >&2
  echo "qatc: once per machine; about 5 GB with its CUDA libraries, usually a minute or two" >&2
  start=$SECONDS
  # pip's scratch space (5 GB of wheels, as --no-cache-dir keeps them out of
  # pip's cache) lives on the cache's filesystem, not in a possibly small /tmp.
  if ! mkdir "$tmp/.pip-tmp" || ! TMPDIR="$tmp/.pip-tmp" "$python" -m pip install \
    --target "$tmp" --no-cache-dir --progress-bar off --disable-pip-version-check \
    --root-user-action=ignore "torch==$_qatc_torch_version" >&2; then
    rm -rf "$tmp"
    echo "qatc: pip install torch==$_qatc_torch_version failed" >&2
    return 1
  fi
  if ! abi=$(PYTHONPATH="$tmp" "$python" -W ignore -c '
import sys, torch
version = torch.__version__.split("+")[0]
assert version == sys.argv[1], f"got torch {torch.__version__}, expected {sys.argv[1]}"
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
' "$_qatc_torch_version") || [ ! -f "$tmp/torch/lib/libtorch_cpu.so" ] || [ ! -d "$tmp/torch/include" ]; then
    rm -rf "$tmp"
    echo "qatc: the installed torch does not import or lacks torch/lib, torch/include" >&2
    return 1
  fi
  rm -rf "$tmp/.pip-tmp"
  if ! printf 'torch=%s\ncxx11_abi=%s\n' "$_qatc_torch_version" "$abi" >"$tmp/.qatc-installed"; then
    rm -rf "$tmp"
    return 1
  fi
  if ! mv -T "$tmp" "$home" 2>/dev/null; then
    rm -rf "$tmp"
    # Without flock another install may have finished first; that one is fine.
    if [ ! -f "$_qatc_torch_marker" ]; then
      echo "qatc: could not move the torch install into $home" >&2
      return 1
    fi
  fi
  echo "qatc: torch installed in $((SECONDS - start)) s ($(du -sh "$home" | cut -f1))" >&2
}

_qatc_torch_env() {
  local rpath
  case "$QATC_TORCH_HOME" in
  *[[:space:]]*)
    echo "qatc: QATC_TORCH_HOME must not contain whitespace (it goes into RUSTFLAGS): $QATC_TORCH_HOME" >&2
    return 1
    ;;
  esac
  if [ ! -f "$_qatc_torch_marker" ]; then
    _qatc_torch_install || return 1
  fi
  export LIBTORCH_USE_PYTORCH=1
  case ":${PYTHONPATH:-}:" in
  *":$QATC_TORCH_HOME:"*) ;;
  *) export PYTHONPATH="$QATC_TORCH_HOME${PYTHONPATH:+:$PYTHONPATH}" ;;
  esac
  unset LIBTORCH LIBTORCH_INCLUDE LIBTORCH_LIB LIBTORCH_STATIC LIBTORCH_CXX11_ABI
  # libtorch's OpenMP threads spin while they wait by default: on a shared
  # machine one descheduled thread then stalls the others (a ResNet20
  # training step ran 2.3x slower beside one other busy process). Waiting
  # passively costs little when the machine is idle (docs/performance.md).
  export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

  rpath="-C link-arg=-Wl,-rpath,$QATC_TORCH_HOME/torch/lib"
  case " ${RUSTFLAGS:-} " in
  *" $rpath "*) ;;
  *) export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$rpath" ;;
  esac
  case " ${RUSTDOCFLAGS:-} " in
  *" $rpath "*) ;;
  *) export RUSTDOCFLAGS="${RUSTDOCFLAGS:+$RUSTDOCFLAGS }$rpath" ;;
  esac
}

_qatc_torch_env || return 1
unset -f _qatc_torch_install _qatc_torch_install_locked _qatc_torch_env
unset _qatc_torch_version _qatc_torch_marker
