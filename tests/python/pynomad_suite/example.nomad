# `nomad init`'s example job, with raw_exec in place of docker (python-nomad's CI runs the
# suite against `nomad init` output; nomadlet runs raw_exec tasks only).
job "example" {
  type = "service"

  group "cache" {
    network {
      port "db" {
        to = 6379
      }
    }

    task "redis" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "sleep 3600"]
      }

      identity {
        env  = true
        file = true
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
