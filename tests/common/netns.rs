//! Network partitions for multi-process tests: a test builds its own little network of
//! network namespaces and cuts a host off by downing its link.
//!
//! [`run`] creates a fresh namespace for the test itself (the "switch": a bridge `br0` at
//! [`SWITCH_ADDR`]) and one namespace per host `1..=n`, each joined to the bridge by a veth
//! pair and holding the loopback-range address [`host_addr`]`(i)` (`127.0.1.i`) on its side.
//! The body runs on a thread moved into the switch namespace (every thread and process it
//! starts inherits it); agents started with [`server`]/[`client`] run in their host's
//! namespace (through `nsenter`) and bind its address, so one agent's traffic — TCP (HTTP,
//! RPC, Raft) and UDP (gossip), both directions — goes over its own link. [`Net::cut`] sets
//! the bridge end of a host's link down: its packets are silently lost, as on a pulled cable
//! (no reset, no refusal); [`Net::heal`] sets it up again. [`Net::split`] moves a group of
//! hosts to a second bridge, where they reach each other but not the rest (a connected
//! minority), and [`Net::join`] moves them back. [`Net::within`] runs a closure on
//! a thread inside a host's namespace, which still reaches that host's agents while it is cut
//! off (a write sent to a leader in a minority partition).
//!
//! Only loopback-range addresses are used: inside these private namespaces the kernel is told
//! to route `127.0.1.0/24` over the links (`route_localnet`, and the namespace's own
//! `local 127.0.0.0/8` route narrowed to `127.0.0.1`). Namespaces are named
//! `nl-<pid>-<random>-<i>` and deleted when [`run`] returns or panics. A machine where they
//! cannot be made (not root, no `ip netns`) fails the test with the reason: nothing passes
//! silently.

use super::{free_port, short_dir, temp_dir, TestAgent};
use std::process::Command;

/// The switch namespace's own address on the bridge (where the test's requests come from).
pub const SWITCH_ADDR: &str = "127.0.1.254";

/// The most hosts one network may have (`127.0.1.1` .. `127.0.1.MAX_HOSTS`).
pub const MAX_HOSTS: u8 = 16;

/// Host `i`'s address.
pub fn host_addr(i: u8) -> String {
    format!("127.0.1.{i}")
}

/// A test's network: the switch namespace and its hosts.
pub struct Net {
    /// Name prefix of every namespace of this network.
    prefix: String,
    /// Hosts `1..=hosts`.
    hosts: u8,
}

