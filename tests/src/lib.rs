//! Support for tether's integration tests (`agent/tests/`), through real parts:
//!
//! - [`echo`]: the echo backend (also the `tether-echo` binary of the demo and benchmarks), and
//!   [`echo::EchoServer`] to run it in-process, stop it and start it again;
//! - [`agent`]: the real `tether` process, its configuration file, reloads, logs and metrics;
//! - [`http`]: a hyper client, a session-cookie jar, and raw sockets for malformed input;
//! - [`config`]: the YAML of a sticky-sessions service, built to each test's needs;
//! - [`cluster`]: Kubernetes objects as JSON, and [`fake_apiserver`]: a local API server that
//!   speaks the list/watch protocol, for `tether run --kubernetes`.
pub mod agent;
pub mod cluster;
pub mod config;
pub mod echo;
pub mod fake_apiserver;
pub mod http;
pub mod kube_lab;
pub mod netns;
