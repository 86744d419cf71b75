//! Support for tether's integration tests.
