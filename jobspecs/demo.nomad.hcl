# A long-running counter in a ferry container: its state lives only in memory.
#   nomad job run -var registry=10.97.0.1:5000 jobspecs/demo.nomad.hcl
variable "registry" {
  type        = string
  description = "registry (host:port) holding ferry/busybox:demo, as the clients reach it"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

job "demo" {
  datacenters = var.datacenters
  type        = "service"

  # `ferry-companion migrate --node` marks its destination with this.
  affinity {
    attribute = "${meta.ferry_migrate_target}"
    value     = "true"
    weight    = 100
  }

  group "counter" {
    task "counter" {
      driver = "ferry"

      config {
        image   = "${var.registry}/ferry/busybox:demo"
        command = "/bin/sh"
        args = ["-c", <<-EOT
          trap 'echo "signal USR1 at $i"' USR1
          trap 'echo "stopping at $i"; exit 0' INT
          i=0
          while true; do
            i=$((i+1))
            echo "count $i"
            sleep 1
          done
        EOT
        ]

        # Moving the allocation (node drain, `nomad alloc stop`,
        # `ferry-companion migrate`) carries the count along.
        checkpoint {
          enabled = true
        }
      }

      # kill_signal lets the task say where it stopped before it exits.
      kill_signal  = "SIGINT"
      kill_timeout = "20s"

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
