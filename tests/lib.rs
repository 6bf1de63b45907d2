//! Shared helpers of the integration tests live in the test files themselves, and in `tests/tests/common/` for the golden model tests.
