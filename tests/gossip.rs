//! Server membership over foca gossip on the serf port (UDP), as separate agent processes on
//! loopback, each with its own HTTP, RPC and serf ports and data dir: join through the API and
//! through `retry_join`, failure detection (`kill -9`, SIGSTOP/SIGCONT), force-leave with and
//! without prune, encryption keys that keep strangers out, ACLs, and garbage datagrams.

mod common;
use common::*;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// How long a membership change may take to show everywhere (probe 1 s, suspicion 4 s).
const CONVERGE: Duration = Duration::from_secs(30);

/// One server agent: its member name, serf port and process.
struct Server {
    name: String,
    serf: u16,
    agent: TestAgent,
}

impl Server {
    fn serf_addr(&self) -> String {
        format!("127.0.0.1:{}", self.serf)
    }
}

/// A server-only agent (`TestAgent::server`: its own HTTP, RPC and serf ports and data dir)
/// with `config` as more agent config (HCL).
fn server(config: &str, flags: &[&str]) -> Server {
    let agent = TestAgent::server(config, flags);
    Server {
        name: format!("server-{}.global", agent.port),
        serf: agent.serf_port,
        agent,
    }
}

/// As [`server`], on a serf port chosen beforehand (so others can name it before it starts).
fn server_on(serf: u16, config: &str) -> Server {
    let agent = TestAgent::server(&format!("ports {{\n  serf = {serf}\n}}\n{config}"), &[]);
    Server {
        name: format!("server-{}.global", agent.port),
        serf,
        agent,
    }
}

