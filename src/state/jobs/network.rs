//! Ports as a resource, as Nomad's `NetworkIndex` treats them: what a group's `network`
//! block (and the legacy task `resources.network`) asks for, what a node offers (its host
//! networks' addresses, reserved ports, dynamic range), which ports the live allocs on a node
//! hold, and the assignment of an ask on a node. The scheduler assigns (dynamic ports from a
//! generator it seeds) and carries the result in the plan; apply only re-checks collisions,
//! so it stays deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::{Task, TaskGroup};
use crate::state::node_table::Node;

/// Nomad's default dynamic port range (`min_dynamic_port`, `max_dynamic_port`).
pub const DEFAULT_MIN_DYNAMIC_PORT: u16 = 20000;
pub const DEFAULT_MAX_DYNAMIC_PORT: u16 = 32000;
/// Random probes for a free dynamic port before the precise scan (Nomad: 20).
pub const MAX_RAND_PORT_ATTEMPTS: usize = 20;
/// The host network every node has: its advertise address.
pub const DEFAULT_HOST_NETWORK: &str = "default";
/// The most ports one task group (its network and its tasks' networks) may ask for: a
/// bound on the scheduler's work per placement, far above any real job.
pub const MAX_GROUP_PORTS: usize = 256;
/// The only network mode nomadlet runs (no bridge: no CNI, no network namespaces).
pub const MODE_HOST: &str = "host";

/// One port of an ask (`structs.Port`): `value` > 0 is static.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortAsk {
    pub label: String,
    pub value: i64,
    pub to: i64,
    pub host_network: String,
}

/// One `network` block (`structs.NetworkResource` as asked).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkAsk {
    pub mode: String,
    pub reserved: Vec<PortAsk>,
    pub dynamic: Vec<PortAsk>,
    /// The block as submitted (its `MBits`, `DNS`, `Hostname` are shown back).
    pub raw: Value,
}

fn int(v: &Value, k: &str) -> i64 {
    v.get(k)
        .and_then(|x| x.as_i64().or_else(|| x.as_f64().map(|f| f as i64)))
        .unwrap_or(0)
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn ports_of(v: &Value, k: &str) -> Vec<PortAsk> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| PortAsk {
                    label: text(p, "Label"),
                    value: int(p, "Value"),
                    to: int(p, "To"),
                    host_network: text(p, "HostNetwork"),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl NetworkAsk {
    fn of(v: &Value) -> NetworkAsk {
        NetworkAsk {
            mode: text(v, "Mode"),
            reserved: ports_of(v, "ReservedPorts"),
            dynamic: ports_of(v, "DynamicPorts"),
            raw: v.clone(),
        }
    }

    /// Every port, static first.
    pub fn ports(&self) -> impl Iterator<Item = &PortAsk> {
        self.reserved.iter().chain(self.dynamic.iter())
    }
}

/// Nomad's server-side `NetworkResource.Canonicalize` on a `Networks` list: a port without a
/// host network is on `default`; an empty port list is no list.
pub fn canonicalize(networks: &mut Value) {
    let Some(list) = networks.as_array_mut() else {
        return;
    };
    for n in list.iter_mut().filter_map(Value::as_object_mut) {
        for k in ["ReservedPorts", "DynamicPorts"] {
            if n.get(k)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                n.remove(k);
            }
            let ports = n.get_mut(k).and_then(Value::as_array_mut);
            for p in ports.into_iter().flatten().filter_map(Value::as_object_mut) {
                let unset = p
                    .get("HostNetwork")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty);
                if unset {
                    p.insert("HostNetwork".into(), Value::from(DEFAULT_HOST_NETWORK));
                }
            }
        }
    }
}

/// Every `network` block of a `Networks` list.
pub fn asks_of(v: &Value) -> Vec<NetworkAsk> {
    v.as_array()
        .map(|a| a.iter().map(NetworkAsk::of).collect())
        .unwrap_or_default()
}

/// The group's network (Nomad uses the first; validation allows one).
pub fn group_ask(tg: &TaskGroup) -> Option<NetworkAsk> {
    asks_of(&tg.networks).into_iter().next()
}

