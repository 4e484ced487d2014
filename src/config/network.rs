//! The client's port settings (Nomad's `client` keys): the dynamic port range
//! (`min_dynamic_port`, `max_dynamic_port`), `reserved.reserved_ports` (on every address) and
//! `host_network "<name>" { cidr interface reserved_ports }` blocks naming more addresses
//! ports may be placed on.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

/// Nomad's default dynamic port range.
pub const DEFAULT_MIN_DYNAMIC_PORT: u16 = 20000;
pub const DEFAULT_MAX_DYNAMIC_PORT: u16 = 32000;
/// The longest `reserved_ports` text accepted.
pub const MAX_RESERVED_PORTS_TEXT: usize = 4096;
/// The most `host_network` blocks one agent may configure.
pub const MAX_HOST_NETWORKS: usize = 64;

/// One `client.host_network "<name>"` block.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostNetworkBlock {
    pub cidr: Option<String>,
    pub interface: Option<String>,
    pub reserved_ports: Option<String>,
}

/// One configured host network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    pub name: String,
    /// `ip/prefix`: the host's addresses inside it belong to this network.
    pub cidr: Option<(std::net::IpAddr, u32)>,
    /// Only addresses of this interface.
    pub interface: Option<String>,
    pub reserved_ports: String,
}

/// The client's port settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNetwork {
    pub min_dynamic_port: u16,
    pub max_dynamic_port: u16,
    /// `client.reserved.reserved_ports` ("22,80,8000-8100"), reserved on every address.
    pub reserved_ports: String,
    pub host_networks: Vec<HostNetwork>,
}

impl Default for ClientNetwork {
    fn default() -> ClientNetwork {
        ClientNetwork {
            min_dynamic_port: DEFAULT_MIN_DYNAMIC_PORT,
            max_dynamic_port: DEFAULT_MAX_DYNAMIC_PORT,
            reserved_ports: String::new(),
            host_networks: Vec::new(),
        }
    }
}

/// A `reserved_ports` text is a list of ports and ranges.
pub fn port_ranges_ok(s: &str) -> bool {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .all(|part| match part.split_once('-') {
            Some((a, b)) => matches!(
                (a.trim().parse::<u16>(), b.trim().parse::<u16>()),
                (Ok(a), Ok(b)) if a <= b
            ),
            None => part.parse::<u16>().is_ok(),
        })
}

fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u32)> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let prefix: u32 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// Whether `ip` is inside `cidr`.
pub fn cidr_contains(cidr: (std::net::IpAddr, u32), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (cidr.0, ip) {
        (V4(net), V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - cidr.1).unwrap_or(0);
            u32::from(net) & mask == u32::from(a) & mask
        }
        (V6(net), V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - cidr.1).unwrap_or(0);
            u128::from(net) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Check the file's settings into a [`ClientNetwork`].
pub fn from_file(
    min: Option<i64>,
    max: Option<i64>,
    reserved_ports: Option<&str>,
    host_networks: Option<&BTreeMap<String, HostNetworkBlock>>,
) -> Result<ClientNetwork, ConfigError> {
    let port = |key: &str, v: Option<i64>, d: u16| -> Result<u16, ConfigError> {
        match v {
            None => Ok(d),
            Some(p) => u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                ConfigError::Invalid(format!("client.{key} must be between 1 and 65535, got {p}"))
            }),
        }
    };
    let min_dynamic_port = port("min_dynamic_port", min, DEFAULT_MIN_DYNAMIC_PORT)?;
    let max_dynamic_port = port("max_dynamic_port", max, DEFAULT_MAX_DYNAMIC_PORT)?;
    if min_dynamic_port > max_dynamic_port {
        return Err(ConfigError::Invalid(format!(
            "client.min_dynamic_port ({min_dynamic_port}) must not be greater than client.max_dynamic_port ({max_dynamic_port})"
        )));
    }
    let reserved_ports = reserved_ports.unwrap_or("").to_string();
    if reserved_ports.len() > MAX_RESERVED_PORTS_TEXT || !port_ranges_ok(&reserved_ports) {
        return Err(ConfigError::Invalid(format!(
            "client.reserved.reserved_ports {reserved_ports:?} is not a list of ports and ranges"
        )));
    }
    let blocks = host_networks.cloned().unwrap_or_default();
    if blocks.len() > MAX_HOST_NETWORKS {
        return Err(ConfigError::Invalid(format!(
            "client.host_network: at most {MAX_HOST_NETWORKS} host networks"
        )));
    }
    let mut nets = Vec::new();
    for (name, b) in blocks {
        if name == "default" {
            return Err(ConfigError::Invalid(
                "client.host_network \"default\": the name is taken by the agent's own address"
                    .into(),
            ));
        }
        let cidr = match &b.cidr {
            Some(c) => Some(parse_cidr(c).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "client.host_network {name:?}: cidr {c:?} is not an address/prefix"
                ))
            })?),
            None => None,
        };
        if cidr.is_none() && b.interface.is_none() {
            return Err(ConfigError::Invalid(format!(
                "client.host_network {name:?}: a cidr or an interface is required"
            )));
        }
        let rp = b.reserved_ports.clone().unwrap_or_default();
        if !port_ranges_ok(&rp) {
            return Err(ConfigError::Invalid(format!(
                "client.host_network {name:?}: reserved_ports {rp:?} is not a list of ports and ranges"
            )));
        }
        nets.push(HostNetwork {
            name,
            cidr,
            interface: b.interface.clone(),
            reserved_ports: rp,
        });
    }
    Ok(ClientNetwork {
        min_dynamic_port,
        max_dynamic_port,
        reserved_ports,
        host_networks: nets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_cidrs() {
        assert!(port_ranges_ok("22, 80,8000-8100"));
        assert!(!port_ranges_ok("80-22"));
        assert!(!port_ranges_ok("http"));
        let c = parse_cidr("127.0.0.0/8").unwrap();
        assert!(cidr_contains(c, "127.0.0.1".parse().unwrap()));
        assert!(!cidr_contains(c, "::1".parse().unwrap()));
        assert!(parse_cidr("127.0.0.0/33").is_none());
    }

    #[test]
    fn a_reversed_range_is_refused() {
        let e = from_file(Some(30000), Some(20000), None, None).unwrap_err();
        assert!(e.to_string().contains("must not be greater"), "{e}");
        let ok = from_file(Some(40000), Some(40010), None, None).unwrap();
        assert_eq!((ok.min_dynamic_port, ok.max_dynamic_port), (40000, 40010));
    }
}
