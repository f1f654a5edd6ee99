"""edgestack's registry: a single-server, Consul-API-compatible catalog, health, KV and DNS."""

VERSION = "1.21.0"  # the Consul version we answer as (clients parse it; must be > 1.11)
REVISION = "edgestack"
