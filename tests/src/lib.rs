//! Meshfleet's end-to-end tests live in `e2e/` (one test binary); shared helpers are in the
//! `meshfleet-test-support` crate (`support/`). This library is empty.
