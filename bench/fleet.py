"""The fleet simulator for `make bench` (section bench_fleet): thousands of nodes speaking the
real client protocol (src/server/rpc.rs: register, heartbeat at the TTL the server gives) to
ONE real server-only nomadlet, without running tasks; then jobs placing 100 000 allocations
over them. Prints placements per second, the server's RSS, threads and CPU with the fleet
idle, and a real client-only agent's idle RSS, beside Nomad's published figures.

Loopback only. A node's registration is a real client's, copied: one real client-only agent
registers first and its node record (attributes, resources, drivers) is the template.
"""
import heapq
import http.client
import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

NODES = int(os.environ.get("FLEET_NODES", "5000"))
ALLOCS = int(os.environ.get("FLEET_ALLOCS", "100000"))
JOBS = int(os.environ.get("FLEET_JOBS", "100"))
REGISTER_THREADS = 16
# Idle tunnels each simulated node holds open, as a real client does (src/client/tunnel.rs).
TUNNELS = int(os.environ.get("FLEET_TUNNELS", "2"))
SECRET_HEADER = "X-Nomad-Node-Secret"


def _free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return int(out["VmRSS"].split()[0]), int(out["Threads"])


def _cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    """One nomadlet agent process with its own ports and data dir."""

    def __init__(self, binary, role_args, config):
        self.dir = tempfile.mkdtemp(prefix="nomadlet-fleet-")
        self.http = _free_port()
        self.rpc = _free_port()
        self.serf = _free_port()
        cfg = os.path.join(self.dir, "agent.hcl")
        with open(cfg, "w") as f:
            f.write(f'bind_addr = "127.0.0.1"\nports {{\n  http = {self.http}\n  rpc = {self.rpc}\n'
                    f'  serf = {self.serf}\n}}\n{config}\n')
        self.proc = subprocess.Popen(
            [binary, "agent", "-data-dir", os.path.join(self.dir, "data"), "-config", cfg,
             "-log-level", "WARN", *role_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def conn(self, port=None):
        return http.client.HTTPConnection("127.0.0.1", port or self.http, timeout=60)

    def req(self, method, path, body=None, port=None, headers=None):
        c = self.conn(port)
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

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _machine_busy():
    """(busy, total) jiffies of every CPU since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def _cpu_line(pids, cpu0, busy0, took):
    """CPU the servers used during the placements and how busy the machine was: the fleet
    figures are CPU-bound on a shared machine, so a run beside other work reads low."""
    used = [_cpu_s(p) - c for p, c in zip(pids, cpu0)]
    busy1 = _machine_busy()
    cores = os.cpu_count() or 1
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100
    others = busy / 100 * cores * took - sum(used)
    per = " + ".join(f"{u:.1f}" for u in used)
    return (f"CPU during the placements: servers {per} s ({sum(used) / took:.2f} cores); machine "
            f"{busy:.0f} % busy of {cores} cores, {max(0.0, others):.1f} core-s outside the servers (this bench's Python included)")


def _template(server, binary):
    """A real client-only agent's node record on the server, and that agent's idle RSS."""
    client = Proc(binary, ["-client", "-servers", f"127.0.0.1:{server.rpc}"],
                  'plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}\n')
    try:
        node = server.wait("the real client's node ready", lambda: next(
            (n for n in server.req("GET", "/v1/nodes") if n["Status"] == "ready"), None))
        full = server.req("GET", f"/v1/node/{node['ID']}")
        client.wait("the client agent idle", lambda: _status(client.proc.pid)[0] > 0)
        time.sleep(2)  # a measurement window for idle RSS, not synchronisation
        rss, threads = _status(client.proc.pid)
        return full, rss, threads
    finally:
        client.stop()


def _registration(template, i):
    return {
        "node_id": str(uuid.uuid4()),
        "secret_id": str(uuid.uuid4()),
        "name": f"sim-{i:05d}",
        "datacenter": template["Datacenter"],
        # Nothing listens there: the server never dials a client.
        "http_addr": "127.0.0.1:1",
        "tls_enabled": False,
        "node_pool": template.get("NodePool") or "default",
        "node_class": "",
        "version": template["Attributes"].get("nomad.version", "0"),
        "attributes": {**template["Attributes"], "unique.hostname": f"sim-{i:05d}"},
        "meta": template.get("Meta") or {},
        "resources": template["NodeResources"],
        "drivers": template["Drivers"],
        "status": "ready",
    }


class Fleet:
    """The simulated nodes: registered by a thread pool, then heartbeated by one thread at
    the TTL each reply named."""

    def __init__(self, server, regs):
        self.server = server
        self.regs = regs
        self.heap = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.errors = 0
        self.heartbeats = 0

    def register_all(self):
        chunks = [self.regs[i::REGISTER_THREADS] for i in range(REGISTER_THREADS)]

        def work(chunk):
            c = self.server.conn(self.server.rpc)
            for reg in chunk:
                for attempt in range(3):
                    try:
                        c.request("POST", "/v1/rpc/node/register", body=json.dumps(reg).encode(),
                                  headers={"Content-Type": "application/json"})
                        r = c.getresponse()
                        body = r.read()
                        if r.status != 200:
                            raise RuntimeError(f"{r.status} {body[:100]!r}")
                        ttl = json.loads(body)["ttl_ms"] / 1000
                        with self.lock:
                            heapq.heappush(self.heap, (time.monotonic() + ttl * 0.5, reg["node_id"],
                                                       reg["secret_id"]))
                        break
                    except (OSError, RuntimeError, http.client.HTTPException):
                        c.close()
                        c = self.server.conn(self.server.rpc)
                        if attempt == 2:
                            with self.lock:
                                self.errors += 1
            c.close()

        t0 = time.monotonic()
        ts = [threading.Thread(target=work, args=(ch,)) for ch in chunks]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.monotonic() - t0

    def open_tunnels(self):
        """Each node opens TUNNELS upgraded tunnels to the server's RPC port and holds them
        (never reading: the server parks them with no thread; pushes to them go unanswered)."""
        import socket
        self.tunnels = []
        t0 = time.monotonic()
        for reg in self.regs:
            for _ in range(TUNNELS):
                try:
                    s = socket.create_connection(("127.0.0.1", self.server.rpc), timeout=10)
                    s.sendall((f"GET /v1/rpc/tunnel?node_id={reg['node_id']} HTTP/1.1\r\n"
                               f"Host: x\r\nConnection: Upgrade\r\nUpgrade: nomadlet-tunnel/1\r\n"
                               f"{SECRET_HEADER}: {reg['secret_id']}\r\n\r\n").encode())
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = s.recv(1024)
                        if not chunk:
                            break
                        head += chunk
                    if head.startswith(b"HTTP/1.1 101"):
                        self.tunnels.append(s)
                        continue
                    s.close()
                except OSError:
                    pass
                self.errors += 1
        return time.monotonic() - t0

    def close_tunnels(self):
        for s in getattr(self, "tunnels", []):
            s.close()

    def heartbeat_loop(self):
        c = self.server.conn(self.server.rpc)
        while not self.stop_ev.is_set():
            with self.lock:
                due = self.heap[0][0] if self.heap else time.monotonic() + 1
            wait = due - time.monotonic()
            if wait > 0:
                self.stop_ev.wait(min(wait, 0.5))
                continue
            with self.lock:
                _, node_id, secret = heapq.heappop(self.heap)
            try:
                c.request("POST", "/v1/rpc/node/heartbeat", body=json.dumps({"node_id": node_id}).encode(),
                          headers={"Content-Type": "application/json", SECRET_HEADER: secret})
                r = c.getresponse()
                body = r.read()
                ttl = json.loads(body)["ttl_ms"] / 1000 if r.status == 200 else 5
                self.heartbeats += 1
            except (OSError, ValueError, http.client.HTTPException):
                c.close()
                c = self.server.conn(self.server.rpc)
                ttl = 5
                self.errors += 1
            with self.lock:
                heapq.heappush(self.heap, (time.monotonic() + ttl * 0.5, node_id, secret))
        c.close()


def _job(i, count, dc):
    return {"Job": {"ID": f"fleet-{i:03d}", "Type": "service", "Datacenters": [dc],
                    "TaskGroups": [{"Name": "g", "Count": count, "EphemeralDisk": {"SizeMB": 150},
                                    "Tasks": [{"Name": "t", "Driver": "raw_exec",
                                               "Config": {"command": "/bin/true"},
                                               "Resources": {"CPU": 10, "MemoryMB": 10}}]}]}}


def _placed(server, job_id):
    s = server.req("GET", f"/v1/job/{job_id}/summary")["Summary"]["g"]
    return s.get("Starting", 0) + s.get("Running", 0) + s.get("Complete", 0) + s.get("Failed", 0) \
        + s.get("Lost", 0) + s.get("Unknown", 0)


def run(binary, print_fn, servers=1):
    """The fleet against one server, or against the leader of `servers` replicated ones."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    others = []
    if servers == 1:
        server = Proc(binary, ["-server"], "server {\n  enabled = true\n  bootstrap_expect = 1\n}\n")
    else:
        import raft
        members = raft.cluster(binary, servers)
        try:
            server = raft.wait_leader(members)
        except RuntimeError:
            for m in members:
                m.stop()
            raise
        others = [m for m in members if m is not server]
    fleet = None
    hb = None
    try:
        server.wait("server healthy", lambda: server.req("GET", "/v1/agent/health") is not None)
        template, client_rss, client_threads = _template(server, binary)
        print_fn(f"client-only agent, idle: RSS {client_rss / 1024:.1f} MiB, {client_threads} threads "
                 f"(goal <= 5 MiB; Nomad clients: 60-100 MB)")
        regs = [_registration(template, i) for i in range(NODES)]
        fleet = Fleet(server, regs)
        took = fleet.register_all()
        print_fn(f"{NODES} simulated nodes registered in {took:.1f} s ({NODES / took:.0f}/s, "
                 f"{fleet.errors} errors)")
        if TUNNELS:
            took = fleet.open_tunnels()
            print_fn(f"{len(fleet.tunnels)} idle tunnels opened ({TUNNELS} per node) in {took:.1f} s")
        hb = threading.Thread(target=fleet.heartbeat_loop, daemon=True)
        hb.start()
        ready = server.wait("nodes ready", lambda: sum(
            1 for n in server.req("GET", "/v1/nodes") if n["Status"] == "ready") >= NODES, timeout=120)
        del ready
        pid = server.proc.pid
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        time.sleep(10)  # a measurement window: the fleet idle, heartbeating
        cpu = (_cpu_s(pid) - cpu0) / (time.monotonic() - t0) * 100
        rss, threads = _status(pid)
        print_fn(f"server, {NODES} idle nodes heartbeating: RSS {rss / 1024:.1f} MiB, {threads} threads, "
                 f"CPU {cpu:.1f} % of one core ({fleet.heartbeats} heartbeats so far)")
        per_job = ALLOCS // JOBS
        pids = [server.proc.pid] + [m.proc.pid for m in others]
        cpu_before, busy_before = [_cpu_s(p) for p in pids], _machine_busy()
        t0 = time.monotonic()
        for i in range(JOBS):
            server.req("PUT", "/v1/jobs", _job(i, per_job, template["Datacenter"]))
        submitted = time.monotonic() - t0
        pending = {f"fleet-{i:03d}" for i in range(JOBS)}
        deadline = time.monotonic() + 900
        while pending and time.monotonic() < deadline:
            for j in list(pending):
                if _placed(server, j) >= per_job:
                    pending.discard(j)
            time.sleep(0.05)
        took = time.monotonic() - t0
        if pending:
            placed = sum(_placed(server, j) for j in pending) + (JOBS - len(pending)) * per_job
            print_fn(f"placements: only {placed} of {ALLOCS} within {took:.0f} s")
        else:
            print_fn(f"placements: {ALLOCS} allocations over {NODES} nodes in {took:.1f} s "
                     f"= {ALLOCS / took:.0f}/s (jobs submitted in {submitted:.1f} s; goal >= 10 000/s; "
                     f"Nomad C1M ~3 750/s with 5 servers, C2M ~1 500/s)")
        print_fn(_cpu_line(pids, cpu_before, busy_before, took))
        rss, threads = _status(pid)
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        time.sleep(5)  # a measurement window
        cpu = (_cpu_s(pid) - cpu0) / (time.monotonic() - t0) * 100
        print_fn(f"server with {NODES} nodes and {ALLOCS} allocs: RSS {rss / 1024:.1f} MiB (goal <= 200), "
                 f"{threads} threads (goal <= 64), idle CPU {cpu:.1f} %; heartbeat errors {fleet.errors}")
    finally:
        if fleet:
            fleet.stop_ev.set()
            fleet.close_tunnels()
        if hb:
            hb.join(timeout=5)
        server.stop()
        for m in others:
            m.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
