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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "nomadlet")
TINY = os.path.join(ROOT, "bench", "build", "tinyhttp", "release", "tinyhttp-hello")
GOHELLO = os.path.join(ROOT, "bench", "build", "go-hello")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
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
    def __init__(self, extra=()):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="nomadlet-bench-")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", BIN, "agent", "-dev", "-data-dir", self.dir,
             "-http-port", str(self.port), "-log-level", "WARN", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/v1/agent/health")

    def req(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        r = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(r, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


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


def bench_http():
    section("HTTP requests/s (wrk -t1 -c16, agent and baselines pinned to CPU 0, wrk to CPU 1)")
    agent = Agent()
    tport, gport = free_port(), free_port()
    tiny = spawn_pinned([TINY, str(tport)], f"http://127.0.0.1:{tport}/")
    goh = spawn_pinned([GOHELLO, str(gport)], f"http://127.0.0.1:{gport}/")
    targets = {
        "nomadlet GET /v1/agent/health": agent.url + "/v1/agent/health",
        "nomadlet GET /v1/client/metadata": agent.url + "/v1/client/metadata",
        "tiny_http hello-world": f"http://127.0.0.1:{tport}/",
        "Go net/http hello-world": f"http://127.0.0.1:{gport}/",
    }
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
    for k, v in rounds.items():
        print(f"  {k:36s} median {statistics.median(v):10.0f} req/s   rounds {[round(x) for x in v]}")
    for ours in ("nomadlet GET /v1/agent/health", "nomadlet GET /v1/client/metadata"):
        for base in ("tiny_http hello-world", "Go net/http hello-world"):
            ratios = [a / b for a, b in zip(rounds[ours], rounds[base])]
            print(f"  ratio {ours} / {base}: {statistics.median(ratios):.2f}")


def bench_size_idle_start():
    section("Binary, idle footprint, exec-to-healthy")
    print(f"  binary size: {os.path.getsize(BIN) / 1024 / 1024:.2f} MiB ({BIN})")
    agent = Agent()
    time.sleep(1.0)
    st = proc_status(agent.proc.pid)
    print(f"  idle agent: RSS {st['rss_kib'] / 1024:.1f} MiB, threads {st['threads']}")
    agent.stop()
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        a = Agent()
        times.append((time.monotonic() - t0) * 1000)
        a.stop()
    print(f"  exec-to-healthy: median {statistics.median(times):.1f} ms (runs {[round(t, 1) for t in times]})")


SECTIONS = [bench_size_idle_start, bench_http]


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