/// `(name, status)` of every member `s` lists.
fn members(s: &TestAgent) -> Vec<(String, String)> {
    let m = s.get_json("/v1/agent/members");
    m["Members"]
        .as_array()
        .expect("Members")
        .iter()
        .map(|m| {
            (
                m["Name"].as_str().unwrap_or_default().to_string(),
                m["Status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn status_of(s: &TestAgent, name: &str) -> Option<String> {
    members(s)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, st)| st)
}

fn all_alive(s: &TestAgent, names: &[&str]) -> bool {
    let m = members(s);
    m.len() == names.len()
        && names
            .iter()
            .all(|n| m.iter().any(|(mn, st)| mn == n && st == "alive"))
}

fn join(s: &TestAgent, addrs: &[String]) -> serde_json::Value {
    let q: Vec<String> = addrs.iter().map(|a| format!("address={a}")).collect();
    let r = s.request("PUT", &format!("/v1/agent/join?{}", q.join("&")), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn three_servers_join_over_the_api_then_a_killed_one_fails_and_force_leave_removes_it() {
    let a = server("", &[]);
    let b = server("", &[]);
    let mut c = server("", &[]);
    let j = join(&a.agent, &[b.serf_addr(), c.serf_addr()]);
    assert_eq!(j["num_joined"], 2, "{j}");
    assert_eq!(j["error"], "");
    let names = [a.name.as_str(), b.name.as_str(), c.name.as_str()];
    for s in [&a, &b, &c] {
        wait_until(CONVERGE, &format!("{} lists 3 alive", s.name), || {
            all_alive(&s.agent, &names)
        });
    }
    // Serf's fields and a Nomad server's tags.
    let m = a.agent.get_json("/v1/agent/members");
    assert_eq!(m["ServerName"], format!("server-{}", a.agent.port));
    assert_eq!(m["ServerRegion"], "global");
    assert_eq!(m["ServerDC"], "dc1");
    let gb = m["Members"]
        .as_array()
        .expect("Members")
        .iter()
        .find(|m| m["Name"] == b.name.as_str())
        .expect("b listed")
        .clone();
    assert_eq!(gb["Addr"], "127.0.0.1");
    assert_eq!(gb["Port"], b.serf);
    assert_eq!(gb["Tags"]["role"], "nomad");
    assert_eq!(gb["Tags"]["region"], "global");
    assert_eq!(gb["Tags"]["dc"], "dc1");
    assert_eq!(gb["Tags"]["rpc_addr"], "127.0.0.1");
    assert_eq!(gb["Tags"]["vsn"], "1");
    assert_eq!(gb["Tags"]["raft_vsn"], "3");
    assert_eq!(gb["Tags"]["id"].as_str().map(str::len), Some(36));
    assert_eq!(gb["Tags"]["port"], b.agent.rpc_port.to_string());
    for (k, v) in [
        ("ProtocolMin", 1),
        ("ProtocolMax", 5),
        ("ProtocolCur", 2),
        ("DelegateMin", 2),
        ("DelegateMax", 5),
        ("DelegateCur", 4),
    ] {
        assert_eq!(gb[k], v, "{k}");
    }
    let me = a.agent.get_json("/v1/agent/self");
    assert_eq!(me["member"]["Name"], a.name.as_str());
    assert_eq!(me["member"]["Port"], a.serf);
    assert_eq!(me["stats"]["serf"]["members"], "3");
    assert_eq!(me["stats"]["serf"]["encrypted"], "false");

    // Garbage at a's serf port changes nothing: still three alive after a probe round.
    let noise = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..300u32 {
        let len = (i as usize * 37) % 1500 + 1;
        let d: Vec<u8> = (0..len).map(|k| (k as u32 * 31 + i * 7) as u8).collect();
        let _ = noise.send_to(&d, ("127.0.0.1", a.serf));
    }
    let _ = noise.send_to(&[0x6e, 1, 0xff, 0xff], ("127.0.0.1", a.serf));
    let after_noise = Instant::now() + Duration::from_secs(3);
    wait_until(CONVERGE, "membership undisturbed by garbage", || {
        Instant::now() > after_noise && all_alive(&a.agent, &names)
    });
    assert!(all_alive(&b.agent, &names));
    let metrics = a.agent.get_json("/v1/metrics");
    let dropped = metrics["Counters"]
        .as_array()
        .expect("Counters")
        .iter()
        .find(|c| c["Name"] == "nomad.nomadlet.gossip.dropped")
        .map(|c| c["Count"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    // (The kernel may drop some of a burst before the thread reads them.)
    assert!(dropped >= 100, "dropped {dropped}: {metrics}");

    // kill -9: the others see it fail.
    let gc = c.name.clone();
    c.agent.kill9();
    for s in [&a, &b] {
        wait_until(CONVERGE, &format!("{} sees c failed", s.name), || {
            status_of(&s.agent, &gc).as_deref() == Some("failed")
        });
    }
    // Restarted on the same data dir and ports (no join configured): the others reach it
    // again, and its new generation wins over the old identity.
    c.agent.restart_after_stop();
    for s in [&a, &b, &c] {
        wait_until(CONVERGE, &format!("{} sees c back", s.name), || {
            all_alive(&s.agent, &names)
        });
    }
    c.agent.kill9();
    for s in [&a, &b] {
        wait_until(CONVERGE, &format!("{} sees c failed again", s.name), || {
            status_of(&s.agent, &gc).as_deref() == Some("failed")
        });
    }
    // force-leave: failed → left here and on b (passed on); prune erases it.
    let leave = |node: &str, prune: &str| {
        a.agent.request(
            "PUT",
            &format!("/v1/agent/force-leave?node={node}{prune}"),
            &[],
            b"",
        )
    };
    let r = leave(&gc, "");
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    assert_eq!(status_of(&a.agent, &gc).as_deref(), Some("left"));
    wait_until(CONVERGE, "b sees c left", || {
        status_of(&b.agent, &gc).as_deref() == Some("left")
    });
    let r = leave(&gc, "&prune=true");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status_of(&a.agent, &gc), None);
    assert_eq!(members(&a.agent).len(), 2);
    // An alive member is not forced out (it would refute), and the local agent refuses.
    let r = leave(&b.name, "");
    assert_eq!(r.status, 200);
    assert_eq!(status_of(&a.agent, &b.name).as_deref(), Some("alive"));
    let r = leave(&a.name, "");
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "cannot force-leave the local agent")
    );
}

#[test]
fn retry_join_forms_the_cluster_and_a_stopped_server_fails_then_comes_back() {
    // Every server names the other two; the first attempts may find them not yet started.
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let mut servers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let others: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, p)| format!("\"127.0.0.1:{p}\""))
            .collect();
        servers.push(server_on(
            *port,
            &format!(
                "server {{\n  server_join {{\n    retry_join = [{}]\n    retry_interval = \"1s\"\n  }}\n}}\n",
                others.join(", ")
            ),
        ));
    }
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    let full: Vec<&str> = names.iter().map(String::as_str).collect();
    for s in &servers {
        wait_until(CONVERGE, "retry_join formed the cluster", || {
            all_alive(&s.agent, &full)
        });
    }
    // A partition of one: SIGSTOP → failed on the others; SIGCONT → alive again.
    let pid = servers[2].agent.pid() as i32;
    kill(pid, libc::SIGSTOP);
    let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for s in &servers[..2] {
            wait_until(CONVERGE, "the stopped server is failed", || {
                status_of(&s.agent, full[2]).as_deref() == Some("failed")
            });
        }
    }));
    kill(pid, libc::SIGCONT);
    if let Err(p) = resumed {
        std::panic::resume_unwind(p);
    }
    for s in &servers {
        wait_until(CONVERGE, "the resumed server is alive everywhere", || {
            all_alive(&s.agent, &full)
        });
    }
}

