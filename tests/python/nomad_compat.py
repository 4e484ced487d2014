"""python-nomad against a running nomadlet: each check calls the library as a user would.

Usage: nomad_compat.py PORT SECTION...   (sections: agent, workloads, acl, tools, events)
Exits non-zero with the failing check's message.
"""
import sys
import time

import nomad


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def agent_section(n):
    me = n.agent.get_agent()
    check(me["config"]["Region"] == "global", "agent self region")
    node_id = me["stats"]["client"]["node_id"]
    members = n.agent.get_members()
    check(members["Members"][0]["Status"] == "alive", "members alive")
    check(n.agent.get_servers() == ["127.0.0.1:4647"], "servers")
    check(n.agent.update_servers(["127.0.0.1:4647", "127.0.0.5:4647"]) == 200, "update servers")
    check(sorted(n.agent.get_servers()) == ["127.0.0.1:4647", "127.0.0.5:4647"], "servers updated")
    j = n.agent.join_agent(["127.0.0.1:1"])
    check(j["num_joined"] == 0 and "Failed to join" in j["error"], f"join error {j}")
    nodes = n.nodes.get_nodes()
    check(len(nodes) == 1 and nodes[0]["ID"] == node_id, "nodes list")
    node = n.node.get_node(node_id)
    check(node["Status"] == "ready", "node read")
    check(n.status.leader.get_leader() == "127.0.0.1:4647", "leader")
    check(n.regions.get_regions() == ["global"], "regions")
    check(n.status.peers.get_peers() == ["127.0.0.1:4647"], "peers")
    return node_id


def wait_for(what, f, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = f()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"FAILED: timed out waiting for {what}")


def workloads_section(n):
    job = {"Job": {"ID": "py-hello", "Type": "batch", "Datacenters": ["dc1"], "TaskGroups": [
        {"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
                                             "Config": {"command": "/bin/sh", "args": ["-c", "echo hello"]}}]}]}}
    r = n.jobs.register_job(job)
    check(r["EvalID"], f"register answers with an EvalID: {r}")
    check(n.job.get_job("py-hello")["Type"] == "batch", "get_job")
    allocs = wait_for("complete alloc", lambda: [a for a in n.job.get_allocations("py-hello")
                                                 if a["ClientStatus"] == "complete"])
    alloc_id = allocs[0]["ID"]
    check(n.allocation.get_allocation(alloc_id)["JobID"] == "py-hello", "get_allocation")
    check(n.client.stats.read_stats()["Memory"]["Total"] > 0, "host stats")
    names = [f["Name"] for f in n.client.ls.list_files(alloc_id, "/alloc/logs")]
    check("t.stdout.0" in names, f"ls {names}")
    check(n.client.cat.read_file(alloc_id, "alloc/logs/t.stdout.0") == "hello\n", "cat")
    check(n.client.stat.stat_file(alloc_id, "alloc/logs/t.stdout.0")["Size"] == 6, "stat")
    check(n.client.read_at.read_file_offset(alloc_id, 1, 3, "alloc/logs/t.stdout.0") == "ell", "readat")
    check(n.client.stream_logs.stream(alloc_id, "t", "stdout", plain=True) == "hello\n", "plain logs")
    framed = n.client.stream_logs.stream(alloc_id, "t", "stdout")
    check("aGVsbG8K" in framed, f"framed logs {framed!r}")
    n.client.gc_allocation.garbage_collect(alloc_id)
    check(n.allocation.get_allocation(alloc_id)["ID"] == alloc_id, "the server side keeps a collected alloc")


def tools_section(n):
    job = {"Job": {"ID": "py-tools", "Type": "batch", "Datacenters": ["dc1"], "TaskGroups": [
        {"Name": "grp", "Count": 1, "Tasks": [{"Name": "worker", "Driver": "raw_exec",
                                               "Config": {"command": "/bin/true"}}]}]}}
    n.jobs.register_job(job)
    allocs = wait_for("complete alloc", lambda: [a for a in n.job.get_allocations("py-tools")
                                                 if a["ClientStatus"] == "complete"])
    alloc_id = allocs[0]["ID"]
    r = n.search.search("py-", "jobs")
    check(r["Matches"]["jobs"] == ["py-tools"] and r["Truncations"]["jobs"] is False, f"search {r}")
    r = n.search.search(alloc_id[:8], "allocs")
    check(r["Matches"]["allocs"] == [alloc_id], f"search allocs {r}")
    r = n.search.search("py-", "all")
    check(r["Matches"]["jobs"] == ["py-tools"] and r["Matches"]["evals"] == [], f"search all {r}")
    r = n.search.fuzzy_search("tool", "jobs")
    check(r["Matches"]["jobs"] == [{"ID": "py-tools", "Scope": ["default", "py-tools"]}], f"fuzzy {r}")
    r = n.search.fuzzy_search("work", "all")
    check(r["Matches"]["tasks"] == [{"ID": "worker", "Scope": ["default", "py-tools", "grp"]}], f"fuzzy tasks {r}")
    m = n.metrics.get_metrics()
    gauges = {g["Name"]: g["Value"] for g in m["Gauges"]}
    check(gauges.get("nomad.nomad.job_status.dead") == 1, f"metrics job status {gauges}")
    check(gauges.get("nomad.runtime.num_threads", 0) > 1, "metrics threads")
    check(any(c["Name"] == "nomad.http.requests" for c in m["Counters"]), "metrics http counters")
    check([ns["Name"] for ns in n.namespaces.get_namespaces()] == ["default"], "namespaces")
    check(n.namespace.get_namespace("default")["Description"] == "Default shared namespace", "namespace")
    check("default" in n.namespaces, "namespace membership")
    check(n.system.initiate_garbage_collection() is True, "system gc")


