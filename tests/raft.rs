//! The server state replicated with Raft, as separate server processes on loopback (each its
//! own HTTP, RPC and serf ports and data dir, `bootstrap_expect` and `retry_join` to the
//! others): bootstrap through gossip and one leader; writes on the leader on every server;
//! kill -9 of the leader during a stream of writes (a new leader within 5 s, no acknowledged
//! write lost anywhere, never two leaders in one term); a SIGSTOPped leader steps down and
//! catches up after SIGCONT; five servers survive losing two.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a cluster may take to form (gossip join, bootstrap, first election).
const FORM: Duration = Duration::from_secs(30);
/// How long a write may take to show on every server.
const REPLICATE: Duration = Duration::from_secs(15);
/// The longest a failover may take (the bound).
const FAILOVER: Duration = Duration::from_secs(5);

/// Whether every eval of `job` on `a` has been processed (not `pending`): the leader's
/// scheduler took it.
fn evals_done(a: &TestAgent, job: &str) -> bool {
    let Some(r) = try_get(a, &format!("/v1/job/{job}/evaluations?stale")) else {
        return false;
    };
    let v = r.json();
    let Some(evals) = v.as_array().filter(|e| !e.is_empty()) else {
        return false;
    };
    evals.iter().all(|e| e["Status"] != "pending")
}

/// Polls every server's Raft state until stopped, recording who claimed leadership in
/// which term: two claimants of one term are a split brain.
struct LeaderWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<u64, BTreeSet<u16>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaderWatch {
    fn start(ports: Vec<u16>) -> LeaderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeMap<u64, BTreeSet<u16>>>> = Arc::new(Mutex::new(BTreeMap::new()));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                for &port in &ports {
                    if let Some((state, term)) = raft_state_on(port) {
                        if state == "Leader" {
                            seen2
                                .lock()
                                .expect("lock")
                                .entry(term)
                                .or_default()
                                .insert(port);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        LeaderWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stop polling; panics if some term had two leaders.
    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("watcher");
        }
        let seen = self.seen.lock().expect("lock");
        assert!(!seen.is_empty(), "the watcher saw a leader");
        for (term, leaders) in seen.iter() {
            assert_eq!(leaders.len(), 1, "two leaders in term {term}: {leaders:?}");
        }
    }
}

#[test]
fn three_servers_bootstrap_elect_one_leader_and_replicate_writes_to_every_server() {
    let servers = cluster(3);
    let all = [0, 1, 2];
    let leader = wait_leader(&servers, &all, FORM);
    // Exactly one server says it leads; the others follow it.
    let states: Vec<String> = servers
        .iter()
        .map(|s| raft_state(s).expect("raft stats").0)
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "Leader").count(),
        1,
        "{states:?}"
    );
    // Every server is in the configuration of three (a server that bootstrapped later than
    // the others gets it from the leader).
    for s in &servers {
        wait_until(FORM, "three peers on every server", || {
            try_get(s, "/v1/status/peers?stale")
                .is_some_and(|r| r.status == 200 && r.json().as_array().map(Vec::len) == Some(3))
        });
    }
    let mut want = BTreeSet::new();
    for i in 0..20 {
        let id = format!("job-{i}");
        assert!(
            register_job(&servers[leader], &id),
            "write {id} on the leader"
        );
        want.insert(id);
    }
    for s in &servers {
        wait_until(REPLICATE, "every write on every server", || {
            has_jobs(s, &want)
        });
    }
    // A follower refuses the write itself (forwarding is another layer's).
    let follower = (leader + 1) % 3;
    let before = jobs_on(&servers[follower]).expect("jobs");
    if !register_job(&servers[follower], "on-a-follower") {
        assert_eq!(jobs_on(&servers[follower]).expect("jobs"), before);
    }
}

