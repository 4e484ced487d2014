//! The operator side of a Raft cluster on loopback (ref §5.8, §6): a new leader's failover
//! heartbeat TTL, autopilot's configuration and health, leadership transfer, servers that
//! join as non-voters first, `bootstrap_expect = 0`, and errors relayed through a hop.

mod common;

use std::time::{Duration, Instant};

use common::{free_udp_port, wait_leader, wait_until, TestAgent};

/// How long fresh servers get to gossip, bootstrap and elect a leader.
const FORM: Duration = Duration::from_secs(30);

/// `n` servers expecting `n`, joined through each other's serf ports, with `server_keys`
/// added to their `server` block.
fn servers_with(n: usize, server_keys: &str) -> Vec<TestAgent> {
    let serfs: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    (0..n)
        .map(|i| {
            let others: Vec<String> = serfs
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i)
                .map(|(_, p)| format!("\"127.0.0.1:{p}\""))
                .collect();
            TestAgent::server(
                &format!(
                    "ports {{\n  serf = {}\n}}\nserver {{\n  bootstrap_expect = {n}\n{server_keys}\n  server_join {{\n    retry_join = [{}]\n    retry_interval = \"1s\"\n  }}\n}}\n",
                    serfs[i],
                    others.join(", ")
                ),
                &[],
            )
        })
        .collect()
}

fn node_status(server: &TestAgent, id: &str) -> Option<String> {
    let r = common::try_get(server, &format!("/v1/node/{id}"))?;
    (r.status == 200).then(|| r.json()["Status"].as_str().unwrap_or_default().to_string())
}

/// Ref §2.3: a new leader arms every node that is not down with the flat
/// `failover_heartbeat_ttl`, so a client that was heartbeating the old leader is not marked
/// down after the normal (here 1–2 s + 1 s) TTL; once the failover TTL passes without a
/// heartbeat it is.
#[test]
fn a_new_leader_gives_every_node_the_failover_ttl_before_marking_it_down() {
    let failover = Duration::from_secs(8);
    let mut servers = servers_with(
        3,
        "  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace = \"1s\"\n  failover_heartbeat_ttl = \"8s\"",
    );
    let leader = wait_leader(&servers, &[0, 1, 2], FORM);
    let addrs: Vec<String> = servers.iter().map(|s| s.rpc_addr()).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut client = TestAgent::client(&addrs, "", &[]);
    let mut node = String::new();
    wait_until(FORM, "the client's node ready", || {
        node = client.node_id();
        !node.is_empty() && node_status(&servers[leader], &node).as_deref() == Some("ready")
    });
    // The node and the leader die together: only the failover TTL is left for the node.
    client.kill9();
    servers[leader].kill9();
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new = wait_leader(&servers, &live, FORM);
    let elected = Instant::now();
    // Well past the normal TTL + grace (at most 3 s), well short of the failover TTL.
    let mut last = String::new();
    while elected.elapsed() < Duration::from_secs(5) {
        if let Some(s) = node_status(&servers[new], &node) {
            last = s;
            assert_eq!(
                last,
                "ready",
                "marked {last} {:?} after the new leader took over",
                elected.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last, "ready");
    wait_until(failover * 2, "the silent node marked down", || {
        node_status(&servers[new], &node).as_deref() == Some("down")
    });
}