#[test]
fn a_server_with_another_gossip_key_never_joins_and_bad_keys_are_refused_at_start() {
    let key = "\"c2VjcmV0LWtleS0xNi1ieQ==\""; // 16 bytes
    let other = "\"b3RoZXIta2V5LTE2LWJ5dA==\""; // 16 bytes, another key
    let a = server(&format!("server {{ encrypt = {key} }}"), &[]);
    let b = server(&format!("server {{ encrypt = {key} }}"), &[]);
    let c = server(&format!("server {{ encrypt = {other} }}"), &[]);
    let d = server("", &[]);
    let pair = [a.name.as_str(), b.name.as_str()];
    let j = join(&a.agent, &[b.serf_addr()]);
    assert_eq!(j["num_joined"], 1, "{j}");
    wait_until(CONVERGE, "a and b gossip under their key", || {
        all_alive(&a.agent, &pair) && all_alive(&b.agent, &pair)
    });
    // Another key, and no key: each join ends at its deadline with nobody answering.
    for stranger in [&c, &d] {
        let started = Instant::now();
        let j = join(&stranger.agent, &[a.serf_addr()]);
        assert_eq!(j["num_joined"], 0, "{j}");
        assert!(
            j["error"]
                .as_str()
                .unwrap_or_default()
                .contains("Failed to join"),
            "{j}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "one deadline");
        assert_eq!(members(&stranger.agent).len(), 1);
    }
    // The keyed servers never listed the strangers (their datagrams were dropped).
    let j = join(&a.agent, &[c.serf_addr(), d.serf_addr()]);
    assert_eq!(j["num_joined"], 0, "{j}");
    assert!(all_alive(&a.agent, &pair));
    assert!(all_alive(&b.agent, &pair));

    // A key that is not 16, 24 or 32 bytes stops the agent at config load.
    let dir = temp_dir("gossip-badkey");
    let cfg = dir.with_extension("hcl");
    std::fs::write(
        &cfg,
        "server {\n  enabled = true\n  encrypt = \"c2hvcnQ=\"\n}\n",
    )
    .expect("cfg");
    let out = std::process::Command::new(bin())
        .args(["agent", "-dev", "-data-dir"])
        .arg(&dir)
        .args(["-config", cfg.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the gossip key must be 16, 24 or 32 bytes, got 5"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn join_and_force_leave_need_agent_write_under_acls() {
    let a = server("", &["-acl-enabled"]);
    let b = server("", &[]);
    let path = format!("/v1/agent/join?address={}", b.serf_addr());
    let r = a.agent.request("PUT", &path, &[], b"");
    assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    let r = a
        .agent
        .request("PUT", "/v1/agent/force-leave?node=x.global", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    let r = a.agent.request("POST", "/v1/acl/bootstrap", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let mgmt = r.json()["SecretID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = a
        .agent
        .request("PUT", &path, &[("X-Nomad-Token", &mgmt)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["num_joined"], 1, "{}", r.text());
    wait_until(CONVERGE, "b lists a", || {
        all_alive(&b.agent, &[a.name.as_str(), b.name.as_str()])
    });
}

#[test]
fn a_client_only_agent_asks_its_server_for_members_and_refuses_join() {
    let s = server("", &[]);
    let c = TestAgent::client(&[&s.agent.rpc_addr()], "", &[]);
    let m = c.get_json("/v1/agent/members");
    assert_eq!(m["ServerName"], format!("server-{}", s.agent.port), "{m}");
    assert_eq!(m["Members"][0]["Name"], s.name.as_str());
    for path in [
        format!("/v1/agent/join?address={}", s.serf_addr()),
        format!("/v1/agent/force-leave?node={}", s.name),
    ] {
        let r = c.request("PUT", &path, &[], b"");
        assert_eq!(
            (r.status, r.text().as_str()),
            (501, "Invalid method"),
            "{path}"
        );
    }
    // With no server answering: the dial error, as an RPC error (500). (Setting the client's
    // server list to a dead address is not enough: the live server's next heartbeat reply
    // would hand it the real list back.)
    drop(s);
    let mut last = (0, String::new());
    wait_until(
        Duration::from_secs(10),
        "members to fail without a server",
        || {
            let r = c.get("/v1/agent/members");
            last = (r.status, r.text());
            r.status == 500
        },
    );
    assert!(last.1.starts_with("rpc error: "), "{}", last.1);
}

#[test]
fn a_server_that_leaves_on_terminate_shows_left_not_failed() {
    let a = server("", &[]);
    let mut b = server("leave_on_terminate = true", &[]);
    let j = join(&a.agent, &[b.serf_addr()]);
    assert_eq!(j["num_joined"], 1, "{j}");
    wait_until(CONVERGE, "a lists b alive", || {
        all_alive(&a.agent, &[a.name.as_str(), b.name.as_str()])
    });
    let st = b.agent.stop();
    assert!(st.success(), "{st}");
    wait_until(CONVERGE, "a sees b left", || {
        status_of(&a.agent, &b.name).as_deref() == Some("left")
    });
}