/// A task's legacy `resources.network` (the first).
pub fn task_ask(t: &Task) -> Option<NetworkAsk> {
    asks_of(&t.resources.as_ref()?.networks).into_iter().next()
}

/// Whether any part of the group asks for ports (most groups do not: no work for them).
pub fn group_wants_ports(tg: &TaskGroup) -> bool {
    group_ask(tg).is_some_and(|n| n.ports().next().is_some())
        || tg
            .tasks
            .iter()
            .any(|t| task_ask(t).is_some_and(|n| n.ports().next().is_some()))
}

/// Nomad's checks of a group's networks (`TaskGroup.validateNetworks`), plus the mode
/// nomadlet runs.
pub fn validate_group(tg: &TaskGroup) -> Vec<String> {
    let mut errs = Vec::new();
    let group = asks_of(&tg.networks);
    if group.len() > 1 {
        errs.push("Only one task group network resource is allowed".to_string());
    }
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut statics: BTreeMap<(String, i64), String> = BTreeMap::new();
    let mut count = 0usize;
    let mut check = |owner: String, n: &NetworkAsk, errs: &mut Vec<String>| {
        for p in n.ports() {
            count += 1;
            match labels.get(&p.label) {
                Some(other) => {
                    errs.push(format!("Port label {} already in use by {other}", p.label))
                }
                None => {
                    labels.insert(p.label.clone(), owner.clone());
                }
            }
            if p.label.is_empty() {
                errs.push("Port label must not be empty".to_string());
            }
            if p.value != 0 {
                let hn = if p.host_network.is_empty() {
                    DEFAULT_HOST_NETWORK.to_string()
                } else {
                    p.host_network.clone()
                };
                let key = (hn, p.value);
                match statics.get(&key) {
                    Some(other) => errs.push(format!(
                        "Static port {} already reserved by {other}",
                        p.value
                    )),
                    None => {
                        statics.insert(key, format!("{owner}:{}", p.label));
                    }
                }
                if p.value > i64::from(u16::MAX) {
                    errs.push(format!(
                        "Port {} ({}) cannot be greater than {}",
                        p.label,
                        p.value,
                        u16::MAX
                    ));
                } else if p.value < 0 {
                    errs.push(format!("invalid port {} (out of range)", p.value));
                }
            }
            if p.to < -1 {
                errs.push(format!(
                    "Port {:?} cannot be mapped to negative value {}",
                    p.label, p.to
                ));
            } else if p.to > i64::from(u16::MAX) {
                errs.push(format!(
                    "Port {:?} cannot be mapped to a port ({}) greater than {}",
                    p.label,
                    p.to,
                    u16::MAX
                ));
            }
        }
    };
    for n in &group {
        if !n.mode.is_empty() && n.mode != MODE_HOST {
            errs.push(format!(
                "Network mode {:?} is not supported: nomadlet runs tasks in the host network only (mode = \"host\")",
                n.mode
            ));
        }
        check("taskgroup network".to_string(), n, &mut errs);
    }
    for t in &tg.tasks {
        for n in t
            .resources
            .as_ref()
            .map(|r| asks_of(&r.networks))
            .unwrap_or_default()
        {
            if !n.mode.is_empty() && n.mode != MODE_HOST {
                errs.push(format!(
                    "Network mode {:?} is not supported: nomadlet runs tasks in the host network only (mode = \"host\")",
                    n.mode
                ));
            }
            check(t.name.clone(), &n, &mut errs);
        }
    }
    if count > MAX_GROUP_PORTS {
        errs.push(format!(
            "Task group asks for {count} ports; at most {MAX_GROUP_PORTS} are allowed"
        ));
    }
    errs
}

/// One assigned port (`structs.AllocatedPortMapping`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub label: String,
    pub value: u16,
    /// The port inside the task's network (`to`; equal to `value` when `to = -1`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub to: i64,
    pub host_ip: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The ports the scheduler assigned one alloc: the group network's, and each task's legacy
