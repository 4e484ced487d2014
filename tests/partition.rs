//! Raft clusters under real network partitions: every agent on its own host of a network the
//! test builds from network namespaces (`common/netns.rs`), a host cut off by downing its
//! link (packets silently lost, TCP and UDP, both directions). A leader cut off alone accepts
//! no write while the majority elects a new one and keeps scheduling, and on heal it steps
//! down and catches up; job writes and reads stay linearizable while partitions come and go
//! and a leader is killed; a kill -9 of the leader under a stream of job registers and client
//! metadata writes loses no acknowledged write and places no allocation twice; five servers
//! split two against three go on on the three's side only; a snapshot of a three-server
//! cluster restores into a fresh one with the same jobs and nodes.

mod common;
#[path = "common/linearize.rs"]
mod linearize;

use common::netns::{self, Net};
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a cluster may take to form (gossip join, bootstrap, first election).
const FORM: Duration = Duration::from_secs(30);
/// How long a write may take to show on every server, or a node to register.
const REPLICATE: Duration = Duration::from_secs(15);
/// The bound on electing a new leader after the old one died (times WAIT_SLACK for
/// the assertion on a loaded machine; the figure itself is printed).
const FAILOVER: Duration = Duration::from_secs(5);
/// A request's deadline (a cut-off server never answers).
const REQUEST: Duration = Duration::from_secs(5);

/// Server hosts (127.0.1.1-3).
const SERVERS: [u8; 3] = [1, 2, 3];

/// One request to `host:port` with a deadline: the status, or the error.
fn send(host: &str, port: u16, method: &str, path: &str, body: &[u8]) -> Result<Response, String> {
    let addr: std::net::SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let s = std::net::TcpStream::connect_timeout(&addr, REQUEST).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(REQUEST)).ok();
    s.set_write_timeout(Some(REQUEST)).ok();
    let req = build_request(method, path, &[("Content-Type", "application/json")], body);
    exchange(s, &req).map_err(|e| e.to_string())
}

/// Whether `server` shows node `id` ready (its own state).
fn node_ready(server: &TestAgent, id: &str) -> bool {
    try_get(server, &format!("/v1/node/{id}?stale"))
        .is_some_and(|r| r.status == 200 && r.json()["Status"] == "ready")
}

/// Allocations per job on `server` (its own state): job ID → alloc IDs.
fn allocs_on(server: &TestAgent) -> Option<BTreeMap<String, Vec<String>>> {
    let r = try_get(server, "/v1/allocations?stale")?;
    if r.status != 200 {
        return None;
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in r.json().as_array()? {
        out.entry(a["JobID"].as_str()?.to_string())
            .or_default()
            .push(a["ID"].as_str()?.to_string());
    }
    Some(out)
}

/// Sets its flag when dropped: the threads of a `std::thread::scope` that loop until a flag
/// is set end when the test body panics (the scope waits for them before it unwinds).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Records, per term, which servers claimed leadership. Each server is polled from inside its
/// own host, so a cut-off leader is seen too: two claimants of one term are a split brain.
struct LeaderWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<u64, BTreeSet<String>>>>,
}

impl LeaderWatch {
    fn start<'s, 'e: 's>(
        scope: &'s std::thread::Scope<'s, 'e>,
        net: &'e Net,
        servers: &[&TestAgent],
    ) -> LeaderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeMap<u64, BTreeSet<String>>>> = Arc::default();
        for a in servers {
            let (stop, seen) = (stop.clone(), seen.clone());
            let (host, port) = (a.host.clone(), a.port);
            let i: u8 = host
                .rsplit('.')
                .next()
                .and_then(|h| h.parse().ok())
                .expect("host");
            scope.spawn(move || {
                net.within(i, || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Some((state, term)) = raft_state_at(&host, port) {
                            if state == "Leader" {
                                let mut seen = seen.lock().expect("lock");
                                seen.entry(term).or_default().insert(host.clone());
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            });
        }
        LeaderWatch { stop, seen }
    }

    /// Stop polling (the threads end with their scope); panics if some term had two
    /// leaders. Returns the terms seen with their leader.
    fn finish(&self) -> BTreeMap<u64, BTreeSet<String>> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.seen.lock().expect("lock").clone();
        assert!(!seen.is_empty(), "the watcher saw a leader");
        for (term, leaders) in &seen {
            assert_eq!(leaders.len(), 1, "two leaders in term {term}: {leaders:?}");
        }
        seen
    }
}