def acl_section(n, port):
    boot = n.acl.generate_bootstrap()
    check(boot["Type"] == "management", "bootstrap")
    m = nomad.Nomad(host="127.0.0.1", port=port, token=boot["SecretID"], timeout=10)
    m.acl.create_policy("readers", {"Name": "readers", "Description": "read nodes",
                                    "Rules": 'node { policy = "read" }'})
    check([p["Name"] for p in m.acl.get_policies()] == ["readers"], "get_policies")
    check(m.acl.get_policy("readers")["Rules"] == 'node { policy = "read" }', "get_policy")
    t = m.acl.create_token({"Name": "reader", "Type": "client", "Policies": ["readers"]})
    check(t["SecretID"] and t["Policies"] == ["readers"], "create_token")
    check(any(x["AccessorID"] == t["AccessorID"] for x in m.acl.get_tokens()), "get_tokens")
    check(m.acl.get_token(t["AccessorID"])["Name"] == "reader", "get_token")
    check(m.acl.get_self_token()["Type"] == "management", "get_self_token")
    t2 = m.acl.update_token(t["AccessorID"], {"AccessorID": t["AccessorID"], "Name": "renamed",
                                             "Type": "client", "Policies": ["readers"]})
    check(t2["Name"] == "renamed", "update_token")
    reader = nomad.Nomad(host="127.0.0.1", port=port, token=t["SecretID"], timeout=10)
    check(len(reader.nodes.get_nodes()) == 1, "a reader token lists nodes")
    try:
        reader.agent.update_servers(["127.0.0.5:4647"])
        raise SystemExit("FAILED: a reader token changed the servers")
    except nomad.api.exceptions.BaseNomadException:
        pass
    check(m.acl.delete_token(t["AccessorID"]), "delete_token")
    check(m.acl.delete_policy("readers"), "delete_policy")


def next_event(events, what, f, timeout=30.0):
    """The first event line from python-nomad's stream queue for which `f` holds."""
    import queue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if f(msg):
            return msg
    raise SystemExit(f"FAILED: timed out waiting for {what}")


def events_section(n):
    # The default stream (topic *:*), as python-nomad's own test reads it.
    stream, stop, events = n.event.stream.get_stream()
    stream.daemon = True
    stream.start()
    job = {"Job": {"ID": "py-events", "Type": "batch", "Datacenters": ["dc1"], "TaskGroups": [
        {"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
                                             "Config": {"command": "/bin/true"}}]}]}}
    n.jobs.register_job(job)
    msg = next_event(events, "the job's registration", lambda m: any(
        e["Topic"] == "Job" and e["Key"] == "py-events" and e["Type"] == "JobRegistered"
        for e in m["Events"]))
    check("Index" in msg, f"an Index in {msg}")
    stop.set()
    # A topic given as a dict (requests sends its keys): node events from the backlog.
    stream, stop, events = n.event.stream.get_stream(topic={"Node": "*"})
    stream.daemon = True
    stream.start()
    msg = next_event(events, "a node event", lambda m: True, timeout=5)
    check(msg["Events"][0]["Type"] in ("NodeRegistration", "NodeDeregistration", "NodeEligibility",
                                       "NodeDrain", "NodeEvent", "NodeStreamEvent"), f"node event {msg}")
    stop.set()
    # Resuming from an index with a Topic:Key filter.
    stream, stop, events = n.event.stream.get_stream(index=msg["Index"], topic="Job:py-events",
                                                     namespace="default")
    stream.daemon = True
    stream.start()
    msg = next_event(events, "the job's events again", lambda m: True)
    check(all(e["Topic"] == "Job" and e["Key"] == "py-events" for e in msg["Events"]), f"{msg}")
    stop.set()


def main():
    port = int(sys.argv[1])
    token = None
    sections = sys.argv[2:]
    n = nomad.Nomad(host="127.0.0.1", port=port, token=token, timeout=10)
    for s in sections:
        if s == "acl":
            acl_section(n, port)
        else:
            globals()[f"{s}_section"](n)
    print("python-nomad: ok", " ".join(sections))


if __name__ == "__main__":
    main()