/// network (all on the node's default address).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocPorts {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, Vec<PortMapping>>,
}

impl AllocPorts {
    pub fn is_empty(&self) -> bool {
        self.group.is_empty() && self.tasks.is_empty()
    }

    /// Every assigned port.
    pub fn all(&self) -> impl Iterator<Item = &PortMapping> {
        self.group.iter().chain(self.tasks.values().flatten())
    }
}

impl crate::state::rare::Empty for AllocPorts {
    fn empty() -> &'static AllocPorts {
        static EMPTY: AllocPorts = AllocPorts {
            group: Vec::new(),
            tasks: BTreeMap::new(),
        };
        &EMPTY
    }
    fn is_empty(&self) -> bool {
        AllocPorts::is_empty(self)
    }
}

/// One address of a node's host network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    pub alias: String,
    pub ip: String,
    /// Ports reserved on this address (the client's `reserved.reserved_ports` merged with the
    /// host network's own, as the client reports them in the address's `ReservedPorts`).
    pub reserved: BTreeSet<u16>,
}

/// What a node offers for ports, read from its `NodeResources`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    /// Host networks' addresses, in the node's order.
    pub addrs: Vec<NodeAddr>,
    /// The address legacy task networks use (`Networks[0].IP`).
    pub task_ip: Option<String>,
    pub min_dynamic: u16,
    pub max_dynamic: u16,
}

/// Parse a `reserved_ports` text ("22,80,8000-8100"); `None` when it is not one.
pub fn parse_port_ranges(s: &str) -> Option<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok()?);
            }
        }
    }
    Some(out)
}

impl NodeNet {
    /// From a node's `NodeResources` (`NodeNetworks`, `Networks`, the dynamic range).
    pub fn of(node: &Node) -> NodeNet {
        let r = &node.resources;
        let mut addrs = Vec::new();
        for n in r
            .get("NodeNetworks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for a in n
                .get("Addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let reserved = a
                    .get("ReservedPorts")
                    .and_then(Value::as_str)
                    .and_then(parse_port_ranges)
                    .unwrap_or_default();
                addrs.push(NodeAddr {
                    alias: text(a, "Alias"),
                    ip: text(a, "Address"),
                    reserved,
                });
            }
        }
        let task_ip = r
            .get("Networks")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|n| !text(n, "Device").is_empty()))
            .map(|n| text(n, "IP"))
            .filter(|ip| !ip.is_empty());
        let port = |k: &str, d: u16| {
            u16::try_from(int(r, k))
                .ok()
                .filter(|p| *p > 0)
                .unwrap_or(d)
        };
        NodeNet {
            addrs,
            task_ip,
            min_dynamic: port("MinDynamicPort", DEFAULT_MIN_DYNAMIC_PORT),
            max_dynamic: port("MaxDynamicPort", DEFAULT_MAX_DYNAMIC_PORT),
        }
    }

    fn addrs_of<'a>(&'a self, host_network: &'a str) -> impl Iterator<Item = &'a NodeAddr> {
        let hn = if host_network.is_empty() {
            DEFAULT_HOST_NETWORK
        } else {
            host_network
        };
        self.addrs.iter().filter(move |a| a.alias == hn)
    }
}

/// A set of ports (one bit each).
#[derive(Clone)]
struct PortSet(Box<[u64; 1024]>);

impl PortSet {
    fn new() -> PortSet {
        PortSet(Box::new([0; 1024]))
    }

    fn has(&self, p: u16) -> bool {
        self.0[usize::from(p / 64)] & (1 << (p % 64)) != 0
    }

    fn set(&mut self, p: u16) {
        self.0[usize::from(p / 64)] |= 1 << (p % 64);
    }
}

/// The ports in use on one node, per host IP: its reserved ports and its allocs' ports.
#[derive(Clone, Default)]
pub struct UsedPorts {
    by_ip: HashMap<String, PortSet>,
    /// Set when the allocs already there collide with each other (Nomad's "port collision").
    pub collision: Option<String>,
}

impl std::fmt::Debug for UsedPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsedPorts")
            .field("ips", &self.by_ip.len())
            .field("collision", &self.collision)
            .finish()
    }
}

