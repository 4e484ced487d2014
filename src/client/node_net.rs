//! The client's networks as its node record reports them (`NodeResources.Networks`,
//! `NodeNetworks`, the dynamic port range): the `default` host network is the agent's own
//! address; each `host_network` block adds the host's addresses inside its CIDR (and/or on
//! its interface). Reserved ports are written on every address (`ReservedPorts`), which is
//! what the scheduler reads.

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::config::network::{cidr_contains, ClientNetwork};
use crate::sys::host::IfAddr;

/// Nomad's fingerprinted link speed when the interface does not say (Mbit/s).
pub const DEFAULT_SPEED_MBITS: u64 = 1000;

/// `reserved_ports` of the client and of a host network, joined.
fn join_ports(a: &str, b: &str) -> String {
    [a, b]
        .iter()
        .filter(|s| !s.trim().is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// `(Networks, NodeNetworks)` for a node whose default address is `ip`, given the host's
/// interface addresses.
pub fn networks(net: &ClientNetwork, ip: IpAddr, ifaddrs: &[IfAddr]) -> (Value, Value) {
    let device = ifaddrs
        .iter()
        .find(|a| a.addr == ip)
        .map(|a| a.interface.clone())
        .unwrap_or_default();
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let mut legacy = serde_json::Map::new();
    legacy.insert("Mode".into(), json!("host"));
    if !device.is_empty() {
        legacy.insert("Device".into(), json!(device));
    }
    legacy.insert("CIDR".into(), json!(format!("{ip}/{prefix}")));
    legacy.insert("IP".into(), json!(ip.to_string()));
    legacy.insert("MBits".into(), json!(DEFAULT_SPEED_MBITS));
    let mut node_networks = vec![json!({
        "Mode": "host",
        "Device": device,
        "MacAddress": "",
        "Speed": DEFAULT_SPEED_MBITS,
        "Addresses": [{
            "Family": family(&ip),
            "Alias": "default",
            "Address": ip.to_string(),
            "ReservedPorts": net.reserved_ports,
            "Gateway": "",
        }],
    })];
    for hn in &net.host_networks {
        let addrs: Vec<&IfAddr> = ifaddrs
            .iter()
            .filter(|a| hn.interface.as_ref().is_none_or(|i| *i == a.interface))
            .filter(|a| hn.cidr.is_none_or(|c| cidr_contains(c, a.addr)))
            .collect();
        for a in addrs {
            node_networks.push(json!({
                "Mode": "host",
                "Device": a.interface,
                "MacAddress": "",
                "Speed": DEFAULT_SPEED_MBITS,
                "Addresses": [{
                    "Family": family(&a.addr),
                    "Alias": hn.name,
                    "Address": a.addr.to_string(),
                    "ReservedPorts": join_ports(&net.reserved_ports, &hn.reserved_ports),
                    "Gateway": "",
                }],
            }));
        }
    }
    (json!([Value::Object(legacy)]), Value::Array(node_networks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::network::HostNetwork;

    #[test]
    fn a_host_network_takes_the_addresses_in_its_cidr() {
        let lo = |a: &str| IfAddr {
            interface: "lo".into(),
            addr: a.parse().unwrap(),
            prefix: 8,
            flags: 0,
        };
        let net = ClientNetwork {
            reserved_ports: "22".into(),
            host_networks: vec![HostNetwork {
                name: "lo6".into(),
                cidr: Some(("::1".parse().unwrap(), 128)),
                interface: None,
                reserved_ports: "80".into(),
            }],
            ..ClientNetwork::default()
        };
        let (legacy, nn) = networks(
            &net,
            "127.0.0.1".parse().unwrap(),
            &[lo("127.0.0.1"), lo("::1")],
        );
        assert_eq!(legacy[0]["Device"], "lo");
        assert_eq!(legacy[0]["IP"], "127.0.0.1");
        assert_eq!(nn[0]["Addresses"][0]["Alias"], "default");
        assert_eq!(nn[0]["Addresses"][0]["ReservedPorts"], "22");
        assert_eq!(nn[1]["Addresses"][0]["Alias"], "lo6");
        assert_eq!(nn[1]["Addresses"][0]["Address"], "::1");
        assert_eq!(nn[1]["Addresses"][0]["ReservedPorts"], "22,80");
    }
}
