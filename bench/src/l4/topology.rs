//! The L4 lab's addresses and services, and the configuration each steering system gets for
//! them: tether's YAML and a kube-proxy-shaped nftables ruleset (see `lab` for the namespaces).
use std::net::Ipv4Addr;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The connection-rate service (3 pods) and the bulk service (pod 0 only).
pub const RR_PORT: u16 = 80;
pub const BULK_PORT: u16 = 5201;
pub const POD_RR_PORT: u16 = 8080;
pub const POD_BULK_PORT: u16 = 5201;
/// The datagram service (pod 0 only), UDP.
pub const UDP_PORT: u16 = 53;
pub const POD_UDP_PORT: u16 = 5353;
pub const PODS: usize = 3;

/// Pod `pod`'s address, on its veth to the node (`10.77.<pod + 1>.2`).
pub fn pod_addr(pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, pod as u8 + 1, 2)
}

/// The node's end of pod `pod`'s veth, the pod's default route (`10.77.<pod + 1>.1`).
pub fn gateway(pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, pod as u8 + 1, 1)
}

/// `pods`: the pod interfaces and their `podDelivery`, if listed.
pub fn tether_config(interface: &str, pods: Option<(&[String], &str)>, xdp_mode: &str) -> String {
    let rr: String = (0..PODS)
        .map(|pod| format!("      - {{address: {}:{POD_RR_PORT}}}\n", pod_addr(pod)))
        .collect();
    let pods = match pods {
        Some((interfaces, delivery)) => format!(
            "  podInterfaces: [{}]\n  podDelivery: {delivery}\n",
            interfaces.join(", ")
        ),
        None => String::new(),
    };
    format!(
        "dataplane:
  interfaces: [{interface}]
  xdpMode: {xdp_mode}
{pods}services:
  rr:
    listen: {VIP}:{RR_PORT}
    protocol: tcp
    targets:
{rr}  bulk:
    listen: {VIP}:{BULK_PORT}
    protocol: tcp
    targets:
      - {{address: {pod0}:{POD_BULK_PORT}}}
  udp:
    listen: {VIP}:{UDP_PORT}
    protocol: udp
    targets:
      - {{address: {pod0}:{POD_UDP_PORT}}}
",
        pod0 = pod_addr(0)
    )
}

/// The shape of kube-proxy's nftables mode for three ClusterIP services (two TCP, one UDP): a `nat` prerouting hook
/// jumping to a `services` chain, which looks the destination up in a verdict map of
/// VIP . protocol . port; each service chain picks an endpoint with `numgen random mod N`, each
/// endpoint chain DNATs (conntrack does the reverse NAT). Also kube-proxy's masquerade check in
/// nat postrouting and its `ct state invalid drop` in the forward filter.
pub fn nft_ruleset() -> String {
    let rr_endpoints: String = (0..PODS)
        .map(|pod| {
            format!(
                "  chain endpoint-rr-{pod} {{\n    meta l4proto tcp dnat to {}:{POD_RR_PORT}\n  }}\n",
                pod_addr(pod)
            )
        })
        .collect();
    let rr_vmap: Vec<String> = (0..PODS)
        .map(|pod| format!("{pod} : goto endpoint-rr-{pod}"))
        .collect();
    format!(
        "table ip tether-bench {{
  map service-ips {{
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = {{ {VIP} . tcp . {RR_PORT} : goto service-rr, {VIP} . tcp . {BULK_PORT} : goto service-bulk, {VIP} . udp . {UDP_PORT} : goto service-udp }}
  }}
  chain nat-prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain nat-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x4000 == 0x4000 masquerade
  }}
  chain filter-forward {{
    type filter hook forward priority filter; policy accept;
    ct state invalid drop
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
  }}
  chain service-rr {{
    numgen random mod {PODS} vmap {{ {} }}
  }}
{rr_endpoints}  chain service-bulk {{
    numgen random mod 1 vmap {{ 0 : goto endpoint-bulk-0 }}
  }}
  chain endpoint-bulk-0 {{
    meta l4proto tcp dnat to {pod0}:{POD_BULK_PORT}
  }}
  chain service-udp {{
    numgen random mod 1 vmap {{ 0 : goto endpoint-udp-0 }}
  }}
  chain endpoint-udp-0 {{
    meta l4proto udp dnat to {pod0}:{POD_UDP_PORT}
  }}
}}
",
        rr_vmap.join(", "),
        pod0 = pod_addr(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_every_pod() {
        let yaml = tether_config("n12340", Some((&["p012340".into()], "peer")), "native");
        assert!(yaml.contains("interfaces: [n12340]"));
        assert!(yaml.contains("podInterfaces: [p012340]\n  podDelivery: peer\n"));
        assert!(!tether_config("n12340", None, "native").contains("podInterfaces"));
        assert!(yaml.contains("10.77.3.2:8080"));
        assert!(yaml.contains("listen: 10.96.0.10:5201"));
        let nft = nft_ruleset();
        assert!(nft.contains("numgen random mod 3 vmap { 0 : goto endpoint-rr-0"));
        assert!(nft.contains("dnat to 10.77.1.2:5201"));
    }
}
