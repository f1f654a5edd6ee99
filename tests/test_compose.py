"""compose/ checked statically (this machine has no Docker engine): the compose file parses, every
command it runs exists in the CLI with those flags (parsed by the real argparse parsers), its ports
and volumes agree with each other and with the configs they point at, the Dockerfile downloads
nothing but packages, and the topology is the one `edgestack up` runs as processes."""

from __future__ import annotations

import argparse
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgestack import demo, up
from edgestack.cli import COMMANDS
from registry.config import parse_args as parse_agent_args
from templater.cli import build_parser as templater_parser
from templater.config import Config, load_config
from tests.procs import ROOT

COMPOSE_DIR = ROOT / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (COMPOSE_DIR / "Dockerfile").read_text()


def command(service: str) -> list[str]:
    argv = SERVICES[service]["command"]
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), "commands are exec-form lists"
    return argv


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The real parser; an unknown flag fails the test with argparse's own message."""
    def refuse(message: str) -> None:
        raise AssertionError(f"{parser.prog}: {message}")

    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_args(argv)


def container_ports(service: str) -> set[tuple[int, str]]:
    """Published container ports as (port, protocol); the host side must bind loopback."""
    out = set()
    for spec in SERVICES[service].get("ports", []):
        host_ip, host_port, rest = spec.split(":")
        assert host_ip == "127.0.0.1", f"{service} publishes {spec} beyond loopback"
        port, _, proto = rest.partition("/")
        assert host_port == port, f"{service}: {spec} maps to another host port; the docs assume the same"
        out.add((int(port), proto or "tcp"))
    return out