/// Run `cmd` (an `ip`/`sysctl` invocation); panic with its stderr if it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e} (network namespaces need `ip`)"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    /// The path of namespace `i` (0: the switch).
    pub fn ns_path(&self, i: u8) -> String {
        format!("/run/netns/{}", self.ns_name(i))
    }

    fn ns_name(&self, i: u8) -> String {
        format!("{}-{i}", self.prefix)
    }

    fn build(hosts: u8) -> Net {
        assert!((1..=MAX_HOSTS).contains(&hosts), "1..={MAX_HOSTS} hosts");
        let prefix = format!("nl-{}-{}", std::process::id(), free_port());
        let net = Net { prefix, hosts: 0 };
        // Creating the first namespace is where an unfit machine shows.
        let sw = net.ns_name(0);
        let out = Command::new("ip").args(["netns", "add", &sw]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "cannot create a network namespace (partition tests need root and `ip netns`): {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run `ip netns add` (partition tests need iproute2): {e}"),
        }
        let mut net = net;
        for i in 1..=hosts {
            sh(&["ip", "netns", "add", &net.ns_name(i)]);
            net.hosts = i;
        }
        for i in 0..=hosts {
            let name = net.ns_name(i);
            // 127.0.1.0/24 may cross a link: routed, not martian (`/proc/sys/net` is the
            // namespace of the thread that opens it), and not swallowed by lo.
            net.within(i, || {
                for conf in ["all", "default"] {
                    let knob = format!("/proc/sys/net/ipv4/conf/{conf}/route_localnet");
                    std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("{knob}: {e}"));
                }
            });
            sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "-n",
                &name,
                "route",
                "del",
                "local",
                "127.0.0.0/8",
                "dev",
                "lo",
                "table",
                "local",
            ]);
        }
        // br1: the side of a split (`Net::split`), no address: the test is not on it.
        sh(&["ip", "-n", &sw, "link", "add", "br1", "type", "bridge"]);
        sh(&["ip", "-n", &sw, "link", "set", "br1", "up"]);
        sh(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &sw,
            "addr",
            "add",
            &format!("{SWITCH_ADDR}/24"),
            "dev",
            "br0",
        ]);
        sh(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let name = net.ns_name(i);
            let veth = format!("vh{i}");
            sh(&[
                "ip", "-n", &sw, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &name,
            ]);
            sh(&["ip", "-n", &sw, "link", "set", &veth, "master", "br0", "up"]);
            sh(&[
                "ip",
                "-n",
                &name,
                "addr",
                "add",
                &format!("{}/24", host_addr(i)),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &name, "link", "set", "eth0", "up"]);
        }
        net
    }

    /// Move the calling thread into namespace `i` (0: the switch).
    fn enter(&self, i: u8) {
        let path = self.ns_path(i);
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
    }

    /// Cut host `i` off: the bridge end of its link goes down; nothing reaches it or leaves
    /// it (the test's own requests neither, except through [`Net::within`]).
    pub fn cut(&self, i: u8) {
        self.link(i, "down");
    }

    /// Join host `i` again.
    pub fn heal(&self, i: u8) {
        self.link(i, "up");
    }

    fn link(&self, i: u8, state: &str) {
        assert!((1..=self.hosts).contains(&i), "no host {i}");
        sh(&[
            "ip",
            "-n",
            &self.ns_name(0),
            "link",
            "set",
            &format!("vh{i}"),
            state,
        ]);
    }

    /// Split the network: hosts `group` go to a bridge of their own, where they still reach
    /// each other but nothing on the main bridge (the other hosts and the test), nor it them.
    pub fn split(&self, group: &[u8]) {
        for &i in group {
            self.port(i, "br1");
        }
    }

    /// Put hosts `group` back on the main bridge after [`Net::split`].
    pub fn join(&self, group: &[u8]) {
        for &i in group {
            self.port(i, "br0");
        }
    }

    fn port(&self, i: u8, bridge: &str) {
        assert!((1..=self.hosts).contains(&i), "no host {i}");
        sh(&[
            "ip",
            "-n",
            &self.ns_name(0),
            "link",
            "set",
            &format!("vh{i}"),
            "master",
            bridge,
        ]);
    }

    /// Run `f` on a thread inside host `i`'s namespace (where its agents are reachable even
    /// while it is cut off).
    pub fn within<R: Send>(&self, i: u8, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter(i);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A server agent on host `i` (`server { enabled = true }` plus `config`).
    pub fn server(&self, i: u8, config: &str) -> TestAgent {
        TestAgent::cluster_agent_at(
            &host_addr(i),
            Some(&self.ns_path(i)),
            "server",
            &temp_dir("server"),
            "server { enabled = true }\n",
            config,
            &[],
        )
    }

    /// A client agent on host `i` (raw_exec enabled) whose servers are `servers` (RPC
    /// addresses).
    pub fn client(&self, i: u8, servers: &[String], config: &str) -> TestAgent {
        let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        let role = format!(
            "client {{\n  enabled = true\n  servers = [{}]\n}}\nplugin \"raw_exec\" {{\n  config {{ enabled = true }}\n}}\n",
            list.join(", ")
        );
        TestAgent::cluster_agent_at(
            &host_addr(i),
            Some(&self.ns_path(i)),
            "client",
            &short_dir(),
            &role,
            config,
            &[],
        )
    }

    /// Servers on hosts `hosts` with `bootstrap_expect` = their number, each joining the
    /// others through `retry_join` (`config`: more server config, HCL).
    pub fn cluster(&self, hosts: &[u8], config: &str) -> Vec<TestAgent> {
        let serfs: Vec<(u8, u16)> = hosts.iter().map(|&h| (h, free_port())).collect();
        serfs
            .iter()
            .map(|&(h, serf)| {
                let others: Vec<String> = serfs
                    .iter()
                    .filter(|(o, _)| *o != h)
                    .map(|(o, p)| format!("\"{}:{p}\"", host_addr(*o)))
                    .collect();
                self.server(
                    h,
                    &format!(
                        "ports {{\n  serf = {serf}\n}}\nserver {{\n  bootstrap_expect = {}\n  server_join {{\n    retry_join = [{}]\n    retry_interval = \"1s\"\n  }}\n}}\n{config}",
                        hosts.len(),
                        others.join(", ")
                    ),
                )
            })
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..=self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns_name(i)])
                .output();
        }
    }
}

/// Run `body` in a network of its own with `hosts` hosts (see the module doc). The body runs
/// on a thread in the switch namespace; its panic is the test's. Every agent the body
/// started must be dropped by the time it returns (they live in the namespaces deleted
/// then).
pub fn run(hosts: u8, body: impl FnOnce(&Net) + Send) {
    let net = Net::build(hosts);
    std::thread::scope(|s| {
        let net = &net;
        s.spawn(move || {
            net.enter(0);
            body(net)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
}