/// A seedable source of numbers for dynamic port picks (the scheduler's generator).
pub trait PortRng {
    fn next_u64(&mut self) -> u64;
}

impl UsedPorts {
    /// The node's reserved ports, nothing else yet.
    pub fn of_node(net: &NodeNet) -> UsedPorts {
        let mut u = UsedPorts::default();
        for a in &net.addrs {
            let set = u.by_ip.entry(a.ip.clone()).or_insert_with(PortSet::new);
            for p in &a.reserved {
                set.set(*p);
            }
        }
        u
    }

    fn is_used(&self, ip: &str, p: u16) -> bool {
        self.by_ip.get(ip).is_some_and(|s| s.has(p))
    }

    /// Mark an alloc's ports used; the first port already in use is the error (Nomad's
    /// "port N already in use"), the rest are still marked.
    pub fn add(&mut self, ports: &AllocPorts) -> Result<(), PortError> {
        let mut err = None;
        for p in ports.all() {
            let set = self
                .by_ip
                .entry(p.host_ip.clone())
                .or_insert_with(PortSet::new);
            if set.has(p.value) {
                err.get_or_insert(PortError::InUse(p.value));
            } else {
                set.set(p.value);
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Mark a new alloc's ports used only when none is in use yet (nor repeated within it);
    /// on an error nothing is marked.
    pub fn try_add(&mut self, ports: &AllocPorts) -> Result<(), PortError> {
        let mut seen: BTreeSet<(&str, u16)> = BTreeSet::new();
        for p in ports.all() {
            if self.is_used(&p.host_ip, p.value) || !seen.insert((p.host_ip.as_str(), p.value)) {
                return Err(PortError::InUse(p.value));
            }
        }
        self.add(ports)
    }

    /// Like [`UsedPorts::add`] for an alloc already on the node: a collision is remembered
    /// (the node then takes no new ports).
    pub fn add_existing(&mut self, alloc_id: &str, ports: &AllocPorts) {
        if let Err(e) = self.add(ports) {
            self.collision.get_or_insert_with(|| {
                format!("collision when reserving port for alloc {alloc_id}: {e}")
            });
        }
    }

    /// Assign `tg`'s ports on a node (Nomad's `AssignPorts`, then `AssignTaskNetwork` per
    /// task): static ports must be free, dynamic ones are picked from the node's range with
    /// `rng`. The error is Nomad's reason (the metric adds `network: `).
    pub fn assign(
        &self,
        net: &NodeNet,
        tg: &TaskGroup,
        rng: &mut dyn PortRng,
    ) -> Result<AllocPorts, PortError> {
        let mut out = AllocPorts::default();
        let mut work = self.clone();
        if let Some(ask) = group_ask(tg) {
            let mut offered: Vec<(String, u16)> = Vec::new();
            for p in &ask.reserved {
                let Some(addr) = net.addrs_of(&p.host_network).next() else {
                    return Err(no_addresses(&p.host_network));
                };
                let value = checked_port(p.value)?;
                if work.is_used(&addr.ip, value) {
                    return Err(PortError::ReservedCollision {
                        label: p.label.clone(),
                        value: p.value,
                    });
                }
                offered.push((addr.ip.clone(), value));
                out.group.push(PortMapping {
                    label: p.label.clone(),
                    value,
                    to: p.to,
                    host_ip: addr.ip.clone(),
                });
            }
            let statics: Vec<u16> = ask
                .reserved
                .iter()
                .filter_map(|p| u16::try_from(p.value).ok())
                .collect();
            for p in &ask.dynamic {
                let mut picked = None;
                let mut any_addr = false;
                for addr in net.addrs_of(&p.host_network) {
                    any_addr = true;
                    let taken = |v: u16| {
                        work.is_used(&addr.ip, v)
                            || statics.contains(&v)
                            || offered.iter().any(|(ip, o)| *o == v && *ip == addr.ip)
                    };
                    if let Some(v) = pick_free(net, &taken, rng) {
                        picked = Some((addr.ip.clone(), v));
                        break;
                    }
                }
                let Some((ip, value)) = picked else {
                    return Err(if any_addr {
                        PortError::DynamicSelectionFailed
                    } else {
                        no_addresses(&p.host_network)
                    });
                };
                offered.push((ip.clone(), value));
                out.group.push(PortMapping {
                    label: p.label.clone(),
                    value,
                    to: if p.to == -1 { i64::from(value) } else { p.to },
                    host_ip: ip,
                });
            }
            // Reserved so the tasks' own networks do not take them.
            let _ = work.add(&out);
        }
        for t in &tg.tasks {
            let Some(ask) = task_ask(t) else { continue };
            if ask.ports().next().is_none() {
                continue;
            }
            let Some(ip) = net.task_ip.clone() else {
                return Err(PortError::NoNetworks);
            };
            let mut ports = Vec::new();
            for p in &ask.reserved {
                let value = checked_port(p.value)?;
                if work.is_used(&ip, value) {
                    return Err(PortError::ReservedCollision {
                        label: p.label.clone(),
                        value: p.value,
                    });
                }
                ports.push(PortMapping {
                    label: p.label.clone(),
                    value,
                    to: p.to,
                    host_ip: ip.clone(),
                });
            }
            let statics: Vec<u16> = ports.iter().map(|p| p.value).collect();
            let mut picked: Vec<u16> = Vec::new();
            for p in &ask.dynamic {
                let taken =
                    |v: u16| work.is_used(&ip, v) || statics.contains(&v) || picked.contains(&v);
                let Some(value) = pick_free(net, &taken, rng) else {
                    return Err(PortError::DynamicSelectionFailed);
                };
                picked.push(value);
                ports.push(PortMapping {
                    label: p.label.clone(),
                    value,
                    to: if p.to == -1 { i64::from(value) } else { p.to },
                    host_ip: ip.clone(),
                });
            }
            let mine = AllocPorts {
                group: ports.clone(),
                tasks: BTreeMap::new(),
            };
            let _ = work.add(&mine);
            out.tasks.insert(t.name.clone(), ports);
        }
        Ok(out)
    }
}

fn no_addresses(host_network: &str) -> PortError {
    let hn = if host_network.is_empty() {
        DEFAULT_HOST_NETWORK
    } else {
        host_network
    };
    PortError::NoAddresses(hn.to_string())
}

fn checked_port(v: i64) -> Result<u16, PortError> {
    u16::try_from(v).map_err(|_| PortError::OutOfRange(v))
}

/// Why ports could not be marked or assigned; the texts are Nomad's reasons (the scheduler's
/// metric prefixes them with `network: `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortError {
    /// A port already marked used on its address.
    InUse(u16),
    /// A static port someone else holds.
    ReservedCollision { label: String, value: i64 },
    /// No free port left in the node's dynamic range.
    DynamicSelectionFailed,
    /// The node has no address on the host network asked for (its name).
    NoAddresses(String),
    /// A task network asked for and the node has none.
    NoNetworks,
    /// A static port outside 0–65535.
    OutOfRange(i64),
}

impl std::fmt::Display for PortError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortError::InUse(p) => write!(f, "port {p} already in use"),
            PortError::ReservedCollision { label, value } => {
                write!(f, "reserved port collision {label}={value}")
            }
            PortError::DynamicSelectionFailed => f.write_str("dynamic port selection failed"),
            PortError::NoAddresses(hn) => write!(f, "no addresses available for {hn} network"),
            PortError::NoNetworks => f.write_str("no networks available"),
            PortError::OutOfRange(v) => write!(f, "invalid port {v} (out of range)"),
        }
    }
}

