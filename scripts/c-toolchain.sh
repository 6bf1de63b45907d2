# The C toolchain the export tests need, installed by the project itself.
# Sourced (bash) by ./dev before running tests; safe to source twice.
#
# compiler/int/tests/int_export.rs builds the exported C reference as a 32-bit
# program too (`cc -m32`: no 128-bit integers there, as on the
# microcontroller toolchains a hardware reference model runs on). That needs
# Debian's gcc-multilib (the 32-bit C library and start files). It is
# installed once per machine, pinned to the version of the machine's gcc
# (Debian 12: gcc 12.2.0, package 4:12.2.0-3), when `cc -m32` cannot link
# and apt-get can install as root. Elsewhere nothing is installed and the
# test says that it skipped the 32-bit build; CI sets QATC_REQUIRE_M32=1,
# which makes that a failure.

_qatc_multilib_version="4:12.2.0-3"

_qatc_m32_links() {
  local dir rc
  dir="$(mktemp -d)" || return 1
  printf 'int main(void) { return 0; }\n' > "$dir/t.c"
  cc -m32 -o "$dir/t" "$dir/t.c" >/dev/null 2>&1 && "$dir/t"
  rc=$?
  rm -rf "$dir"
  return $rc
}

if ! _qatc_m32_links; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing gcc-multilib=$_qatc_multilib_version (32-bit build of the C export tests)" >&2
    if ! apt-get install -y --no-install-recommends "gcc-multilib=$_qatc_multilib_version" >/dev/null 2>&1; then
      # The package index may be stale on a fresh machine.
      apt-get update >/dev/null 2>&1 || true
      apt-get install -y --no-install-recommends "gcc-multilib=$_qatc_multilib_version" >/dev/null 2>&1 \
        || echo "warning: could not install gcc-multilib=$_qatc_multilib_version; the 32-bit C build is not checked" >&2
    fi
  fi
fi
