# cargo-insta (insta's snapshot review tool), installed by the project
# itself: pinned to the insta version in Cargo.lock, built once per machine
# with `cargo install --locked` into a versioned cache,
#   ${XDG_CACHE_HOME:-$HOME/.cache}/qatc/cargo-insta-<version>
# (QATC_INSTA_HOME overrides), and put on PATH. Sourced (bash) by
# `./dev review` and by the tests' setup in `./dev test`; safe to source twice.
# The install goes to a temporary sibling that is renamed into place only
# once the binary runs, so an interrupted install leaves no half-filled cache.

_qatc_insta_version=1.49.0
: "${QATC_INSTA_HOME:=${XDG_CACHE_HOME:-${HOME:?set HOME or QATC_INSTA_HOME}/.cache}/qatc/cargo-insta-$_qatc_insta_version}"
export QATC_INSTA_HOME

if [ ! -x "$QATC_INSTA_HOME/bin/cargo-insta" ]; then
  echo "installing cargo-insta $_qatc_insta_version into $QATC_INSTA_HOME (once per machine)" >&2
  mkdir -p "$(dirname "$QATC_INSTA_HOME")"
  _qatc_insta_tmp="$(mktemp -d "$QATC_INSTA_HOME.tmp.XXXXXX")"
  if cargo install --quiet --locked --version "$_qatc_insta_version" --root "$_qatc_insta_tmp" cargo-insta \
    && "$_qatc_insta_tmp/bin/cargo-insta" --version >/dev/null; then
    rm -rf "$QATC_INSTA_HOME"
    mv "$_qatc_insta_tmp" "$QATC_INSTA_HOME"
  else
    rm -rf "$_qatc_insta_tmp"
    echo "error: could not install cargo-insta $_qatc_insta_version" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
case ":$PATH:" in
  *":$QATC_INSTA_HOME/bin:"*) ;;
  *) export PATH="$QATC_INSTA_HOME/bin:$PATH" ;;
esac
