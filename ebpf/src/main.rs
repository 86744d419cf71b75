//! tether's kernel programs.
//!
//! - [`tether_xdp`] (XDP, on the node's ingress interfaces): packets to a kernel service
//!   (VIP:port, TCP or UDP) are steered to a target (pod) and DNATed. A known flow keeps its
//!   target while that target exists, draining or not; a new flow (TCP SYN, or a UDP packet of
//!   no known flow) gets a Maglev pick over the service's active targets. Steered packets go
//!   to the target's pod interface when the agent listed it, up the stack otherwise: into
//!   the pod's namespace after the node's GRO ([`tether_to_pod`]), or transmitted into the
//!   pod interface (`XDP_REDIRECT`); see `route`.
//! - [`tether_reply`] (TC, on the same interfaces' egress): replies of steered flows get their
//!   source rewritten back to the VIP.
//! - [`tether_from_pod`] (TC, on the ingress of pod interfaces): the same reverse NAT, then the
//!   reply is transmitted straight out of the uplink the FIB names (`bpf_redirect`).
//! - [`tether_to_pod`] (TC, on the same interfaces' ingress): packets the XDP program marked
//!   for a pod go straight to the pod's end of its veth (`bpf_redirect_peer`).
//! - [`tether_xdp_nop`]: returns `XDP_PASS`; the baseline for per-packet cost measurements.
//!
//! Map names and layouts come from `tether-common`; the agent writes the service, target and
//! Maglev maps, the programs own the flow tables and the counters.
#![no_std]
#![no_main]

mod csum;
mod icmp;
mod maps;
mod parse;
mod reply;
mod route;
mod steer;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn tether_xdp(ctx: XdpContext) -> u32 {
    steer::steer(&ctx)
}

#[classifier]
pub fn tether_reply(ctx: TcContext) -> i32 {
    reply::reply::<false>(&ctx)
}

#[classifier]
pub fn tether_from_pod(ctx: TcContext) -> i32 {
    reply::reply::<true>(&ctx)
}

#[classifier]
pub fn tether_to_pod(ctx: TcContext) -> i32 {
    route::to_pod(&ctx)
}

#[xdp]
pub fn tether_xdp_nop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: the TC checksum helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
