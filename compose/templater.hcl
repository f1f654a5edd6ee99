consul {
  address = "registry:8500"

  retry {
    attempts    = 0
    backoff     = "250ms"
    max_backoff = "10s"
  }
}

template {
  source      = "/etc/edgestack/templates/haproxy.cfg.j2"
  destination = "/run/edgestack/haproxy.cfg"
}

haproxy {
  mode       = "runtime"
  bind       = "0.0.0.0"
  http_port  = 8080
  stats_port = 8404
}
