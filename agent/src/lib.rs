//! tether: cookie-pinned HTTP sessions and graceful drain, in userspace and in the kernel.
