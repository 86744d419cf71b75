//! The one kit of tether's tests (`agent/tests/`, `tests/`) and benchmarks (`bench/`), through
//! real parts.
//!
//! Always there (std and libc only, what xtask and the benches build):
//!
//! - [`binaries`]: `tether-echo` backends and `tether run` as child processes;
//! - [`clock`]: UTC calendar time for file names and Kubernetes timestamps;
//! - [`cpu`]: pinning threads and tasks to CPUs;
//! - [`fs`]: scratch directories removed on drop, atomic writes;
//! - [`process`]: child processes that stop when dropped, or when their starter dies;
//! - [`net`]: free loopback ports, and a blocking HTTP/1.1 `GET`;
//! - [`netns`]: the root check, kernel versions, bpffs, and network namespaces that clean up
//!   after themselves;
//! - [`packet`]: Ethernet + IPv4 frames with their checksums, for `BPF_PROG_TEST_RUN`.
//!
//! With the `full` feature (the default):
//!
//! - [`echo`]: the echo backend (also the `tether-echo` binary of the demo and benchmarks), and
//!   [`echo::EchoServer`] to run it in-process, stop it and start it again;
//! - [`certs`]: self-signed certificates (also the `tether-testcert` binary);
//! - [`agent`]: the real `tether` process, its configuration file, reloads, logs and metrics;
//! - [`http`]: a hyper client, a session-cookie jar, and raw sockets for malformed input;
//! - [`config`]: the YAML of a sticky-sessions service, built to each test's needs;
//! - [`cluster`]: Kubernetes objects as JSON, [`fake_apiserver`]: a local API server that
//!   speaks the list/watch protocol, for `tether run --kubernetes`, and [`kube_lab`]: the two
//!   with echo pods and a tether watching them.
pub mod binaries;
pub mod clock;
pub mod cpu;
pub mod fs;
pub mod net;
pub mod netns;
pub mod packet;
pub mod process;

#[cfg(feature = "full")]
pub mod agent;
#[cfg(feature = "full")]
pub mod certs;
#[cfg(feature = "full")]
pub mod cluster;
#[cfg(feature = "full")]
pub mod config;
#[cfg(feature = "full")]
pub mod echo;
#[cfg(feature = "full")]
pub mod fake_apiserver;
#[cfg(feature = "full")]
pub mod http;
#[cfg(feature = "full")]
pub mod kube_lab;
