#!/usr/bin/env python3
"""Make src/idle-path.order: the functions an idle agent runs, for the linker to lay out first.

`make idle-order` builds the release binary as it ships (stripped: symbol names carry hashes
of the build's settings, so only this build's names will do) with the linker's map beside
it, and runs this on the two. Two idle agents run under callgrind, their counters zeroed once
they have settled (25 s); every code address of the binary that ran in the next IDLE_SECONDS
(default 60) is looked up in the map, and the functions holding them are written in the
order callgrind first met them: a client-only agent with a server to heartbeat to first, then
a `-dev` agent (the functions it adds). See src/build.rs for why and how the file is used.

usage: bench/idle_order.py BINARY LINKER_MAP [OUT]   (needs valgrind)
"""

import bisect
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port, server_config, wait_http  # noqa: E402

SETTLE = 25
IDLE_SECONDS = int(os.environ.get("IDLE_SECONDS", "60"))


def callgrind_idle(cmd, out):
    """Run cmd under callgrind; zero its counters after SETTLE s; stop it IDLE_SECONDS later."""
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--demangle=no",
                          f"--callgrind-out-file={out}", *cmd],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(SETTLE)
        subprocess.run(["callgrind_control", "--zero", str(p.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        time.sleep(IDLE_SECONDS)
    finally:
        p.terminate()
        p.wait(timeout=120)


def ran(path, binary):
    """Names of the functions in `binary` with a cost in a callgrind file, first met first."""
    fns, objs = {}, {}
    cost = collections.OrderedDict()
    fn = ob = None
    after_call = False

    def ref(text, table):
        m = re.match(r"\((\d+)\)(?: (.*))?", text)
        if not m:
            return text
        if m[2]:
            table[m[1]] = m[2]
        return table.get(m[1])

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                ob = ref(line[3:], objs)
            elif line.startswith("fn="):
                fn = ref(line[3:], fns)
                cost.setdefault((ob, fn), 0)
                after_call = False
            elif line.startswith("cob="):
                ref(line[4:], objs)
            elif line.startswith("cfn="):
                ref(line[4:], fns)
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False  # the call's inclusive cost belongs to the callee
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn:
                    cost[(ob, fn)] += int(parts[1])
    real = os.path.realpath(binary)
    return [f for (o, f), c in cost.items() if c > 0 and o and os.path.realpath(o) == real]


def text_sections(map_path):
    """(start, size, symbol) of every code input section in an LLD map, by start."""
    line_re = re.compile(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\(\.text\.([^)]*)\)\s*$")
    out = []
    with open(map_path) as f:
        for line in f:
            m = line_re.match(line)
            if m:
                name = m[3]
                for prefix in ("unlikely.", "hot.", "startup.", "exit.", "split."):
                    name = name.removeprefix(prefix)
                out.append((int(m[1], 16), int(m[2], 16), name))
    out.sort()
    return out


def functions_at(addresses, sections):
    """The symbols of the sections holding these addresses, in the addresses' order."""
    starts = [s[0] for s in sections]
    names, seen = [], set()
    for a in addresses:
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and a < sections[i][0] + max(sections[i][1], 1) and sections[i][2] not in seen:
            seen.add(sections[i][2])
            names.append(sections[i][2])
    return names


def main():
    if len(sys.argv) < 3 or not shutil.which("valgrind"):
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    sections = text_sections(sys.argv[2])
    out = sys.argv[3] if len(sys.argv) > 3 else "src/idle-path.order"
    if not sections:
        sys.exit(f"{sys.argv[2]}: no code sections in the map")
    work = tempfile.mkdtemp(prefix="nomadlet-order-")
    server = None
    try:
        cfg, http, rpc = server_config(work)
        server = subprocess.Popen([binary, "agent", "-config", cfg, "-log-level", "WARN"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{http}/v1/agent/health", 30)
        runs = [
            ("client", [binary, "agent", "-client", "-servers", f"127.0.0.1:{rpc}",
                        "-bind", "127.0.0.1", "-http-port", str(free_port()),
                        "-data-dir", os.path.join(work, "c"), "-log-level", "WARN"]),
            ("dev", [binary, "agent", "-dev", "-http-port", str(free_port()),
                     "-data-dir", os.path.join(work, "d"), "-log-level", "WARN"]),
        ]
        names, seen = [], set()
        for label, cmd in runs:
            cg = os.path.join(work, f"{label}.callgrind")
            callgrind_idle(cmd, cg)
            # A stripped binary's functions are named by address ("0x...", "'2": recursion).
            found = functions_at([int(n.split("'")[0], 16) for n in ran(cg, binary)
                                  if n.startswith("0x")], sections)
            fresh = [n for n in found if n not in seen]
            seen.update(fresh)
            names += fresh
            print(f"{label}: {len(found)} functions ran, {len(fresh)} new")
        if not names:
            sys.exit("no function of the binary ran: is the map this binary's?")
        with open(out, "w") as f:
            f.write("\n".join(names) + "\n")
        print(f"{out}: {len(names)} symbols")
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
