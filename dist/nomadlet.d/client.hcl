# The client half: what this node offers to jobs.

client {
  # Static node metadata, visible to jobs and in `GET /v1/node/<id>`. Reloaded on
  # `systemctl reload nomadlet` (SIGHUP).
  meta {
    site = "edge"
  }

  # Terminal allocations kept before the oldest are collected.
  gc_max_allocs = 50
}

# raw_exec runs tasks as plain processes (each in its own cgroup). It is off unless enabled
# here (or with -dev): without it, a job's placement fails and says so.
plugin "raw_exec" {
  config {
    enabled = true
  }
}