impl std::error::Error for PortError {}

/// A free port of the node's dynamic range: random probes first, then a scan from a random
/// start (so a full range is found full, and picks spread over the range).
fn pick_free(net: &NodeNet, taken: &dyn Fn(u16) -> bool, rng: &mut dyn PortRng) -> Option<u16> {
    let (lo, hi) = (net.min_dynamic, net.max_dynamic);
    if lo > hi {
        return None;
    }
    let span = u64::from(hi - lo) + 1;
    for _ in 0..MAX_RAND_PORT_ATTEMPTS {
        let v = lo + (rng.next_u64() % span) as u16;
        if !taken(v) {
            return Some(v);
        }
    }
    let start = rng.next_u64() % span;
    (0..span)
        .map(|i| lo + ((start + i) % span) as u16)
        .find(|v| !taken(*v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Seq(u64);
    impl PortRng for Seq {
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
        }
    }

    fn net(min: u16, max: u16) -> NodeNet {
        NodeNet {
            addrs: vec![NodeAddr {
                alias: DEFAULT_HOST_NETWORK.into(),
                ip: "127.0.0.1".into(),
                reserved: BTreeSet::new(),
            }],
            task_ip: Some("127.0.0.1".into()),
            min_dynamic: min,
            max_dynamic: max,
        }
    }

    fn group(networks: Value) -> TaskGroup {
        TaskGroup {
            name: "g".into(),
            networks,
            ..TaskGroup::default()
        }
    }

    #[test]
    fn dynamic_ports_never_collide_and_a_full_range_is_exhausted() {
        let n = net(20000, 20003);
        let tg = group(json!([{"DynamicPorts": [{"Label": "a"}, {"Label": "b"}]}]));
        let mut used = UsedPorts::of_node(&n);
        let mut rng = Seq(7);
        let first = used.assign(&n, &tg, &mut rng).unwrap();
        used.add(&first).unwrap();
        let second = used.assign(&n, &tg, &mut rng).unwrap();
        used.add(&second).unwrap();
        let mut all: Vec<u16> = first.all().chain(second.all()).map(|p| p.value).collect();
        all.sort_unstable();
        assert_eq!(all, [20000, 20001, 20002, 20003]);
        assert_eq!(
            used.assign(&n, &tg, &mut rng).unwrap_err().to_string(),
            "dynamic port selection failed"
        );
    }

    #[test]
    fn a_taken_static_port_is_nomads_reserved_port_collision() {
        let n = net(20000, 32000);
        let tg = group(json!([{"ReservedPorts": [{"Label": "http", "Value": 8080}],
            "DynamicPorts": [{"Label": "x", "To": -1}]}]));
        let mut used = UsedPorts::of_node(&n);
        let got = used.assign(&n, &tg, &mut Seq(1)).unwrap();
        assert_eq!(got.group[0].value, 8080);
        assert_eq!(got.group[1].to, i64::from(got.group[1].value));
        used.add(&got).unwrap();
        assert_eq!(
            used.assign(&n, &tg, &mut Seq(2)).unwrap_err().to_string(),
            "reserved port collision http=8080"
        );
        let other = group(json!([{"DynamicPorts": [{"Label": "p", "HostNetwork": "public"}]}]));
        assert_eq!(
            used.assign(&n, &other, &mut Seq(3))
                .unwrap_err()
                .to_string(),
            "no addresses available for public network"
        );
    }

    #[test]
    fn validation_speaks_nomads_words() {
        let tg = group(
            json!([{"Mode": "bridge", "ReservedPorts": [{"Label": "a", "Value": 80},
            {"Label": "a", "Value": 80}], "DynamicPorts": [{"Label": "c", "To": -5}]}]),
        );
        let errs = validate_group(&tg);
        assert!(
            errs.iter()
                .any(|e| e.contains("\"bridge\" is not supported")),
            "{errs:?}"
        );
        assert!(errs.contains(&"Port label a already in use by taskgroup network".to_string()));
        assert!(
            errs.contains(&"Static port 80 already reserved by taskgroup network:a".to_string())
        );
        assert!(errs.contains(&"Port \"c\" cannot be mapped to negative value -5".to_string()));
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            parse_port_ranges("22, 80,100-102")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [22, 80, 100, 101, 102]
        );
        assert!(parse_port_ranges("5-1").is_none());
        assert!(parse_port_ranges("x").is_none());
        assert!(parse_port_ranges("70000").is_none());
    }
}