#[test]
fn kill_9_of_the_leader_under_writes_elects_a_new_one_within_5s_and_loses_no_acknowledged_write() {
    let mut servers = cluster(3);
    let all = [0, 1, 2];
    let old = wait_leader(&servers, &all, FORM);
    let watch = LeaderWatch::start(servers.iter().map(|s| s.port).collect());
    let mut acked = BTreeSet::new();
    for i in 0..30 {
        let id = format!("before-{i}");
        if register_job(&servers[old], &id) {
            acked.insert(id);
        }
    }
    assert!(acked.len() >= 25, "writes before the kill: {}", acked.len());
    servers[old].kill9();
    let killed = Instant::now();
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    // Writes go on against whichever survivor leads; the first one acknowledged marks the
    // failover.
    let mut first_ack = None;
    let mut n = 0;
    let deadline = killed + Duration::from_secs(30);
    while acked.len() < 60 && Instant::now() < deadline {
        let Some(l) = agreed_leader(&servers, &live) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        n += 1;
        let id = format!("after-{n}");
        if register_job(&servers[l], &id) {
            first_ack.get_or_insert_with(|| killed.elapsed());
            acked.insert(id);
        }
    }
    let failover = first_ack.expect("a write acknowledged after the kill");
    assert!(
        failover <= FAILOVER,
        "first write accepted {failover:?} after the kill"
    );
    let last = format!("after-{n}");
    for &i in &live {
        wait_until(REPLICATE, "every acknowledged write on a survivor", || {
            has_jobs(&servers[i], &acked)
        });
        // The new leader's duties started: its scheduler took the evals made after the kill.
        if acked.contains(&last) {
            wait_until(REPLICATE, "the new leader schedules", || {
                evals_done(&servers[i], &last)
            });
        }
    }
    servers[old].restart_after_stop();
    wait_until(REPLICATE, "the old leader caught up", || {
        has_jobs(&servers[old], &acked)
    });
    wait_leader(&servers, &all, FORM);
    watch.finish();
}

fn wait_peers(servers: &[TestAgent], live: &[usize], n: usize) {
    for &i in live {
        wait_until(
            FORM,
            "the configuration's size on every live server",
            || {
                try_get(&servers[i], "/v1/status/peers?stale").is_some_and(|r| {
                    r.status == 200 && r.json().as_array().map(Vec::len) == Some(n)
                })
            },
        );
    }
}

#[test]
fn operator_endpoints_show_the_configuration_and_remove_a_dead_server() {
    let mut servers = cluster(3);
    let all = [0, 1, 2];
    let leader = wait_leader(&servers, &all, FORM);
    wait_peers(&servers, &all, 3);
    let ids: Vec<String> = servers.iter().map(TestAgent::node_id).collect();
    let conf = raft_configuration(&servers[leader]).expect("configuration");
    assert_eq!(conf.len(), 3, "{conf:?}");
    for c in &conf {
        let i = ids
            .iter()
            .position(|x| *x == c.id)
            .expect("a known server ID");
        assert_eq!(c.address, servers[i].rpc_addr());
        assert_eq!(c.leader, i == leader, "{conf:?}");
        assert!(c.voter);
    }
    let r = servers[leader].request("PUT", "/v1/operator/raft/configuration", &[], b"");
    assert_eq!(r.status, 405);
    assert!(r.body.is_empty(), "{}", r.text());
    let r = servers[leader].get("/v1/operator/raft/peer?id=x");
    assert_eq!((r.status, r.text().as_str()), (404, "Invalid method"));
    let r = servers[leader].request("DELETE", "/v1/operator/raft/peer", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Must specify the peer's ID to remove")
    );
    let r = servers[leader].request(
        "DELETE",
        "/v1/operator/raft/peer?address=127.0.0.1:4647",
        &[],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "Removing a peer by address is not supported in the current raft protocol version"
    );
    let r = servers[leader].request(
        "DELETE",
        "/v1/operator/raft/peer?id=00000001-0000-0000-0000-000000000000",
        &[],
        b"",
    );
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("was not found in the Raft configuration"));
    // A dead follower removed by ID: the two left keep writing.
    let dead = (leader + 1) % 3;
    servers[dead].kill9();
    let r = servers[leader].request(
        "DELETE",
        &format!("/v1/operator/raft/peer?id={}", ids[dead]),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != dead).collect();
    wait_peers(&servers, &live, 2);
    let conf = raft_configuration(&servers[leader]).expect("configuration");
    assert!(!conf.iter().any(|c| c.id == ids[dead]), "{conf:?}");
    assert!(register_job(&servers[leader], "after-removal"));
    let want: BTreeSet<String> = ["after-removal".to_string()].into();
    for &i in &live {
        wait_until(REPLICATE, "the write on both", || {
            has_jobs(&servers[i], &want)
        });
    }
}