impl Drop for LeaderWatch {
    /// The polling threads end with the test, even one that panicked.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The host number (`127.0.1.<n>`) of an agent.
fn host_no(a: &TestAgent) -> u8 {
    a.host
        .rsplit('.')
        .next()
        .and_then(|h| h.parse().ok())
        .expect("host")
}

/// Whether host `from` reaches `to_addr:port` over TCP, and a UDP datagram from `from` to
/// the socket `udp` (on `to`) arrives, each within a short deadline.
fn reaches(
    net: &Net,
    from: u8,
    to_addr: &str,
    port: u16,
    udp: &std::net::UdpSocket,
) -> (bool, bool) {
    let target: std::net::SocketAddr = format!("{to_addr}:{port}").parse().expect("addr");
    let udp_to = udp.local_addr().expect("udp addr");
    net.within(from, || {
        let tcp = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)).is_ok();
        let tx = std::net::UdpSocket::bind(format!("{}:0", netns::host_addr(from))).expect("udp");
        tx.send_to(b"ping", udp_to).ok();
        let mut buf = [0u8; 8];
        udp.set_read_timeout(Some(Duration::from_millis(300))).ok();
        let got = udp.recv_from(&mut buf).is_ok_and(|(n, src)| {
            &buf[..n] == b"ping" && src.ip().to_string() == netns::host_addr(from)
        });
        (tcp, got)
    })
}

#[test]
fn a_cut_host_is_unreachable_both_ways_over_tcp_and_udp_until_healed() {
    netns::run(2, |net| {
        // A listener and a UDP socket on each host, made inside it.
        let (l1, u1) = net.within(1, || {
            (
                std::net::TcpListener::bind("127.0.1.1:0").expect("listen"),
                std::net::UdpSocket::bind("127.0.1.1:0").expect("udp"),
            )
        });
        let (l2, u2) = net.within(2, || {
            (
                std::net::TcpListener::bind("127.0.1.2:0").expect("listen"),
                std::net::UdpSocket::bind("127.0.1.2:0").expect("udp"),
            )
        });
        let (p1, p2) = (
            l1.local_addr().expect("addr").port(),
            l2.local_addr().expect("addr").port(),
        );
        assert_eq!(reaches(net, 2, "127.0.1.1", p1, &u1), (true, true));
        assert_eq!(reaches(net, 1, "127.0.1.2", p2, &u2), (true, true));
        // The test itself (on the switch) reaches both.
        assert!(std::net::TcpStream::connect(("127.0.1.1", p1)).is_ok());
        net.cut(1);
        assert_eq!(
            reaches(net, 2, "127.0.1.1", p1, &u1),
            (false, false),
            "into the cut host"
        );
        assert_eq!(
            reaches(net, 1, "127.0.1.2", p2, &u2),
            (false, false),
            "out of it"
        );
        let from_switch = std::net::TcpStream::connect_timeout(
            &format!("127.0.1.1:{p1}").parse().expect("addr"),
            Duration::from_millis(300),
        );
        assert!(from_switch.is_err(), "the switch reached a cut host");
        // Inside the cut host its own address still answers (a write to a cut-off leader).
        assert_eq!(reaches(net, 1, "127.0.1.1", p1, &u1), (true, true));
        net.heal(1);
        wait_until(
            Duration::from_secs(5),
            "both ways again after the heal",
            || {
                reaches(net, 2, "127.0.1.1", p1, &u1) == (true, true)
                    && reaches(net, 1, "127.0.1.2", p2, &u2) == (true, true)
            },
        );
    });
}

