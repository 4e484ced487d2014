"""python-nomad's job lifecycle calls against a running nomadlet (versions, revert, stable,
evaluate, scaling policies, deregister of a purged job), as python-nomad's own suite makes them.

Usage: lifecycle_compat.py PORT
Exits non-zero with the failing check's message.
"""
import sys
import time

import nomad


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def wait_for(what, f, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = f()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"FAILED: timed out waiting for {what}")


def job(count, tag):
    return {"Job": {"ID": "py-life", "Type": "service", "Meta": {"tag": tag}, "TaskGroups": [
        {"Name": "g", "Count": count,
         "Scaling": {"Enabled": True, "Min": 1, "Max": 3, "Policy": {}},
         "Tasks": [{"Name": "t", "Driver": "raw_exec",
                    "Config": {"command": "/bin/sh", "args": ["-c", "sleep 60"]}}]}]}}


def main(port):
    n = nomad.Nomad(host="127.0.0.1", port=port, timeout=10)
    n.job.register_job("py-life", job(1, "a"))
    n.job.register_job("py-life", job(2, "b"))
    versions = n.job.get_versions("py-life")
    check([v["Version"] for v in versions["Versions"]] == [1, 0], f"versions {versions}")
    current = n.job.get_job("py-life")["Version"]
    r = n.job.revert_job("py-life", current - 1, current)
    check(r["EvalID"], f"revert answers with an EvalID: {r}")
    check(n.job.get_job("py-life")["Version"] == 2, "reverted to a new version")
    r = n.job.stable_job("py-life", 2, True)
    check(r["Index"] > 0, f"stable answers with an index: {r}")
    check(n.job.get_job("py-life")["Stable"] is True, "stable")
    r = n.job.evaluate_job("py-life")
    check(r["EvalID"], f"evaluate answers with an EvalID: {r}")
    policies = n.scaling.get_scaling_policies()
    check(len(policies) == 1, f"one policy {policies}")
    check(policies[0]["Target"]["Job"] == "py-life", "policy target")
    check(n.scaling.get_scaling_policies(job="py-life", type_="horizontal")[0]["ID"] == policies[0]["ID"],
          "filtered policies")
    p = n.scaling.get_scaling_policy(policies[0]["ID"])
    check(p["Min"] == 1 and p["Max"] == 3, f"policy {p}")
    wait_for("a running alloc", lambda: [a for a in n.job.get_allocations("py-life")
                                        if a["ClientStatus"] == "running"])
    n.job.deregister_job("py-life", purge=True)
    r = n.job.deregister_job("py-life", purge=True)
    check(r["EvalID"] == "", f"deregister of a purged job: {r}")
    print("ok")


if __name__ == "__main__":
    main(int(sys.argv[1]))