def mounts(service: str) -> dict[str, str]:
    """Container path → source (a named volume, or a host path resolved against compose/)."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def host_path(service: str, container_path: str) -> Path:
    """The host file a container path comes from through a bind mount."""
    for target, source in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            assert source.startswith("."), f"{container_path} is on volume {source}, not a host path"
            return (COMPOSE_DIR / source / Path(container_path).relative_to(target)).resolve()
    raise AssertionError(f"{service}: nothing is mounted at {container_path}")


def healthcheck_url(service: str) -> urllib.parse.SplitResult:
    test = " ".join(SERVICES[service]["healthcheck"]["test"])
    match = re.search(r"http://[^'\" ]+", test)
    assert match, f"{service}: healthcheck has no URL"
    return urllib.parse.urlsplit(match.group(0))


def edge_config() -> Config:
    argv = command("edge")
    args = parse(templater_parser(), argv[1:])
    assert len(args.config) == 1
    return load_config([str(host_path("edge", args.config[0]))])


def agent_config() -> Any:
    return parse_agent_args(command("registry")[1:], environ={})


# --------------------------------------------------------------------------- the file itself


def test_services_and_policies() -> None:
    assert set(SERVICES) == {"registry", "edge", "web"}
    for name, service in SERVICES.items():
        assert service["image"] == "edgestack:local", name
        assert service["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}, name
        assert service["restart"] in ("unless-stopped", "always", "on-failure"), name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service.get("init") is True, f"{name}: PID 1 must forward signals and reap"
    for name in ("edge", "web"):
        assert SERVICES[name]["depends_on"]["registry"]["condition"] == "service_healthy"


def test_every_command_exists_in_the_cli_with_those_flags() -> None:
    for name in SERVICES:
        assert command(name)[0] in COMMANDS, f"{name} runs `edgestack {command(name)[0]}`, not a CLI command"
    agent = agent_config()
    assert not agent.dev and str(agent.data_dir) == "/data"
    assert agent.client_addr == "0.0.0.0", "the registry must listen beyond the container's loopback"
    edge = edge_config()
    assert edge.haproxy is not None and edge.haproxy.mode == "runtime"
    parse(demo.build_parser(), command("web")[1:])


# --------------------------------------------------------------------------- ports


def test_registry_ports_match_its_flags_and_healthcheck() -> None:
    agent = agent_config()
    assert container_ports("registry") == {(agent.http_port, "tcp"), (agent.dns_port, "tcp"),
                                           (agent.dns_port, "udp")}
    assert healthcheck_url("registry").port == agent.http_port


def test_edge_ports_match_the_templater_config() -> None:
    edge = edge_config()
    agent = agent_config()
    extra = edge.haproxy.extra
    args = parse(templater_parser(), command("edge")[1:])
    metrics_port = int(args.metrics_addr.rpartition(":")[2])
    assert container_ports("edge") == {(int(extra["http_port"]), "tcp"), (int(extra["stats_port"]), "tcp"),
                                       (metrics_port, "tcp")}
    assert extra["bind"] == "0.0.0.0", "HAProxy must listen beyond the container's loopback"
    assert args.metrics_addr.startswith("0.0.0.0:")
    assert healthcheck_url("edge").port == int(extra["stats_port"])
    env = SERVICES["edge"]["environment"]
    assert env["EDGESTACK_HTTP_PORT"] == str(extra["http_port"])
    assert env["EDGESTACK_STATS_PORT"] == str(extra["stats_port"])
    assert edge.consul.address == env["CONSUL_HTTP_ADDR"] == f"registry:{agent.http_port}"


def test_web_is_scalable_and_reaches_the_registry() -> None:
    web = SERVICES["web"]
    args = parse(demo.build_parser(), command("web")[1:])
    assert "ports" not in web and "container_name" not in web, "--scale web=5: no fixed host port or name"
    assert [int(p) for p in web["expose"]] == [args.port]
    assert args.bind == "0.0.0.0" and not args.address and not args.id, "each replica registers its IP and ID"
    assert healthcheck_url("web").port == args.port and healthcheck_url("web").path == demo.HEALTH_PATH
    assert args.http_addr == f"registry:{agent_config().http_port}"


def test_published_host_ports_are_unique() -> None:
    seen: list[tuple[int, str]] = []
    for name in SERVICES:
        seen += sorted(container_ports(name))
    assert len(seen) == len(set(seen))


# --------------------------------------------------------------------------- volumes and files


def test_volumes_are_declared_and_mounted_where_the_commands_look() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    named = {source for name in SERVICES for source in mounts(name).values() if not source.startswith(".")}
    assert named == declared, "every named volume is declared, every declared volume used"
    assert mounts("registry") == {str(agent_config().data_dir): "registry-data"}
    for name in SERVICES:
        for source in mounts(name).values():
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts missing {source}"


def test_edge_template_is_the_mounted_repository_template() -> None:
    edge = edge_config()
    (template,) = edge.templates
    source = host_path("edge", template.source)
    assert source == (ROOT / "templates" / "haproxy.cfg.j2").resolve() and source.is_file()
    (spec,) = [v for v in SERVICES["edge"]["volumes"] if v.split(":")[1] == str(Path(template.source).parent)]
    assert not spec.endswith(":ro"), "operators edit the templates in place"
    destination_dir = str(Path(template.destination).parent)
    owned = re.search(rf"chown .*{re.escape(destination_dir)}", DOCKERFILE)
    assert owned, "the rendered config's directory exists in the image and belongs to the unprivileged user"
    assert re.search(r"chown .*/data\b", DOCKERFILE), "the registry's data directory belongs to the user"


def test_dockerfile_builds_the_package_and_downloads_only_packages() -> None:
    assert not re.search(r"\b(curl|wget|apt-get|apk|git clone)\b|^ADD\s+https?:", DOCKERFILE, re.M)
    run_lines = [ln for ln in DOCKERFILE.splitlines() if ln.strip().startswith("RUN")]
    assert run_lines and "pip install ." in run_lines[0]
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE, re.M)
    sources = [s for line in copied for s in line.split()]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"packages\s*=\s*\[(.*?)\]", pyproject, re.S).group(1)
    for top in {p.strip().strip('"').split(".")[0] for p in packages.split(",") if p.strip()}:
        assert f"{top}/" in sources, f"package {top} is not copied into the image"
    assert re.search(r"^USER\s+(?!root)\w+", DOCKERFILE, re.M), "runs unprivileged"
    assert re.search(r'^ENTRYPOINT \["edgestack"\]', DOCKERFILE, re.M)


# --------------------------------------------------------------------------- same topology as `edgestack up`


def test_same_topology_as_edgestack_up(tmp_path: Path) -> None:
    """`edgestack up` on its defaults renders the same template, in the same mode, on the same ports."""
    args = up.build_parser().parse_args([])
    layout = up.Layout(tmp_path)
    hcl = tmp_path / "up.hcl"
    hcl.write_text(up.templater_config(args, layout, up.template_source(args)))
    local, edge = load_config([str(hcl)]), edge_config()
    assert Path(local.templates[0].source).name == Path(edge.templates[0].source).name == "haproxy.cfg.j2"
    assert local.haproxy.mode == edge.haproxy.mode
    assert set(local.haproxy.extra) == set(edge.haproxy.extra)
    for key in ("http_port", "stats_port"):
        assert int(local.haproxy.extra[key]) == int(edge.haproxy.extra[key])
    agent = agent_config()
    assert (args.http_port, args.dns_port) == (agent.http_port, agent.dns_port)
    metrics = parse(templater_parser(), command("edge")[1:]).metrics_addr
    assert args.metrics_port == int(metrics.rpartition(":")[2])
    web = parse(demo.build_parser(), command("web")[1:])
    assert web.name == up.DEMO_SERVICE
    assert demo.parse_meta(web.meta) == {"edge-path": "/"} == demo.parse_meta([])


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_healthchecks_are_python_one_liners_that_compile(service: str) -> None:
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[1:3] == ["python", "-c"]
    compile(test[3], f"{service} healthcheck", "exec")


def test_edge_listens_beyond_its_container_loopback(shared_agent: Any, tmp_path: Path) -> None:
    """The edge's config, rendered by the real templater (-once -dry) against a real agent."""
    import dataclasses
    import io

    from templater.config import finalize
    from templater.runner import Runner

    edge = edge_config()
    template = dataclasses.replace(edge.templates[0], source=str(host_path("edge", edge.templates[0].source)),
                                   destination=str(tmp_path / "haproxy.cfg"))
    config = finalize(dataclasses.replace(
        edge, templates=(template,), consul=dataclasses.replace(edge.consul, address=shared_agent.http_addr),
        haproxy=dataclasses.replace(edge.haproxy, config=""), once=True, dry=True))
    out = io.StringIO()
    assert Runner(config, stdout=out).run() == 0
    text = out.getvalue()
    extra = edge.haproxy.extra
    assert f"bind 0.0.0.0:{extra['http_port']}" in text
    assert f"bind 0.0.0.0:{extra['stats_port']}" in text
