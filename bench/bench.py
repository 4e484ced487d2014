#!/usr/bin/env python3
"""make bench: nomadlet's figures, each beside a baseline measured in the same run.

Load runs pinned to CPU 1 (wrk -t1), servers to CPU 0, rounds interleaved; the median of the
per-round ratios is printed. Nothing here asserts: it prints figures for README.
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "nomadlet")
TINY = os.path.join(ROOT, "bench", "build", "tinyhttp", "release", "tinyhttp-hello")
GOHELLO = os.path.join(ROOT, "bench", "build", "go-hello")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
# A previous nomadlet binary to measure beside this one in the same interleaved rounds.
BEFORE = os.environ.get("BENCH_BEFORE", "")
DURATION = os.environ.get("BENCH_DURATION", "3s")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.005)
    raise RuntimeError(f"{url} not healthy within {timeout}s")


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return {"rss_kib": int(out["VmRSS"].split()[0]), "threads": int(out["Threads"]),
            "hwm_kib": int(out["VmHWM"].split()[0])}


class Agent:
    def __init__(self, extra=(), binary=None, wrapper=(), env=None, data_dir=None, timeout=None):
        self.port = free_port()
        self.keep_dir = data_dir is not None
        self.dir = data_dir or tempfile.mkdtemp(prefix="nomadlet-bench-")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", *wrapper, binary or BIN, "agent", "-dev", "-data-dir", self.dir,
             "-http-port", str(self.port), "-log-level", "WARN", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_http(self.url + "/v1/agent/health", timeout or (120 if wrapper else 30))
        except RuntimeError:
            self.stop()  # never leave an agent running behind a section that gave up
            raise

    def req(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        r = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(r, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def stop(self, keep_tasks=False):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if not keep_tasks:
            kill_shims(self.dir)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def live_shims(data_dir):
    """(shim pid, task pid) of every task shim left running in data_dir."""
    out = []
    root = os.path.join(data_dir, "client", "shims")
    for name in (os.listdir(root) if os.path.isdir(root) else []):
        d = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(d, "ctl"), os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            with open(os.path.join(d, "pid")) as f:
                shim, task = (int(x) for x in f.read().split())
            out.append((shim, task))
        except (OSError, ValueError):
            continue
    return out


def kill_shims(data_dir):
    """Tasks outlive the agent: a bench section leaves none behind."""
    for shim, task in live_shims(data_dir):
        for pid in (-task, task, shim):
            try:
                os.kill(pid, 9)
            except OSError:
                pass


def wrk(url, conns=16):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{DURATION}", url],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError("wrk printed no Requests/sec:\n" + out)


def spawn_pinned(cmd, url):
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(url)
    return p


def section(title):
    print(f"\n== {title}")


def spread(v):
    return f"min {min(v):8.0f}  median {statistics.median(v):8.0f}  max {max(v):8.0f}"


def bench_http():
    section(f"HTTP requests/s (wrk -t1 -c16, {ROUNDS} interleaved rounds of {DURATION}; "
            "servers pinned to CPU 0, wrk to CPU 1)")
    agent = Agent()
    before = Agent(binary=BEFORE) if BEFORE else None
    tport, gport = free_port(), free_port()
    tiny = spawn_pinned([TINY, str(tport)], f"http://127.0.0.1:{tport}/")
    goh = spawn_pinned([GOHELLO, str(gport)], f"http://127.0.0.1:{gport}/")
    targets = {
        "nomadlet GET /v1/agent/health": agent.url + "/v1/agent/health",
        "nomadlet GET /v1/client/metadata": agent.url + "/v1/client/metadata",
        "tiny_http hello-world": f"http://127.0.0.1:{tport}/",
        "Go net/http hello-world": f"http://127.0.0.1:{gport}/",
    }
    if before:
        targets["before: GET /v1/agent/health"] = before.url + "/v1/agent/health"
        targets["before: GET /v1/client/metadata"] = before.url + "/v1/client/metadata"
    rounds = {k: [] for k in targets}
    try:
        for _ in range(ROUNDS):
            for k, url in targets.items():
                rounds[k].append(wrk(url))
    finally:
        for p in (tiny, goh):
            p.terminate()
            p.wait()
        agent.stop()
        if before:
            before.stop()
    for k, v in rounds.items():
        print(f"  {k:36s} {spread(v)} req/s")
    pairs = [(ours, base) for ours in ("nomadlet GET /v1/agent/health", "nomadlet GET /v1/client/metadata")
             for base in ("tiny_http hello-world", "Go net/http hello-world")]
    if before:
        pairs += [("nomadlet GET /v1/agent/health", "before: GET /v1/agent/health"),
                  ("nomadlet GET /v1/client/metadata", "before: GET /v1/client/metadata")]
    for ours, base in pairs:
        ratios = [a / b for a, b in zip(rounds[ours], rounds[base])]
        print(f"  ratio {ours} / {base}: min {min(ratios):.2f} median {statistics.median(ratios):.2f} "
              f"max {max(ratios):.2f}")
    instructions_per_request()


def callgrind_total(cmd, url, requests, ready_url):
    """Instructions (Ir) a server process runs for start-up plus `requests` GETs of `url`."""
    out = tempfile.mktemp(prefix="nomadlet-cg-")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(ready_url, 120)
        u = urllib.parse.urlsplit(url)
        s = socket.create_connection((u.hostname, u.port))
        path = u.path or "/"
        req = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        s.settimeout(30)
        for _ in range(requests):
            s.sendall(req)
            got = b""
            while True:
                got += s.recv(65536)
                head, sep, body = got.partition(b"\r\n\r\n")
                if not sep:
                    continue
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                if len(body) >= n:
                    break
        s.close()
    finally:
        p.terminate()
        p.wait(timeout=120)
    total = 0
    with open(out) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    os.unlink(out)
    return total


def instructions_per_request():
    """Instructions per request, from two callgrind runs of each server: (2N) - (N) requests."""
    if not shutil.which("valgrind"):
        print("  instructions/request: not measured (no valgrind)")
        return
    n = int(os.environ.get("BENCH_IR_REQUESTS", "2000"))
    servers = {}
    dirs = []
    for label, binary in [("nomadlet", BIN)] + ([("before:", BEFORE)] if BEFORE else []):
        port = free_port()
        d = tempfile.mkdtemp(prefix="nomadlet-bench-cg-")
        dirs.append(d)
        agent_cmd = [binary, "agent", "-dev", "-data-dir", d, "-http-port", str(port), "-log-level", "WARN"]
        base = f"http://127.0.0.1:{port}"
        ready = base + "/v1/agent/health"
        try:
            # Unmeasured first start: the agent makes its node identity and signing key
            # (random work: an RSA key search) that would swamp the difference of the runs.
            callgrind_total(agent_cmd, ready, 1, ready)
        except Exception as e:
            print(f"  instructions/request: warm-up start of {binary} failed: {e}")
        servers[f"{label} GET /v1/agent/health"] = (agent_cmd, ready, ready)
        servers[f"{label} GET /v1/client/metadata"] = (agent_cmd, base + "/v1/client/metadata", ready)
    tport = free_port()
    servers["tiny_http hello-world"] = ([TINY, str(tport)], f"http://127.0.0.1:{tport}/",
                                        f"http://127.0.0.1:{tport}/")
    for name, (cmd, url, ready) in servers.items():
        try:
            one = callgrind_total(cmd, url, n, ready)
            two = callgrind_total(cmd, url, 2 * n, ready)
            print(f"  instructions/request {name:34s} {(two - one) / n:10.0f} (callgrind, {n} vs {2 * n} requests)")
        except Exception as e:
            print(f"  instructions/request {name}: not measured: {e}")
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


STEADY_IDLE_S = 60


def server_config(work):
    """A one-server, server-only config file in `work`: (path, http port, rpc port)."""
    http, rpc, serf = free_port(), free_port(), free_port()
    cfg = os.path.join(work, "server.hcl")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{work}/s"\nbind_addr = "127.0.0.1"\n'
                f"ports {{\n  http = {http}\n  rpc = {rpc}\n  serf = {serf}\n}}\n"
                "server {\n  enabled = true\n  bootstrap_expect = 1\n}\n")
    return cfg, http, rpc


def client_only_agent(binary, work):
    """A server-only agent and a client-only agent joined to it: (server, client) processes."""
    cfg, http, rpc = server_config(work)
    server = subprocess.Popen(["taskset", "-c", "0", binary, "agent", "-config", cfg, "-log-level", "WARN"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{http}/v1/agent/health", 30)
    client_http = free_port()
    client = subprocess.Popen(["taskset", "-c", "0", binary, "agent", "-client", "-servers", f"127.0.0.1:{rpc}",
                               "-bind", "127.0.0.1", "-http-port", str(client_http),
                               "-data-dir", os.path.join(work, "c"), "-log-level", "WARN"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{client_http}/v1/agent/health", 30)
    return server, client


def bench_size_idle_start():
    section("Binary, idle footprint, exec-to-healthy")
    runs = []
    for label, binary in [("", BIN)] + ([("before: ", BEFORE)] if BEFORE else []):
        print(f"  {label}binary size: {os.path.getsize(binary) / 1024 / 1024:.2f} MiB ({binary})")
        work = tempfile.mkdtemp(prefix="nomadlet-bench-idle-")
        agent = Agent(binary=binary)
        server, client = client_only_agent(binary, work)
        runs.append((label, agent, server, client, work, time.monotonic()))
        # Idle: the on-demand workers (scheduler, state committer, alloc puller) end a few
        # seconds after start-up's writes; then one more main-loop tick trims code pages.
        t0 = time.monotonic()
        while proc_status(agent.proc.pid)["threads"] > 3 and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        idle_after = time.monotonic() - t0
        time.sleep(1.5)
        st = proc_status(agent.proc.pid)
        print(f"  {label}idle agent: RSS {st['rss_kib'] / 1024:.1f} MiB, threads {st['threads']} "
              f"(idle {idle_after:.1f} s after start)")
    # Steady state: what the idle loop (stats, heartbeats, the re-trim) keeps resident.
    for label, agent, server, client, work, started in runs:
        time.sleep(max(0.0, started + STEADY_IDLE_S - time.monotonic()))
        st, cl = proc_status(agent.proc.pid), proc_status(client.pid)
        print(f"  {label}{STEADY_IDLE_S} s after start: -dev agent RSS {st['rss_kib'] / 1024:.1f} MiB, "
              f"{st['threads']} threads; client-only agent RSS {cl['rss_kib'] / 1024:.1f} MiB, "
              f"{cl['threads']} threads")
        agent.stop()
        for p in (client, server):
            p.terminate()
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        a = Agent()
        times.append((time.monotonic() - t0) * 1000)
        a.stop()
    print(f"  exec-to-healthy: median {statistics.median(times):.1f} ms (runs {[round(t, 1) for t in times]})")


def job_body(job_id, task_config, count=1, jtype="service", log_config=None):
    task = {"Name": "t", "Driver": "raw_exec", "Config": task_config}
    if log_config:
        task["LogConfig"] = log_config
    return {"Job": {"ID": job_id, "Type": jtype, "Datacenters": ["dc1"],
                    "TaskGroups": [{"Name": "g", "Count": count, "EphemeralDisk": {"SizeMB": 4096},
                                    "Tasks": [task]}]}}


def wait_allocs(agent, job_id, status, count=1, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        allocs = agent.req("GET", f"/v1/job/{job_id}/allocations")
        if len([a for a in allocs if a["ClientStatus"] == status]) >= count:
            return allocs
        time.sleep(0.01)
    raise RuntimeError(f"job {job_id}: {count} allocs not {status} within {timeout}s")


def bench_tasks():
    section("Workloads: cost of idle tasks, log pump throughput")
    agent = Agent()
    try:
        time.sleep(0.5)
        before = proc_status(agent.proc.pid)
        n = 10
        # The first task pays once for what every later one shares: the code of the register,
        # schedule and start paths faulting in, the committer, scheduler and pull workers. The
        # cost per idle task is what each of the next n adds.
        agent.req("POST", "/v1/jobs", job_body("idle", {"command": "/bin/sleep", "args": ["3600"]}, count=1))
        wait_allocs(agent, "idle", "running", 1)
        time.sleep(1.5)
        first = proc_status(agent.proc.pid)
        agent.req("POST", "/v1/jobs", job_body("idle", {"command": "/bin/sleep", "args": ["3600"]}, count=n + 1))
        wait_allocs(agent, "idle", "running", n + 1)
        time.sleep(1.5)
        after = proc_status(agent.proc.pid)
        shims = [proc_status(shim) for shim, _ in live_shims(agent.dir)]
        if shims:
            print(f"  {len(shims)} task shims: RSS {statistics.mean(x['rss_kib'] for x in shims):.0f} KiB each "
                  f"(Pss {statistics.mean(pss_kib(shim) for shim, _ in live_shims(agent.dir)):.0f} KiB), "
                  f"{max(x['threads'] for x in shims)} thread each")
        print(f"  first idle task: agent RSS {before['rss_kib'] / 1024:.1f} -> {first['rss_kib'] / 1024:.1f} MiB, "
              f"threads {before['threads']} -> {first['threads']}")
        print(f"  {n} more idle tasks: agent RSS {first['rss_kib'] / 1024:.1f} -> {after['rss_kib'] / 1024:.1f} MiB "
              f"({(after['rss_kib'] - first['rss_kib']) / n:.0f} KiB per task), threads {first['threads']} -> "
              f"{after['threads']} ({(after['threads'] - first['threads']) / n:.1f} per task); "
              f"all {n + 1} from idle: {(after['rss_kib'] - before['rss_kib']) / (n + 1):.0f} KiB per task")
        agent.req("DELETE", "/v1/job/idle?purge=true")
        size_mb = 512
        t0 = time.monotonic()
        agent.req("POST", "/v1/jobs", job_body("noop", {"command": "/bin/true"}, jtype="batch"))
        wait_allocs(agent, "noop", "complete")
        base = time.monotonic() - t0
        t0 = time.monotonic()
        agent.req("POST", "/v1/jobs", job_body(
            "flood", {"command": "/bin/sh", "args": ["-c", f"head -c {size_mb * 1024 * 1024} /dev/zero"]},
            jtype="batch", log_config={"MaxFiles": 3, "MaxFileSizeMB": 256}))
        flood = wait_allocs(agent, "flood", "complete")[0]["ID"]
        pumped = time.monotonic() - t0 - base
        logs = os.path.join(agent.dir, "alloc", flood, "alloc", "logs")
        kept = sum(os.path.getsize(os.path.join(logs, f)) for f in os.listdir(logs) if f.startswith("t.stdout."))
        target = os.path.join(agent.dir, "direct.bin")
        t0 = time.monotonic()
        subprocess.run(["sh", "-c", f"head -c {size_mb * 1024 * 1024} /dev/zero > {target}"], check=True)
        direct = time.monotonic() - t0
        os.unlink(target)
        print(f"  log pump: {size_mb} MiB through stdout in {pumped:.2f}s = {size_mb / pumped:.0f} MiB/s; "
              f"the same bytes written straight to a file: {size_mb / direct:.0f} MiB/s; ratio {direct / pumped:.2f}; "
              f"bytes in the log files at completion: {kept} of {size_mb * 1024 * 1024}")
    finally:
        agent.stop()


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


COUNTER = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done"


def counter_check(path):
    """(lines, bytes missing or duplicated) of a counter's log file."""
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")[:-1]
    bad = 0
    for i, line in enumerate(lines):
        if line != str(i):
            bad += len(line) + 1
    return len(lines), bad


