# ONNX tooling for the export tests (issue 17), installed by the project
# itself. Sourced (bash) by ./dev for `./dev test`, usually under
# `set -euo pipefail`; safe to source twice. Modelled on libtorch-env.sh.
#
# Install: the PyPI packages `onnx`, `onnxruntime` and `qonnx`, pinned below
# (wheels for CPython 3.11 on Linux x86_64, checked with `pip download
# --no-deps`), with their dependencies (numpy, protobuf, ...), installed with
# `pip install --target` (no venv, so the directory can be renamed) into a
# versioned per-user cache,
#   QATC_ONNX_HOME (default ${XDG_CACHE_HOME:-$HOME/.cache}/qatc/onnx-<versions>)
# once per machine. The install goes to a temporary sibling directory that is
# renamed into place only after `import onnx, onnxruntime, qonnx` succeeds
# there with the pinned versions and a marker file is written, so an
# interrupted or concurrent install never leaves a half-filled cache (a lock
# file also keeps two installs from downloading at once). With the marker
# present this script only sets variables (no subprocess).
#
# Use: the tests run `$QATC_ONNX_PYTHON` (the interpreter that installed the
# packages, QATC_PYTHON or python3) with `PYTHONPATH=$QATC_ONNX_PYTHONPATH`.
# torch's PYTHONPATH (libtorch-env.sh) stays separate: this script exports
# only its own variables and never touches PYTHONPATH.
#
# Failure is not fatal here: without the packages (no network on the first
# run, a Python without wheels for these versions) the script says so and
# leaves QATC_ONNX_PYTHONPATH unset; the tests that need it then skip with a
# line (`qatc_testdata::skip`), or fail where QATC_REQUIRE_SHARED is set (CI).

_qatc_onnx_versions="onnx==1.23.2 onnxruntime==1.31.1 qonnx==1.0.0"
_qatc_onnx_tag=onnx-1.23.2-ort-1.31.1-qonnx-1.0.0
: "${QATC_ONNX_HOME:=${XDG_CACHE_HOME:-${HOME:?set HOME or QATC_ONNX_HOME}/.cache}/qatc/$_qatc_onnx_tag}"
export QATC_ONNX_HOME
_qatc_onnx_marker="$QATC_ONNX_HOME/.qatc-installed"

# Installs the packages into $QATC_ONNX_HOME, holding a lock (where flock
# exists) so that concurrent runs download them once. Errors are checked one
# by one because `set -e` does not apply inside a function called from an
# `||` list.
_qatc_onnx_install() {
  local lockfd="" rc=0
  mkdir -p "$(dirname "$QATC_ONNX_HOME")" || return 1
  if command -v flock >/dev/null 2>&1; then
    exec {lockfd}>"$QATC_ONNX_HOME.lock" || return 1
    flock "$lockfd" || rc=1
  fi
  if [ "$rc" = 0 ] && [ ! -f "$_qatc_onnx_marker" ]; then
    _qatc_onnx_install_locked || rc=1
  fi
  if [ -n "$lockfd" ]; then exec {lockfd}>&-; fi
  return "$rc"
}

_qatc_onnx_install_locked() {
  local home="$QATC_ONNX_HOME" python="${QATC_PYTHON:-python3}" tmp start versions
  if [ -e "$home" ]; then
    echo "qatc: $home exists but holds no finished ONNX install (no $(basename "$_qatc_onnx_marker")); remove it or point QATC_ONNX_HOME elsewhere" >&2
    return 1
  fi
  # Leftovers of installs that were killed outright (a normal failure cleans up).
  find "$(dirname "$home")" -maxdepth 1 -name "$(basename "$home").tmp.*" -mmin +720 \
    -exec rm -rf {} + 2>/dev/null
  tmp=$(mktemp -d "$home.tmp.XXXXXX") && chmod 755 "$tmp" || return 1
  echo "qatc: installing $_qatc_onnx_versions (ONNX export tests) into $home" >&2
  echo "qatc: once per machine; about 300 MB with numpy and protobuf" >&2
  start=$SECONDS
  # torch's PYTHONPATH (libtorch-env.sh) stays out of the install.
  # shellcheck disable=SC2086 # the pinned requirements are separate words
  if ! mkdir "$tmp/.pip-tmp" || ! env -u PYTHONPATH TMPDIR="$tmp/.pip-tmp" "$python" -m pip install \
    --target "$tmp" --no-cache-dir --progress-bar off --disable-pip-version-check \
    --root-user-action=ignore --no-warn-conflicts $_qatc_onnx_versions >&2; then
    rm -rf "$tmp"
    echo "qatc: pip install $_qatc_onnx_versions failed" >&2
    return 1
  fi
  # The import check sees the temporary directory and the interpreter's own
  # site-packages only (-s: no user site); every module must come from the
  # temporary directory, with the pinned versions.
  if ! versions=$(PYTHONPATH="$tmp" "$python" -s -W ignore -c '
import os, sys, importlib.metadata as md
import numpy, onnx, onnxruntime, qonnx
home, pins = os.path.realpath(sys.argv[1]), sys.argv[2:]
want = dict(p.split("==") for p in pins)
got = {name: md.version(name) for name in want}
assert got == want, f"got {got}, expected {want}"
for mod in (numpy, onnx, onnxruntime, qonnx):
    assert os.path.realpath(mod.__file__).startswith(home + os.sep), f"{mod.__name__} from {mod.__file__}"
print(" ".join(f"{k}={v}" for k, v in got.items()), f"numpy={numpy.__version__}",
      f"python={sys.version_info.major}.{sys.version_info.minor}")
' "$tmp" $_qatc_onnx_versions); then
    rm -rf "$tmp"
    echo "qatc: the installed ONNX packages do not import with the pinned versions" >&2
    return 1
  fi
  rm -rf "$tmp/.pip-tmp"
  if ! printf '%s\n' $versions >"$tmp/.qatc-installed"; then
    rm -rf "$tmp"
    return 1
  fi
  if ! mv -T "$tmp" "$home" 2>/dev/null; then
    rm -rf "$tmp"
    # Without flock another install may have finished first; that one is fine.
    if [ ! -f "$_qatc_onnx_marker" ]; then
      echo "qatc: could not move the ONNX install into $home" >&2
      return 1
    fi
  fi
  echo "qatc: ONNX tooling installed in $((SECONDS - start)) s ($(du -sh "$home" | cut -f1)): $versions" >&2
}

_qatc_onnx_env() {
  if [ ! -f "$_qatc_onnx_marker" ]; then
    _qatc_onnx_install || return 1
  fi
  export QATC_ONNX_PYTHONPATH="$QATC_ONNX_HOME"
  export QATC_ONNX_PYTHON="${QATC_PYTHON:-python3}"
}

if ! _qatc_onnx_env; then
  unset QATC_ONNX_PYTHONPATH
  echo "qatc: no ONNX tooling; the ONNX export tests will skip (QATC_REQUIRE_SHARED makes that a failure)" >&2
fi
unset -f _qatc_onnx_install _qatc_onnx_install_locked _qatc_onnx_env
unset _qatc_onnx_versions _qatc_onnx_tag _qatc_onnx_marker
