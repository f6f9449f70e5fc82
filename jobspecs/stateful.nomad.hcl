# A batch job whose state lives only in memory: a counter printed every
# 100 ms. With checkpointing on, moving its allocation (node drain,
# `nomad alloc stop`, `ferry-companion migrate`) resumes the count on the
# destination instead of starting over.
#   nomad job run -var image=10.97.0.1:5000/ferry/busybox:demo jobspecs/stateful.nomad.hcl
variable "image" {
  type = string
}

variable "job" {
  type    = string
  default = "stateful"
}

# Periodic checkpoints ("30m", at least "10s"; none by default): with the
# plugin's checkpoint_dir on storage every client shares, a task whose node
# is lost resumes on another from its last one.
variable "interval" {
  type    = string
  default = ""
}

# Nomad's node drain never replaces a batch allocation that stopped cleanly,
# even a migrated one: move batch jobs with `nomad alloc stop` or
# `ferry-companion migrate`, or run them as "service" to move them by drain.
variable "type" {
  type    = string
  default = "batch"
}

job "stateful" {
  id          = var.job
  datacenters = ["*"]
  type        = var.type

  # `ferry-companion migrate --node` marks its destination with this
  # metadata while it moves an allocation.
  affinity {
    attribute = "${meta.ferry_migrate_target}"
    value     = "true"
    weight    = 100
  }

  group "sim" {
    # Nomad replaces a moved batch allocation through rescheduling: allow
    # every move, and keep Nomad's (minimum) delay short.
    reschedule {
      attempts       = 0
      unlimited      = true
      delay          = "5s"
      delay_function = "constant"
    }

    restart {
      attempts = 0
      mode     = "fail"
    }

    task "counter" {
      driver = "ferry"

      config {
        image   = var.image
        command = "/bin/sh"
        args    = ["-c", "i=0; while true; do i=$((i+1)); echo count $i; sleep 0.1; done"]

        checkpoint {
          enabled            = true
          on_restore_failure = "cold_start"
          interval           = var.interval
        }
      }

      # Long enough for the checkpoint to be written before Nomad gives up.
      kill_timeout = "2m"

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
