//! tether: cookie-pinned HTTP sessions and graceful drain, in userspace and in the kernel.
pub mod admin;
pub mod balance;
pub mod dataplane;
pub mod duration;
pub mod fd_limit;
pub mod log_limit;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod session_key;
pub mod source;
pub mod sticky;
pub mod table;
pub mod tls;
