//! The kernel programs' tests (`tests/kernel_program.rs`): the object `cargo xtask build-ebpf`
//! builds, loaded with private maps and run with `BPF_PROG_TEST_RUN`. The library is empty;
//! the support code the tests share with the agent's tests and the benches is `tether-testkit`.