#[test]
fn a_sigstopped_leader_is_replaced_and_after_sigcont_steps_down_and_catches_up() {
    let servers = cluster(3);
    let all = [0, 1, 2];
    let old = wait_leader(&servers, &all, FORM);
    wait_peers(&servers, &all, 3);
    let watch = LeaderWatch::start(servers.iter().map(|s| s.port).collect());
    let mut acked = BTreeSet::new();
    for i in 0..10 {
        let id = format!("before-{i}");
        assert!(register_job(&servers[old], &id));
        acked.insert(id);
    }
    let (_, old_term) = raft_state(&servers[old]).expect("state");
    let pid = servers[old].pid() as i32;
    kill(pid, libc::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
        // The majority elects among itself and keeps taking writes.
        let new = wait_leader(&servers, &live, FAILOVER + Duration::from_secs(5));
        for i in 0..10 {
            let id = format!("during-{i}");
            assert!(
                register_job(&servers[new], &id),
                "write {id} on the majority"
            );
            acked.insert(id);
        }
        new
    }));
    kill(pid, libc::SIGCONT);
    let new = match result {
        Ok(n) => n,
        Err(p) => std::panic::resume_unwind(p),
    };
    // The old leader hears of the newer term and steps down, then catches up from the log.
    wait_until(FORM, "the old leader steps down", || {
        raft_state(&servers[old]).is_some_and(|(s, t)| s != "Leader" && t > old_term)
    });
    wait_until(REPLICATE, "the old leader caught up", || {
        has_jobs(&servers[old], &acked)
    });
    assert_eq!(wait_leader(&servers, &all, FORM), new);
    watch.finish();
}

#[test]
fn five_servers_keep_working_after_losing_two() {
    let mut servers = cluster(5);
    let all = [0, 1, 2, 3, 4];
    let leader = wait_leader(&servers, &all, FORM);
    wait_peers(&servers, &all, 5);
    let mut acked = BTreeSet::new();
    for i in 0..5 {
        let id = format!("five-{i}");
        assert!(register_job(&servers[leader], &id));
        acked.insert(id);
    }
    // The leader and one follower die.
    let other = (leader + 1) % 5;
    servers[leader].kill9();
    servers[other].kill9();
    let live: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| i != leader && i != other)
        .collect();
    let new = wait_leader(&servers, &live, FORM);
    for i in 0..5 {
        let id = format!("three-{i}");
        assert!(
            register_job(&servers[new], &id),
            "write {id} on three of five"
        );
        acked.insert(id);
    }
    for &i in &live {
        wait_until(REPLICATE, "every write on the three", || {
            has_jobs(&servers[i], &acked)
        });
    }
}

#[test]
fn autopilot_removes_a_dead_server_and_the_leader_adds_it_back_when_it_returns() {
    let mut servers = cluster(3);
    let all = [0, 1, 2];
    let leader = wait_leader(&servers, &all, FORM);
    wait_peers(&servers, &all, 3);
    let dead = (leader + 2) % 3;
    servers[dead].kill9();
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != dead).collect();
    // Gossip marks it failed, autopilot removes it (a majority of the rest is alive).
    wait_peers(&servers, &live, 2);
    assert!(register_job(&servers[leader], "while-removed"));
    servers[dead].restart_after_stop();
    // Alive again and one of ours: the leader adds it back, and it catches up.
    wait_peers(&servers, &all, 3);
    let want: BTreeSet<String> = ["while-removed".to_string()].into();
    wait_until(REPLICATE, "the returned server caught up", || {
        has_jobs(&servers[dead], &want)
    });
}

#[test]
fn a_plain_single_server_store_becomes_the_raft_base_and_keeps_its_jobs() {
    // A `-dev` agent keeps the plain command log.
    let dir = temp_dir("raft-migrate");
    let mut dev = TestAgent::start_in(&dir, &[]);
    for i in 0..5 {
        assert!(register_job(&dev, &format!("plain-{i}")));
    }
    let index: u64 = dev
        .get("/v1/jobs")
        .header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("index");
    assert_eq!(dev.stop().code(), Some(0));
    // The same data dir as a server with an RPC port: replicated from here on.
    let mut server = TestAgent::cluster_agent(
        "server",
        &dir,
        "server {\n  enabled = true\n  bootstrap_expect = 1\n}\n",
        "",
        &[],
    );
    let mut want: BTreeSet<String> = (0..5).map(|i| format!("plain-{i}")).collect();
    assert!(has_jobs(&server, &want), "{:?}", jobs_on(&server));
    assert_eq!(raft_state(&server).expect("raft").0, "Leader");
    assert!(register_job(&server, "raft-1"));
    want.insert("raft-1".into());
    let after: u64 = server
        .get("/v1/jobs")
        .header("X-Nomad-Index")
        .and_then(|v| v.parse().ok())
        .expect("index");
    assert!(after > index, "indexes keep growing: {after} > {index}");
    server.kill9();
    server.restart_after_stop();
    wait_until(REPLICATE, "everything back after kill -9", || {
        has_jobs(&server, &want)
    });
}

