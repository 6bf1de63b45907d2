# Sourced by ./dev and .ci/run. Placeholder until the runtime needs libtorch:
# it sets nothing yet.
:
