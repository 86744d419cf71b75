//! Support for tether's integration tests (`agent/tests/`), through real parts:
//!
//! - [`echo`]: the echo backend (also the `tether-echo` binary of the demo and benchmarks), and
//!   [`echo::EchoServer`] to run it in-process, stop it and start it again;
//! - [`agent`]: the real `tether` process, its configuration file, reloads, logs and metrics;
//! - [`http`]: a hyper client, a session-cookie jar, and raw sockets for malformed input;
//! - [`config`]: the YAML of a sticky-sessions service, built to each test's needs.
pub mod agent;
pub mod config;
pub mod echo;
pub mod http;
pub mod netns;
