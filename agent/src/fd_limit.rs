//! The open-file limit. Every client and target connection is a descriptor; the default soft
//! limit (1024 on most distributions) runs out long before memory does, so tether raises it to
//! the hard limit at start, as HAProxy and Envoy's launchers do.
use tracing::{info, warn};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both.
pub fn raise_to_hard_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into memory we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from memory we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            warn!(soft = before, hard = limit.rlim_max, error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
            return;
        }
        limit = raised;
    }
    info!(
        soft = limit.rlim_cur,
        hard = limit.rlim_max,
        was = before,
        "open-file limit"
    );
}