#[test]
fn a_leader_cut_off_alone_accepts_no_write_the_majority_schedules_and_the_old_leader_catches_up() {
    netns::run(4, |net| {
        let servers = net.cluster(&SERVERS, "");
        let all = [0, 1, 2];
        let old = wait_leader(&servers, &all, FORM);
        let rpcs: Vec<String> = servers.iter().map(TestAgent::rpc_addr).collect();
        let client = net.client(4, &rpcs, "");
        let node = client.node_id();
        std::thread::scope(|s| {
            let refs: Vec<&TestAgent> = servers.iter().collect();
            let watch = LeaderWatch::start(s, net, &refs);
            wait_until(REPLICATE, "the client's node ready", || {
                node_ready(&servers[old], &node)
            });
            let mut acked = BTreeSet::new();
            for i in 0..5 {
                let id = format!("before-{i}");
                assert!(register_job(&servers[old], &id), "write {id} on the leader");
                acked.insert(id);
            }
            for srv in &servers {
                wait_until(REPLICATE, "the first writes on every server", || {
                    has_jobs(srv, &acked)
                });
            }
            let old_term = raft_state(&servers[old]).expect("raft state").1;

            // The leader alone on its side. Writes sent to it from inside its own host.
            let old_host = host_no(&servers[old]);
            net.cut(old_host);
            assert!(
                try_get(&servers[old], "/v1/agent/self").is_none(),
                "the cut-off leader still answers across the cut"
            );
            let cut_stop = Arc::new(AtomicBool::new(false));
            let _ends_minority = StopOnDrop(&cut_stop);
            let minority = {
                let stop = cut_stop.clone();
                let (host, port) = (servers[old].host.clone(), servers[old].port);
                s.spawn(move || {
                    net.within(old_host, || {
                        let mut answers = Vec::new();
                        let mut n = 0;
                        while !stop.load(Ordering::SeqCst) {
                            n += 1;
                            let id = format!("minority-{n}");
                            let sent = Instant::now();
                            let r = send(&host, port, "PUT", "/v1/jobs", &true_job(&id));
                            // Only answers that came while the cut lasted count.
                            if !stop.load(Ordering::SeqCst) {
                                let took = sent.elapsed();
                                answers.push((id, r.map(|r| (r.status, r.text(), took))));
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        answers
                    })
                })
            };

            // The majority elects a new leader in a later term and goes on scheduling.
            let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
            let new = wait_leader(&servers, &live, FORM);
            let new_term = raft_state(&servers[new]).expect("raft state").1;
            assert!(new_term > old_term, "term {old_term} → {new_term}");
            let mut during = BTreeSet::new();
            let mut n = 0;
            wait_until(REPLICATE, "the majority takes writes", || {
                n += 1;
                let id = format!("during-{n}");
                if register_job(&servers[new], &id) {
                    during.insert(id);
                }
                during.len() >= 5
            });
            acked.extend(during.iter().cloned());
            let last = during.last().expect("a write").clone();
            // Placed and run on the client (which fails over from the cut-off server).
            wait_until(
                REPLICATE * 2,
                "the majority's job ran on the client",
                || {
                    try_get(&servers[new], &format!("/v1/job/{last}/allocations?stale"))
                        .is_some_and(|r| {
                            r.status == 200
                                && r.json().as_array().is_some_and(|a| {
                                    a.len() == 1
                                        && a[0]["NodeID"] == node.as_str()
                                        && a[0]["ClientStatus"] == "complete"
                                })
                        })
                },
            );
            // The minority leader took no write in the meantime (its own state).
            let minority_jobs = net.within(old_host, || jobs_on(&servers[old]));
            if let Some(jobs) = minority_jobs {
                assert!(
                    !jobs.iter().any(|j| j.starts_with("during-")),
                    "the cut-off server saw the majority's writes: {jobs:?}"
                );
            }

            // Heal: the old leader steps down, in a later term, and catches up from the log.
            cut_stop.store(true, Ordering::SeqCst);
            net.heal(old_host);
            let answers = minority.join().expect("minority writer");
            assert!(
                !answers.is_empty(),
                "writes were sent to the cut-off leader"
            );
            for (id, a) in &answers {
                if let Ok((status, text, _)) = a {
                    assert_ne!(*status, 200, "{id} acknowledged by a minority: {text}");
                }
            }
            eprintln!(
                "minority writes: {}",
                answers
                    .iter()
                    .map(|(id, a)| format!("{id}: {a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            wait_until(REPLICATE, "the old leader caught up", || {
                has_jobs(&servers[old], &acked)
            });
            let leader = wait_leader(&servers, &all, FORM);
            let (state, term) = raft_state(&servers[old]).expect("raft state");
            if leader != old {
                assert_eq!(state, "Follower");
            }
            assert!(
                term >= new_term,
                "the old leader's term {term} < {new_term}"
            );
            // Every server holds the same jobs, and none of the minority's writes that went
            // unacknowledged then (they were never committed: a later leader's log won).
            let want = jobs_on(&servers[leader]).expect("jobs");
            for srv in &servers {
                wait_until(REPLICATE, "the same jobs everywhere", || {
                    jobs_on(srv).is_some_and(|j| j == want)
                });
            }
            let terms = watch.finish();
            eprintln!("leaders by term: {terms:?}");
        });
    });
}

#[test]
fn job_writes_and_reads_stay_linearizable_while_partitions_come_and_go_and_a_leader_is_killed() {
    netns::run(3, |net| {
        let mut servers = net.cluster(&SERVERS, "");
        let all = [0, 1, 2];
        wait_leader(&servers, &all, FORM);
        let addrs: Vec<String> = servers.iter().map(TestAgent::addr).collect();
        let history = linearize::run_history(&addrs, |run| {
            // Some progress on the majority side of each fault.
            let progress = |what: &str| {
                let target = run.completed() + 40;
                wait_until(FORM, what, || run.completed() >= target);
            };
            // 1. The leader cut off alone, then back.
            let l = wait_leader(&servers, &all, FORM);
            net.cut(host_no(&servers[l]));
            let live: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
            wait_leader(&servers, &live, FORM);
            progress("operations while the leader is cut off");
            net.heal(host_no(&servers[l]));
            let l = wait_leader(&servers, &all, FORM);
            // 2. A follower cut off, then back.
            let f = (l + 1) % 3;
            net.cut(host_no(&servers[f]));
            progress("operations while a follower is cut off");
            net.heal(host_no(&servers[f]));
            let l = wait_leader(&servers, &all, FORM);
            progress("operations after the heal");
            // 3. The leader killed with SIGKILL, then restarted on its state.
            servers[l].kill9();
            let live: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
            wait_leader(&servers, &live, FORM);
            progress("operations after the leader died");
            servers[l].restart_after_stop();
            wait_leader(&servers, &all, FORM);
        });
        assert!(
            history
                .iter()
                .any(|e| matches!(e.op, linearize::Op::Read { .. })
                    && matches!(&e.done, Some((_, linearize::Ret::Value(Some(_)))))),
            "no read ever saw a job"
        );
    });
}

/// Posts `{"Meta": {key: value}}` to a client: true when acknowledged with 200.
fn post_meta(client: &TestAgent, key: &str, value: &str) -> bool {
    let body = serde_json::json!({"Meta": {key: value}}).to_string();
    matches!(
        send(&client.host, client.port, "POST", "/v1/client/metadata", body.as_bytes()),
        Ok(r) if r.status == 200
    )
}

/// Node `node`'s metadata on `server` (its own state).
fn node_meta(server: &TestAgent, node: &str) -> Option<serde_json::Value> {
    let r = try_get(server, &format!("/v1/node/{node}?stale"))?;
    (r.status == 200).then(|| r.json()["Meta"].clone())
}

#[test]
fn kill_9_of_the_leader_under_job_and_metadata_writes_loses_nothing_acknowledged_and_places_nothing_twice(
) {
    netns::run(5, |net| {
        let mut servers = net.cluster(&SERVERS, "");
        let all = [0, 1, 2];
        let old = wait_leader(&servers, &all, FORM);
        let rpcs: Vec<String> = servers.iter().map(TestAgent::rpc_addr).collect();
        let window = "client {\n  meta_batch_window = \"200ms\"\n}\n";
        let clients = [net.client(4, &rpcs, window), net.client(5, &rpcs, window)];
        let nodes: Vec<String> = clients.iter().map(TestAgent::node_id).collect();
        for n in &nodes {
            wait_until(REPLICATE, "both nodes ready", || {
                node_ready(&servers[old], n)
            });
        }
        let stop = AtomicBool::new(false);
        let killed_at: Mutex<Option<Instant>> = Mutex::new(None);
        let first_ack_after: Mutex<Option<Duration>> = Mutex::new(None);
        let acked_after = std::sync::atomic::AtomicUsize::new(0);
        let targets: Vec<(String, u16)> =
            servers.iter().map(|a| (a.host.clone(), a.port)).collect();
        std::thread::scope(|s| {
            let refs: Vec<&TestAgent> = servers.iter().collect();
            let watch = LeaderWatch::start(s, net, &refs);
            let _ends_writers = StopOnDrop(&stop);
            // Writers: job registers round the servers (followers forward), metadata
            // writes through both clients; each records what was acknowledged.
            let jobs = s.spawn(|| {
                let mut acked = BTreeSet::new();
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = format!("job-{n}");
                    let (host, port) = &targets[n % 3];
                    let sent = Instant::now();
                    // A killed server's port refuses at once: the next write goes elsewhere.
                    if register_job_at(host, *port, &id, REQUEST) {
                        if let Some(k) = *killed_at.lock().expect("lock") {
                            if sent > k {
                                acked_after.fetch_add(1, Ordering::SeqCst);
                                first_ack_after
                                    .lock()
                                    .expect("lock")
                                    .get_or_insert_with(|| k.elapsed());
                            }
                        }
                        acked.insert(id);
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                acked
            });
            let metas: Vec<_> = clients
                .iter()
                .map(|c| {
                    let stop = &stop;
                    s.spawn(move || {
                        let mut acked = BTreeSet::new();
                        let mut n = 0usize;
                        while !stop.load(Ordering::SeqCst) {
                            n += 1;
                            let key = format!("k{n}");
                            if post_meta(c, &key, "v") {
                                acked.insert(key);
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        acked
                    })
                })
                .collect();
            // Let some writes land, then kill the leader.
            wait_until(REPLICATE, "writes before the kill", || {
                jobs_on(&servers[old]).is_some_and(|j| j.len() >= 10)
            });
            servers[old].kill9();
            let killed = Instant::now();
            *killed_at.lock().expect("lock") = Some(killed);
            let live: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
            let new = wait_leader(&servers, &live, FORM);
            let elected = killed.elapsed();
            wait_until(REPLICATE, "writes acknowledged after the kill", || {
                acked_after.load(Ordering::SeqCst) >= 10
            });
            stop.store(true, Ordering::SeqCst);
            let jobs = jobs.join().expect("job writer");
            let metas: Vec<BTreeSet<String>> = metas
                .into_iter()
                .map(|m| m.join().expect("meta writer"))
                .collect();
            let first = first_ack_after.lock().expect("lock").expect("an ack");
            eprintln!(
                "failover: a new leader named by both survivors {elected:?} after the kill; first register acknowledged after {first:?}; {} jobs, {:?} metadata writes acknowledged",
                jobs.len(),
                metas.iter().map(BTreeSet::len).collect::<Vec<_>>()
            );
            assert!(
                elected <= FAILOVER * WAIT_SLACK,
                "a new leader {elected:?} after the kill (bound {FAILOVER:?}, times {WAIT_SLACK} for load)"
            );
            assert!(
                metas.iter().all(|m| m.len() >= 5),
                "metadata writes: {metas:?}"
            );

            // Every acknowledged write on every survivor, and no job placed twice.
            let check = |srv: &TestAgent, what: &str| {
                wait_until(REPLICATE, what, || has_jobs(srv, &jobs));
                for (node, keys) in nodes.iter().zip(&metas) {
                    wait_until(REPLICATE, what, || {
                        node_meta(srv, node).is_some_and(|m| keys.iter().all(|k| m[k] == "v"))
                    });
                }
            };
            for &i in &live {
                check(&servers[i], "every acknowledged write on a survivor");
            }
            wait_until(REPLICATE * 2, "every acknowledged job placed", || {
                allocs_on(&servers[new]).is_some_and(|a| jobs.iter().all(|j| a.contains_key(j)))
            });
            // Restart the old leader: it catches up with everything.
            servers[old].restart_after_stop();
            check(&servers[old], "every acknowledged write on the old leader");
            wait_leader(&servers, &all, FORM);
            for srv in &servers {
                wait_until(
                    REPLICATE,
                    "every acknowledged job placed, on every server",
                    || allocs_on(srv).is_some_and(|a| jobs.iter().all(|j| a.contains_key(j))),
                );
                let allocs = allocs_on(srv).expect("allocations");
                for (job, ids) in &allocs {
                    assert_eq!(
                        ids.len(),
                        1,
                        "job {job} placed {} times: {ids:?}",
                        ids.len()
                    );
                }
            }
            watch.finish();
        });
    });
}

#[test]
fn a_snapshot_of_a_three_server_cluster_restores_into_a_fresh_cluster_with_the_same_jobs_and_nodes()
{
    netns::run(7, |net| {
        let source = net.cluster(&SERVERS, "");
        let all = [0, 1, 2];
        let l = wait_leader(&source, &all, FORM);
        let rpcs: Vec<String> = source.iter().map(TestAgent::rpc_addr).collect();
        let client = net.client(4, &rpcs, "");
        let node = client.node_id();
        wait_until(REPLICATE, "the node ready", || {
            node_ready(&source[l], &node)
        });
        for i in 0..5 {
            // Through each server in turn (followers forward).
            wait_until(REPLICATE, "a job registered", || {
                register_job(&source[(l + i) % 3], &format!("snap-{i}"))
            });
        }
        wait_until(REPLICATE, "every job placed", || {
            allocs_on(&source[l]).is_some_and(|a| a.len() == 5)
        });
        // Saved through a follower (forwarded to the leader).
        let f = (l + 1) % 3;
        let r = source[f].request("GET", "/v1/operator/snapshot", &[], b"");
        assert_eq!(r.status, 200, "save: {}", r.text());
        let archive = r.body;
        let listing = |a: &TestAgent| {
            let ids = |path: &str| -> Vec<String> {
                let mut v: Vec<String> = a
                    .get_json(path)
                    .as_array()
                    .expect("list")
                    .iter()
                    .map(|x| x["ID"].as_str().unwrap_or_default().to_string())
                    .collect();
                v.sort();
                v
            };
            (
                ids("/v1/jobs?stale"),
                ids("/v1/nodes?stale"),
                ids("/v1/allocations?stale"),
            )
        };
        let want = listing(&source[l]);
        assert_eq!(want.0.len(), 5, "{want:?}");
        assert_eq!(want.1, vec![node.clone()]);

        let target = net.cluster(&[5, 6, 7], "");
        let tl = wait_leader(&target, &all, FORM);
        let r = target[(tl + 1) % 3].request("PUT", "/v1/operator/snapshot", &[], &archive);
        assert_eq!(r.status, 200, "restore: {}", r.text());
        for t in &target {
            wait_until(
                REPLICATE,
                "the restored state on every target server",
                || listing(t) == want,
            );
        }
        let job = target[tl].get_json("/v1/job/snap-3");
        assert_eq!(job["ID"], "snap-3");
    });
}

#[test]
fn five_servers_split_two_and_three_the_pair_takes_no_write_the_three_go_on_and_all_converge() {
    netns::run(5, |net| {
        let hosts = [1, 2, 3, 4, 5];
        let servers = net.cluster(&hosts, "");
        let all: Vec<usize> = (0..5).collect();
        let old = wait_leader(&servers, &all, FORM);
        std::thread::scope(|s| {
            let refs: Vec<&TestAgent> = servers.iter().collect();
            let watch = LeaderWatch::start(s, net, &refs);
            assert!(
                register_job(&servers[old], "before"),
                "a write before the split"
            );
            // The leader and one follower on one side: they still talk to each other.
            let mate = (old + 1) % 5;
            let pair = [host_no(&servers[old]), host_no(&servers[mate])];
            let old_term = raft_state(&servers[old]).expect("raft state").1;
            net.split(&pair);
            let three: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| i != old && i != mate)
                .collect();
            let new = wait_leader(&servers, &three, FORM);
            let mut n = 0;
            let mut acked = BTreeSet::from(["before".to_string()]);
            wait_until(REPLICATE, "the three take writes", || {
                n += 1;
                let id = format!("three-{n}");
                if register_job(&servers[new], &id) {
                    acked.insert(id);
                }
                acked.len() >= 4
            });
            // On the pair's side: no leader of a later term, and no write acknowledged (sent
            // inside the pair, to both of them).
            for (i, host) in [(old, pair[0]), (mate, pair[1])] {
                let (status, term) = net.within(host, || {
                    let r = send(
                        &servers[i].host,
                        servers[i].port,
                        "PUT",
                        "/v1/jobs",
                        &true_job("pair"),
                    );
                    (r.map(|r| r.status), raft_state(&servers[i]).map(|s| s.1))
                });
                assert_ne!(status, Ok(200), "the pair acknowledged a write");
                let state = net.within(host, || raft_state(&servers[i]));
                if term.is_some_and(|t| t > old_term) {
                    assert_ne!(
                        state.map(|s| s.0).as_deref(),
                        Some("Leader"),
                        "a leader elected by two of five"
                    );
                }
            }
            net.join(&pair);
            let leader = wait_leader(&servers, &all, FORM);
            for srv in &servers {
                wait_until(REPLICATE, "every write on every server", || {
                    has_jobs(srv, &acked)
                });
            }
            let want = jobs_on(&servers[leader]).expect("jobs");
            for srv in &servers {
                wait_until(REPLICATE, "the same jobs everywhere", || {
                    jobs_on(srv).is_some_and(|j| j == want)
                });
            }
            assert!(
                !want.contains("pair"),
                "a write sent to the minority was committed"
            );
            watch.finish();
        });
    });
}
