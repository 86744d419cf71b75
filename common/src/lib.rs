//! Types shared by the agent (userspace) and the kernel programs (`ebpf/`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of padding surprises, so the
//! same bytes mean the same thing on both sides of a map.
#![no_std]
