"""The templater: a consul-template-style renderer that keeps files (haproxy.cfg) in step with the registry.

It speaks only Consul's HTTP API, so it works against the edgestack registry and a real Consul.
Entry points: `templater.cli.main(argv)` (the `edgestack template` command) and `templater.runner.Runner`.
"""
