//! Pinning threads and tasks to CPUs (`sched_setaffinity`).
use anyhow::{bail, Result};

/// The `cpu_set_t` of `cpus`.
pub fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data, valid zeroed; CPU_ZERO and CPU_SET only write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    }
}

/// Pins the calling thread to `cpus` (nothing when empty).
pub fn pin_thread(cpus: &[usize]) -> Result<()> {
    pin_task(0, cpus)
}

/// Pins the task `pid` (0: the calling thread) to `cpus` (nothing when empty).
pub fn pin_task(pid: i32, cpus: &[usize]) -> Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let set = cpu_set(cpus);
    // SAFETY: a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!(
            "sched_setaffinity({pid}, {cpus:?}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
