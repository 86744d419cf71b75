//! tether's integration tests, one binary: the L7 proxy through real sockets, echo pods and the
//! real `tether` process; the Kubernetes source against a fake API server; the kernel data
//! plane in network namespaces; and the deploy manifests, checked offline.
//!
//! One module per area, and [`fixtures`] for the set-up they share. Every test is a thread of
//! this one process, two at a time on a two-CPU machine; the few that bound wall time hold
//! [`fixtures::timing`], the few that load the machine for long [`fixtures::loading`], so the
//! two kinds never meet.
//!
//! `cargo test -p tether --test integration` runs them all; a module alone, say
//! `cargo test -p tether --test integration sticky::`.
mod fixtures;

mod bad_input;
mod config_errors;
mod container;
mod cookies;
mod deploy_manifests;
mod drain;
mod failures;
mod hardening;
mod http2;
mod kernel_dataplane;
mod kube_gateway;
mod kube_howto;
mod kube_latency;
mod kube_node;
mod kube_outage;
mod kube_tls;
mod protocol;
mod reload;
mod shutdown;
mod sticky;
mod tls;
