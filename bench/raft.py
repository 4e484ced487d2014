"""bench_raft: the replicated server state (issue 11), measured on loopback.

- job register latency p50/p99 on 1 server and on 3 servers (writes sent to the leader; the
  same writer count and job shape as bench_state);
- failover: the leader killed with SIGKILL while writers run → the first write a new leader
  accepts (the time clients see writes refused);
- placements per second on 3 servers with the fleet simulator, beside 1 server.

Each server is a real agent process with its own ports and data dir. Nothing here asserts.
"""
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

WRITERS = 4
WRITES = 200
FAILOVER_ROUNDS = int(os.environ.get("BENCH_FAILOVER_ROUNDS", "3"))


def _free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    """One server agent; `expect` servers bootstrap together through gossip."""

    def __init__(self, binary, expect, ports, serf_peers):
        self.binary = binary
        self.http, self.rpc, self.serf = ports
        self.dir = tempfile.mkdtemp(prefix="nomadlet-raft-")
        self.cfg = os.path.join(self.dir, "agent.hcl")
        joins = ", ".join(f'"127.0.0.1:{p}"' for p in serf_peers if p != self.serf)
        with open(self.cfg, "w") as f:
            f.write(f'name = "bench-{self.http}"\nbind_addr = "127.0.0.1"\nports {{\n  http = {self.http}\n  rpc = {self.rpc}\n'
                    f'  serf = {self.serf}\n}}\nserver {{\n  enabled = true\n  bootstrap_expect = {expect}\n'
                    + (f'  server_join {{\n    retry_join = [{joins}]\n    retry_interval = "1s"\n  }}\n'
                       if joins else "") + "}\n")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "agent", "-data-dir", os.path.join(self.dir, "data"), "-config", self.cfg,
             "-log-level", "WARN"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def rpc_addr(self):
        return f"127.0.0.1:{self.rpc}"

    def conn(self, port=None, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", port or self.http, timeout=timeout)

    def wait(self, what, f, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = f()
                if v:
                    return v
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{what}: not within {timeout}s")

    def req(self, method, path, body=None, timeout=10, port=None, headers=None):
        c = self.conn(port, timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            c.request(method, path, body=data, headers=headers or {})
            r = c.getresponse()
            raw = r.read()
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {raw[:200]!r}")
            return json.loads(raw) if raw else None
        finally:
            c.close()

    def leader(self):
        try:
            return self.req("GET", "/v1/status/leader?stale", timeout=2) or None
        except (OSError, RuntimeError, ValueError):
            return None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster(binary, n):
    ports = [(_free_port(), _free_port(), _free_port()) for _ in range(n)]
    serfs = [p[2] for p in ports]
    return [Server(binary, n, p, serfs) for p in ports]


def wait_leader(servers, timeout=60, exclude=None):
    """The server every live one names as leader (and that names itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [s for s in servers if s is not exclude and s.proc.poll() is None]
        views = {s.leader() for s in live}
        if len(views) == 1:
            addr = views.pop()
            for s in live:
                if addr and s.rpc_addr == addr:
                    return s
        time.sleep(0.02)
    raise RuntimeError(f"no single leader within {timeout}s")


def _job(jid):
    return {"Job": {"ID": jid, "Name": jid, "Type": "batch", "Datacenters": ["dc1"], "TaskGroups": [
        {"Name": "g", "Count": 0, "Tasks": [{"Name": "t", "Driver": "raw_exec",
                                             "Config": {"command": "/bin/true"}}]}]}}


def _latencies(target, tag):
    lat, errors = [], []

    def writer(w):
        mine = []
        for i in range(WRITES):
            t0 = time.monotonic()
            try:
                target.req("PUT", "/v1/jobs", _job(f"{tag}-{w}-{i}"))
            except Exception as e:  # counted, printed
                errors.append(str(e))
                continue
            mine.append((time.monotonic() - t0) * 1000)
        lat.extend(mine)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(lat), time.monotonic() - t0, errors


def _pct(v, p):
    return v[min(len(v) - 1, int(len(v) * p / 100))] if v else float("nan")


def _failover(servers):
    """Kill the leader while a writer runs against every server; ms until a new leader
    accepts a write."""
    leader = wait_leader(servers)
    stop = threading.Event()
    accepted = []  # (sent, answered) of each accepted write

    def writer(s, k):
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.monotonic()
            try:
                s.req("PUT", "/v1/jobs", _job(f"fo-{k}-{i}"), timeout=2)
                accepted.append((t0, time.monotonic()))
            except Exception:
                time.sleep(0.005)

    survivors = [s for s in servers if s is not leader]
    threads = [threading.Thread(target=writer, args=(s, k)) for k, s in enumerate(survivors)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # a window with writes flowing before the kill (not synchronisation)
    killed = time.monotonic()
    leader.kill9()
    new = wait_leader(servers, timeout=60, exclude=leader)
    deadline = time.monotonic() + 30
    # Only a write sent after the kill counts: one in flight may still be answered by the
    # old leader's commit.
    while time.monotonic() < deadline and not any(t0 > killed for t0, _ in list(accepted)):
        time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join()
    after = [done for t0, done in accepted if t0 > killed]
    leader.start()  # back as a follower for the next round
    return ((min(after) - killed) * 1000 if after else float("nan")), new


def _measure(b, n, label, print_fn, failover):
    """Register latency on a cluster of `n` servers of binary `b`: one round of writers on
    one server; on three, two rounds on the same cluster (the first while the leader's
    register path faults back in after start-up, the second the steady state), then failover."""
    servers = cluster(b, n)
    name = f"{label}{n} server{'s' if n > 1 else ''}"
    try:
        leader = wait_leader(servers)
        rounds = (1, 2) if n > 1 else (1,)
        for rnd in rounds:
            lat, took, errors = _latencies(leader, f"s{n}r{rnd}")
            goal = "; goal p99 <= 15 ms" if n > 1 else ""
            print_fn(f"{name}{f', round {rnd}' if n > 1 else ''}: register p50 {_pct(lat, 50):.1f} ms, "
                     f"p99 {_pct(lat, 99):.1f} ms, {len(lat) / took:.0f}/s ({len(errors)} errors{goal})")
        if failover:
            times = [_failover(servers)[0] for _ in range(FAILOVER_ROUNDS)]
            print_fn(f"failover (leader killed -> first write accepted by the new leader): median "
                     f"{statistics.median(times):.0f} ms, runs {[round(t) for t in times]} "
                     f"(goal <= 3 000 ms)")
    except Exception as e:
        print_fn(f"{name}: not measured: {e}")
    finally:
        for s in servers:
            s.stop()


def run(binary, print_fn, before=None):
    builds = [("", binary)] + ([("before: ", before)] if before else [])
    for n in (1, 3):
        for label, b in builds:
            _measure(b, n, label, print_fn, failover=n > 1 and b is binary)