#[test]
fn the_raft_transport_refuses_garbage_and_other_methods_and_keeps_serving() {
    let server = TestAgent::server("", &[]);
    for body in [
        &b"\x00\x00\x00\x09abc"[..],
        &b"\xff\xff\xff\xff"[..],
        &b"\x00\x00\x00\x03\xff\xff\xff"[..],
    ] {
        let r = server.rpc_request("POST", "/v1/rpc/raft", &[], body);
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let r = server.rpc_request("GET", "/v1/rpc/raft", &[], b"");
    assert_eq!(r.status, 405);
    // An empty batch and messages for another server are taken and ignored.
    let r = server.rpc_request("POST", "/v1/rpc/raft", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(raft_state(&server).expect("raft").0, "Leader");
    assert!(register_job(&server, "still-serving"));
}

#[test]
fn a_leader_cut_off_from_its_majority_accepts_no_write_and_steps_down() {
    let mut servers = cluster(3);
    let all = [0, 1, 2];
    let leader = wait_leader(&servers, &all, FORM);
    wait_peers(&servers, &all, 3);
    assert!(register_job(&servers[leader], "with-quorum"));
    for i in all.iter().copied().filter(|&i| i != leader) {
        servers[i].kill9();
    }
    // Alone it cannot commit: the write is refused (check_quorum makes it step down), never
    // acknowledged.
    assert!(!register_job(&servers[leader], "without-quorum"));
    wait_until(FORM, "the lone leader steps down", || {
        raft_state(&servers[leader]).is_some_and(|(s, _)| s != "Leader")
    });
    for i in all.iter().copied().filter(|&i| i != leader) {
        servers[i].restart_after_stop();
    }
    let new = wait_leader(&servers, &all, FORM);
    assert!(register_job(&servers[new], "quorum-back"));
    let want: BTreeSet<String> = ["with-quorum", "quorum-back"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in &servers {
        wait_until(REPLICATE, "writes on every server", || has_jobs(s, &want));
    }
}

#[test]
fn a_leader_leaving_gracefully_leaves_the_configuration_and_the_rest_goes_on() {
    let mut servers = cluster_with(3, "leave_on_terminate = true", "");
    let all = [0, 1, 2];
    let leader = wait_leader(&servers, &all, FORM);
    wait_peers(&servers, &all, 3);
    assert!(servers[leader].stop().success());
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    wait_peers(&servers, &live, 2);
    let new = wait_leader(&servers, &live, FORM);
    assert!(register_job(&servers[new], "after-leave"));
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_from_a_snapshot_and_a_restart_keeps_everything() {
    let mut servers = cluster(3);
    let all = [0, 1, 2];
    let leader = wait_leader(&servers, &all, FORM);
    wait_peers(&servers, &all, 3);
    let behind = (leader + 1) % 3;
    servers[behind].kill9();
    /// Jobs each of 4 writers registers.
    const BULK_PER_WRITER: usize = 350;
    // More entries than a snapshot interval plus the trailing log (each job is a submit and
    // the scheduler's plan): the log the follower would need is compacted away.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let port = servers[leader].port;
            std::thread::spawn(move || {
                let mut ok = Vec::new();
                for i in 0..BULK_PER_WRITER {
                    let id = format!("bulk-{w}-{i}");
                    let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let req = build_request("PUT", "/v1/jobs", &[], &true_job(&id));
                    if matches!(exchange(s, &req), Ok(r) if r.status == 200) {
                        ok.push(id);
                    }
                }
                ok
            })
        })
        .collect();
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.join().expect("writer"));
    }
    assert_eq!(acked.len(), 4 * BULK_PER_WRITER, "every write acknowledged");
    servers[behind].restart_after_stop();
    wait_until(FORM, "the follower caught up", || {
        has_jobs(&servers[behind], &acked)
    });
    let from_snapshot = servers[behind].log().lines().any(|l| {
        l.split("installed a snapshot of the leader at index ")
            .nth(1)
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 1024)
    });
    let lines: Vec<String> = servers[behind]
        .log()
        .lines()
        .filter(|l| l.contains("raft"))
        .map(String::from)
        .collect();
    assert!(
        from_snapshot,
        "caught up from a snapshot past the compacted log: {lines:#?} {:?}",
        raft_state(&servers[leader])
    );
    // The leader restarts from its state snapshot and the log after it.
    servers[leader].kill9();
    servers[leader].restart_after_stop();
    let deadline = Instant::now() + 2 * FORM;
    while !has_jobs(&servers[leader], &acked) {
        assert!(
            Instant::now() < deadline,
            "the old leader has everything after its restart: {:?} {}",
            raft_state(&servers[leader]),
            servers[leader]
                .log()
                .lines()
                .filter(|l| !l.contains("placement failed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_leader(&servers, &all, FORM);
}

/// The commit index is not written on every change (only term, vote and entries must be
/// durable before an answer): kill -9 of every server right after acknowledged writes, then a
/// restart of all of them, keeps every acknowledged write (the log holds them; the new
/// leader commits them again) and the servers start on their stores without complaint.
#[test]
fn kill_9_of_every_server_right_after_acknowledged_writes_loses_none_of_them() {
    let mut servers = cluster(3);
    let all = [0, 1, 2];
    let leader = wait_leader(&servers, &all, FORM);
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let id = format!("crash-{i}");
        if register_job(&servers[leader], &id) {
            acked.insert(id);
        }
    }
    assert!(acked.len() >= 15, "writes acknowledged: {}", acked.len());
    for s in servers.iter_mut() {
        s.kill9();
    }
    for s in servers.iter_mut() {
        s.restart_after_stop();
    }
    wait_leader(&servers, &all, FORM);
    for s in &servers {
        wait_until(
            REPLICATE,
            "every acknowledged write after the restart",
            || has_jobs(s, &acked),
        );
    }
}

/// A lone Raft server (`bootstrap_expect = 1`) writes its state snapshot in steps whose
/// commits are not durable on their own (the next append's fsync makes them so) and leaves
/// the commit index out of appends: kill -9 lands at a different point of the snapshot
/// cycle each round (a few hundred more registers each time, ~1.3 log entries each, a
/// snapshot every 1 024 entries), and after each restart the server starts on its store and
/// holds every acknowledged register.
#[test]
fn kill_9_of_a_lone_raft_server_amid_snapshot_steps_loses_no_acknowledged_write() {
    let mut servers = cluster(1);
    wait_leader(&servers, &[0], FORM);
    let mut all_acked = BTreeSet::new();
    for round in 0..3usize {
        let (host, port) = (servers[0].host.clone(), servers[0].port);
        let acks = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (host, acks) = (host.clone(), acks.clone());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0.. {
                        let id = format!("lone-{round}-{w}-{i}");
                        if !register_job_at(&host, port, &id, Duration::from_secs(5)) {
                            break;
                        }
                        acked.push(id);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    acked
                })
            })
            .collect();
        let target = 500 + round * 230;
        wait_until(Duration::from_secs(120), "registers flowing", || {
            acks.load(Ordering::SeqCst) >= target
        });
        servers[0].kill9();
        for w in writers {
            all_acked.extend(w.join().expect("writer thread"));
        }
        servers[0].restart_after_stop();
        wait_leader(&servers, &[0], FORM);
        let mut missing = String::from("no job list");
        let deadline = Instant::now() + REPLICATE * WAIT_SLACK;
        loop {
            if let Some(have) = jobs_on(&servers[0]) {
                let lost: Vec<&String> = all_acked.difference(&have).collect();
                if lost.is_empty() {
                    break;
                }
                missing = format!(
                    "{} of {}, e.g. {:?}",
                    lost.len(),
                    all_acked.len(),
                    &lost[..lost.len().min(5)]
                );
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: acknowledged registers missing after the restart: {missing}\n{}",
                servers[0].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
