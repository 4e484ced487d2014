# The Task API example from Nomad's docs, for raw_exec: the task uses its workload identity
# (NOMAD_TOKEN) on its own Unix socket to set dynamic node metadata, then exits.
#
#   nomadlet job run examples/taskapi-example.nomad.hcl   (or: nomad job run this file;
#   examples/taskapi-example.json is its JSON twin, for curl)
#   nomad node status -filter 'Meta.example == "Hello World!"'
#
# With ACLs enabled, attach a policy granting node write to the job first:
#   nomad acl policy apply -namespace default -job taskapi-example taskapi-node-write node-write.hcl
# where node-write.hcl holds:  node { policy = "write" }
job "taskapi-example" {
  type        = "batch"
  datacenters = ["*"]

  group "taskapi-example" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    task "taskapi" {
      driver = "raw_exec"

      config {
        command = "curl"
        args = [
          "--unix-socket", "${NOMAD_SECRETS_DIR}/api.sock",
          "-H", "Authorization: Bearer ${NOMAD_TOKEN}",
          "--data-binary", "{\"Meta\": {\"example\": \"Hello World!\"}}",
          "--fail-with-body",
          "--silent", "--show-error",
          "localhost/v1/client/metadata",
        ]
      }

      identity {
        env = true
      }
    }
  }
}