def bench_restart():
    section("Agent restart with running tasks (issue 13): re-attach, restarts, log bytes lost")
    n = 10
    data_dir = tempfile.mkdtemp(prefix="nomadlet-bench-restart-")
    agent = Agent(data_dir=data_dir)
    try:
        agent.req("POST", "/v1/jobs", job_body("counter", {"command": "/bin/sh", "args": ["-c", COUNTER]}, count=n))
        allocs = wait_allocs(agent, "counter", "running", n)
        time.sleep(1.0)

        def started():
            out = {}
            for a in agent.req("GET", "/v1/job/counter/allocations"):
                full = agent.req("GET", f"/v1/allocation/{a['ID']}")
                ts = full["TaskStates"]["t"]
                pids = [e["Details"].get("pid") for e in ts["Events"] if e["Type"] == "Started"]
                out[a["ID"]] = (ts["State"], pids)
            return out
        before = started()
        threads_before = proc_status(agent.proc.pid)["threads"]
        agent.stop(keep_tasks=True)
        t0 = time.monotonic()
        agent = Agent(data_dir=data_dir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = started()
            if all(now.get(k, ("", []))[0] == "running" for k in before):
                break
            time.sleep(0.005)
        reattached = time.monotonic() - t0
        time.sleep(1.0)
        now = started()
        restarted = sum(1 for k in before if now[k][1] != before[k][1])
        lost = 0
        lines = 0
        for a in allocs:
            path = os.path.join(data_dir, "alloc", a["ID"], "alloc", "logs", "t.stdout.0")
            l, bad = counter_check(path)
            lines += l
            lost += bad
        threads_after = proc_status(agent.proc.pid)["threads"]
        shims = live_shims(data_dir)
        print(f"  {n} counter tasks, agent stopped (SIGTERM) and started again: all re-attached and "
              f"running {reattached * 1000:.0f} ms after the new agent started; tasks restarted: {restarted} "
              f"(goal 0); log bytes lost or duplicated: {lost} in {lines} lines (goal 0)")
        print(f"  agent threads with {n} tasks: {threads_before} before, {threads_after} after the restart; "
              f"{len(shims)} shims, RSS {statistics.mean(proc_status(s)['rss_kib'] for s, _ in shims):.0f} KiB, "
              f"Pss {statistics.mean(pss_kib(s) for s, _ in shims):.0f} KiB each")
    finally:
        agent.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# Appends timed per follow mode: with 50, the "p99" was the single slowest one.
FOLLOW_SAMPLES = 400


def inotify_floor(path, samples=FOLLOW_SAMPLES):
    """Append -> inotify event latency, measured with libc through ctypes (the floor)."""
    import ctypes
    import select
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(0)
    libc.inotify_add_watch(fd, path.encode(), 0x2)  # IN_MODIFY
    lat = []
    with open(path, "ab", buffering=0) as f:
        for _ in range(samples):
            t0 = time.perf_counter()
            f.write(b"x\n")
            select.select([fd], [], [], 1.0)
            os.read(fd, 4096)
            lat.append((time.perf_counter() - t0) * 1000)
    os.close(fd)
    return lat


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def follow_latency(agent, alloc_id, fifo, plain, samples=FOLLOW_SAMPLES):
    s = socket.create_connection(("127.0.0.1", agent.port))
    q = f"task=t&type=stdout&follow=true&origin=end&offset=0&plain={'true' if plain else 'false'}"
    s.sendall(f"GET /v1/client/fs/logs/{alloc_id}?{q} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.settimeout(5)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    lat = []
    with open(fifo, "wb", buffering=0) as w:
        for i in range(samples):
            marker = f"m{i:05d}".encode()
            want = marker if plain else __import__("base64").b64encode(marker + b"\n")[:8]
            t0 = time.perf_counter()
            w.write(marker + b"\n")
            got = b""
            while want not in got:
                got += s.recv(65536)
            lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    s.close()
    return lat


def count_inotify(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += "inotify" in os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass  # closed while we looked
    return n


def bench_fs():
    section("Filesystem: follow latency, cat of 1 GiB, 200 followers")
    # All 200 followers come from one address: lift the per-client connection cap (100).
    agent = Agent(env={"NOMADLET_HTTP_MAX_CONNS_PER_CLIENT": "0"})
    tiny = None
    try:
        agent.req("POST", "/v1/jobs", job_body("echo", {"command": "/bin/sh", "args": [
            "-c", "mkfifo $NOMAD_ALLOC_DIR/data/in; while true; do cat $NOMAD_ALLOC_DIR/data/in; done"]}))
        alloc = wait_allocs(agent, "echo", "running")[0]["ID"]
        adir = os.path.join(agent.dir, "alloc", alloc)
        fifo = os.path.join(adir, "alloc", "data", "in")
        deadline = time.monotonic() + 10
        while not os.path.exists(fifo) and time.monotonic() < deadline:
            time.sleep(0.01)
        probe = os.path.join(adir, "alloc", "data", "probe")
        open(probe, "w").close()
        floor = inotify_floor(probe)
        plain = follow_latency(agent, alloc, fifo, True)
        framed = follow_latency(agent, alloc, fifo, False)
        for name, v in (("inotify floor (append -> event)", floor), ("logs follow plain", plain),
                        ("logs follow framed", framed)):
            print(f"  {name:34s} p50 {pct(v, 50):7.2f} ms   p99 {pct(v, 99):7.2f} ms")
        print("  (Nomad polls every 250 ms and batches frames for 200 ms)")

        big = os.path.join(adir, "alloc", "data", "big.bin")
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(1024):
                f.write(chunk)
        tport = free_port()
        tiny = spawn_pinned([TINY, str(tport), big], f"http://127.0.0.1:{tport}/")
        rounds = {"nomadlet": [], "tiny": []}
        for _ in range(2):
            for name, url in (("nomadlet", f"{agent.url}/v1/client/fs/cat/{alloc}?path=alloc/data/big.bin"),
                              ("tiny", f"http://127.0.0.1:{tport}/")):
                out = subprocess.run(["taskset", "-c", "1", "curl", "-s", "-o", "/dev/null", "-w",
                                      "%{speed_download} %{size_download}", url],
                                     capture_output=True, text=True, check=True).stdout.split()
                assert int(float(out[1])) == 1 << 30, out
                rounds[name].append(float(out[0]) / 1e6)
        hwm = proc_status(agent.proc.pid)["hwm_kib"] / 1024
        ratio = statistics.median([a / b for a, b in zip(rounds["nomadlet"], rounds["tiny"])])
        print(f"  cat 1 GiB: nomadlet {statistics.median(rounds['nomadlet']):.0f} MB/s, tiny_http from_file "
              f"{statistics.median(rounds['tiny']):.0f} MB/s, ratio {ratio:.2f}; agent peak RSS {hwm:.1f} MiB")
        os.unlink(big)

        before = proc_status(agent.proc.pid)
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", agent.port))
            s.sendall(f"GET /v1/client/fs/logs/{alloc}?task=t&type=stdout&follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(s)
        time.sleep(2)
        during = proc_status(agent.proc.pid)
        inotify = count_inotify(agent.proc.pid)
        for s in socks:
            s.close()
        print(f"  200 followers: threads {before['threads']} -> {during['threads']}, RSS "
              f"{before['rss_kib'] / 1024:.1f} -> {during['rss_kib'] / 1024:.1f} MiB, inotify instances {inotify}")
    finally:
        if tiny:
            tiny.terminate()
            tiny.wait()
        agent.stop()


# Job registers per writer thread (distinct count-0 batch jobs: no task runs, the figure is
# the server-state write path: validate, log, fsync, apply, publish).
STATE_WRITES = int(os.environ.get("BENCH_STATE_WRITES", "200"))
STATE_WRITERS = 4
# Allocations in the state for the size and start-up figures.
STATE_ALLOCS = 10_000


def register_latencies(agent, tag):
    """STATE_WRITERS threads each PUT /v1/jobs STATE_WRITES distinct jobs; latencies in ms."""
    import threading
    lat, errors = [], []

    def writer(w):
        mine = []
        for i in range(STATE_WRITES):
            body = job_body(f"{tag}-{w}-{i}", {"command": "/bin/true"}, count=0, jtype="batch")
            t0 = time.monotonic()
            try:
                agent.req("PUT", "/v1/jobs", body)
            except Exception as e:  # counted, printed below
                errors.append(str(e))
                continue
            mine.append((time.monotonic() - t0) * 1000)
        lat.extend(mine)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(STATE_WRITERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.monotonic() - t0, errors


def old_store_files(data_dir, allocs):
    """The JSON file store of earlier versions, with `allocs` terminal, collected allocations
    of 100-alloc batch jobs: the agent imports it once into its command log."""
    server = os.path.join(data_dir, "server")
    for sub in ("jobs", "evals", "allocs"):
        os.makedirs(os.path.join(server, sub), exist_ok=True)
    per_job = 100
    for j in range(allocs // per_job):
        job = {"ID": f"big{j}", "Name": f"big{j}", "Namespace": "default", "Region": "global",
               "Type": "batch", "Priority": 50, "Datacenters": ["dc1"], "Status": "dead",
               "CreateIndex": j + 1, "ModifyIndex": j + 1, "JobModifyIndex": j + 1,
               "TaskGroups": [{"Name": "g", "Count": per_job, "Tasks": [
                   {"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}
        with open(os.path.join(server, "jobs", f"big{j}.json"), "w") as f:
            json.dump(job, f)
        for i in range(per_job):
            aid = f"{j:08x}-0000-4000-8000-{i:012x}"
            alloc = {"id": aid, "namespace": "default", "eval_id": "", "name": f"big{j}.g[{i}]",
                     "node_id": "", "node_name": "", "job_id": f"big{j}", "job": job, "task_group": "g",
                     "alloc_index": i, "desired_status": "stop", "desired_description": "",
                     "client_status": "complete", "client_description": "All tasks have completed",
                     "task_states": {}, "previous_allocation": "", "next_allocation": "",
                     "create_index": j + 1, "modify_index": j + 1, "alloc_modify_index": j + 1,
                     "create_time": 0, "modify_time": 0, "collected": True}
            with open(os.path.join(server, "allocs", f"{aid}.json"), "w") as f:
                json.dump(alloc, f)


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def register_latencies_wrk(agent, close=False):
    """STATE_WRITERS keep-alive connections (wrk on the other core; `close`: a new connection
    per request) PUT distinct count-0 jobs for DURATION seconds: (p50, p99, max) in ms and
    registers/s, or None without wrk."""
    if not shutil.which("wrk"):
        return None
    script = os.path.join(ROOT, "bench", "register.lua")
    env = {**os.environ, "REGISTER_PREFIX": uuid.uuid4().hex[:12], **({"REGISTER_CLOSE": "1"} if close else {})}
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{STATE_WRITERS}", f"-d{DURATION}",
                          "-s", script, agent.url + "/v1/jobs"],
                         capture_output=True, text=True, check=True, env=env).stdout
    rate = next((float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec:")), 0.0)
    for line in out.splitlines():
        if line.startswith("RESULT"):
            f = line.split()
            return float(f[2]), float(f[4]), float(f[6]), rate, int(f[10])
    raise RuntimeError("wrk printed no RESULT line:\n" + out)


# Issue 9's goal for the register path on one server (-dev) with 4 concurrent writers.
REGISTER_P99_GOAL_MS = 10.0


def bench_state():
    section(f"Server state: job register latency on one server (-dev), {STATE_WRITERS} concurrent "
            f"writers (goal p99 <= {REGISTER_P99_GOAL_MS:.0f} ms); state size and start-up with "
            f"{STATE_ALLOCS} allocations")
    for label, binary in [("", BIN)] + ([("before: ", BEFORE)] if BEFORE else []):
        agent = Agent(binary=binary)
        try:
            # Two rounds on the same agent: the first runs on a just-started agent whose idle
            # trim dropped the register path's code (it faults back in during the round).
            for rnd, when in (("w", "first round"), ("v", "second round")):
                lat, took, errors = register_latencies(agent, rnd)
                lat.sort()
                print(f"  {label}register latency, {STATE_WRITERS} Python writer threads x {STATE_WRITES}, a new "
                      f"connection each, {when}: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
                      f"max {lat[-1]:.1f} ms; {len(lat) / took:.0f} registers/s"
                      + (f"; {len(errors)} errors, first: {errors[0]}" if errors else ""))
            for close, how in [(False, "keep-alive writers"), (True, "writers, a new connection each")]:
                kept = register_latencies_wrk(agent, close)
                if kept:
                    p50, p99, mx, rate, errs = kept
                    print(f"  {label}register latency, {STATE_WRITERS} {how} for {DURATION} (wrk): "
                          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {mx:.1f} ms; {rate:.0f} registers/s"
                          + (f"; {errs} errors" if errs else ""))
        finally:
            agent.stop()
    kept = {}
    for label, binary in [("", BIN)] + ([("before: ", BEFORE)] if BEFORE else []):
        data_dir = tempfile.mkdtemp(prefix="nomadlet-bench-state-")
        try:
            old_store_files(data_dir, STATE_ALLOCS)
            old = dir_bytes(os.path.join(data_dir, "server"))
            t0 = time.monotonic()
            agent = Agent(binary=binary, data_dir=data_dir, timeout=300)
            imported = (time.monotonic() - t0) * 1000
            n = len(agent.req("GET", "/v1/allocations"))
            # Commands in the log after the snapshot the import wrote.
            register_latencies(agent, "log")
            agent.stop()
            size = dir_bytes(os.path.join(data_dir, "server"))
            times = restart_times(binary, data_dir, n)
            print(f"  {label}{n} allocations: old JSON files {old / 1024 / 1024:.1f} MiB, imported at first "
                  f"start in {imported:.0f} ms; state.redb with them and {STATE_WRITERS * STATE_WRITES} "
                  f"registers in the log {size / 1024 / 1024:.1f} MiB")
            print(f"  {label}exec-to-healthy with them: median {statistics.median(times):.0f} ms "
                  f"(runs {[round(t) for t in times]})")
            if label:
                kept["before"] = (data_dir, n)
                data_dir = None
        finally:
            if data_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
    if "before" in kept:
        # The state.redb the previous build wrote, opened by this one: rewritten once.
        data_dir, n = kept["before"]
        try:
            t0 = time.monotonic()
            agent = Agent(data_dir=data_dir, timeout=300)
            migrated = (time.monotonic() - t0) * 1000
            listed = len(agent.req("GET", "/v1/allocations"))
            agent.stop()
            assert listed == n, f"{listed} allocations after the upgrade, {n} before"
            size = dir_bytes(os.path.join(data_dir, "server"))
            times = restart_times(BIN, data_dir, n)
            print(f"  the previous build's state.redb opened by this one: first start {migrated:.0f} ms, "
                  f"then {size / 1024 / 1024:.1f} MiB, exec-to-healthy median {statistics.median(times):.0f} ms")
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def restart_times(binary, data_dir, n, runs=5):
    """exec-to-healthy of `runs` starts on `data_dir`, each checked to list `n` allocations."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        agent = Agent(binary=binary, data_dir=data_dir)
        times.append((time.monotonic() - t0) * 1000)
        listed = len(agent.req("GET", "/v1/allocations"))
        agent.stop()
        assert listed == n, f"{listed} allocations after a restart, {n} before"
    return times


def bench_fleet():
    import fleet
    section(f"Fleet: one server, {fleet.NODES} simulated nodes (bench/fleet.py), {fleet.ALLOCS} allocations")
    fleet.run(BIN, lambda line: print("  " + line, flush=True))


def bench_raft():
    import raft
    section("Replicated servers (Raft): register latency on 1 vs 3 servers, failover")
    raft.run(BIN, lambda line: print("  " + line, flush=True), before=BEFORE or None)


def bench_fleet3():
    import fleet
    section(f"Fleet on 3 servers: {fleet.NODES} simulated nodes against the leader, {fleet.ALLOCS} allocations")
    fleet.run(BIN, lambda line: print("  " + line, flush=True), servers=3)


def bench_scheduler():
    # In process: 5 000 nodes registered by NodeRegister commands, 100 jobs of 1 000 allocs;
    # the scheduler alone (apply in memory), then through the durable command log with the
    # scheduler thread. Nomad's published C1M: ~3 750 placements/s (5 servers), C2M ~1 500/s.
    section("Scheduler: 100 000 placements over 5 000 nodes on one server (nomadlet bench-scheduler)")
    out = subprocess.run([BIN, "bench-scheduler", "5000", "100000"], capture_output=True, text=True, timeout=900)
    for line in (out.stdout + out.stderr).splitlines():
        print("  " + line, flush=True)
    print("  baseline: Nomad C1M ~3 750 placements/s with 5 servers; C2M ~1 500/s", flush=True)


SECTIONS = [bench_size_idle_start, bench_http, bench_tasks, bench_restart, bench_fs, bench_state, bench_fleet,
            bench_fleet3, bench_raft, bench_scheduler]


def main():
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    only = sys.argv[1:]
    for s in SECTIONS:
        if only and s.__name__ not in only:
            continue
        try:
            s()
        except Exception as e:  # a section that cannot run says why and the rest go on
            print(f"  {s.__name__}: not measured: {e}")


if __name__ == "__main__":
    main()
