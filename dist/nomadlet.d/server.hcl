# nomadlet runs Nomad's server half (jobs, evaluations, allocations, ACLs) in the same process
# as the client while neither `server { enabled = true }` nor `client { enabled = true }` is
# set, as here. Set only `server { enabled = true }` for a server that other machines' clients
# join on its RPC port (4647), or only `client { enabled = true; servers = [...] }` for a node
# of such a server. This file holds the agent-wide settings.

# Where jobs, allocations, the node identity and task directories live.
data_dir = "/var/lib/nomadlet"

# The HTTP API listens here. Loopback keeps it on this machine; put this machine's own LAN
# address here (or use TLS and ACLs) to manage it from elsewhere.
bind_addr = "127.0.0.1"

ports {
  http = 4646
}

region     = "global"
datacenter = "dc1"

# Reloaded on `systemctl reload nomadlet` (SIGHUP).
log_level = "INFO"

# Turn ACLs on, then bootstrap once: `nomadlet operator api -X POST /v1/acl/bootstrap`.
acl {
  enabled = false
}
