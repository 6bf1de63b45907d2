//! Shared helpers of the integration tests live in the test files themselves; this crate only hosts them.
