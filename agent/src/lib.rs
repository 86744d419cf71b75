//! tether: cookie-pinned HTTP sessions and graceful drain, in userspace and in the kernel.
pub mod admin;
pub mod dataplane;
pub mod duration;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod run;
pub mod run_kube;
pub mod session_key;
pub mod source;
pub mod sticky;
pub mod table;
