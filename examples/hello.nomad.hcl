# A long-running service for a first try: prints a greeting every few seconds.
#
#   nomadlet job run examples/hello.nomad.hcl
#   nomadlet job run -var greeting=hi -var interval=1 examples/hello.nomad.hcl
#   nomadlet alloc logs -f <alloc-id>
#   nomadlet job stop -purge hello
variable "greeting" {
  type    = string
  default = "hello"
}

variable "interval" {
  type    = number
  default = 5
}

job "hello" {
  datacenters = ["*"]
  type        = "service"

  meta {
    example = "true"
  }

  group "hello" {
    count = 1

    restart {
      attempts = 3
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    task "greeter" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "while true; do echo \"${upper(var.greeting)} from ${NOMAD_ALLOC_ID}\"; sleep ${var.interval}; done"]
      }

      env {
        GREETING = var.greeting
      }

      resources {
        cpu    = 50
        memory = 32
      }

      kill_timeout = "2s"
    }
  }
}
