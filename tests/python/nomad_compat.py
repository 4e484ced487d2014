"""python-nomad against a running nomadlet: each check calls the library as a user would.

Usage: nomad_compat.py PORT SECTION...   (sections: agent)
Exits non-zero with the failing check's message.
"""
import sys

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
    check(n.agent.update_servers(["127.0.0.1:4647", "10.0.0.1:4647"]) == 200, "update servers")
    check(sorted(n.agent.get_servers()) == ["10.0.0.1:4647", "127.0.0.1:4647"], "servers updated")
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


def main():
    port = int(sys.argv[1])
    token = None
    sections = sys.argv[2:]
    n = nomad.Nomad(host="127.0.0.1", port=port, token=token, timeout=10)
    for s in sections:
        globals()[f"{s}_section"](n)
    print("python-nomad: ok", " ".join(sections))


if __name__ == "__main__":
    main()
