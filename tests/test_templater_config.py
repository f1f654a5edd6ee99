"""Templater configuration: HCL (repeated and nested blocks), JSON, flags, and located errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from templater.cli import build_config, build_parser
from templater.config import (
    ConfigError,
    HAProxySettings,
    RetryConfig,
    WaitConfig,
    load_config,
    parse_duration,
    parse_template_flag,
    parse_wait,
)

FULL_HCL = """
consul {
  address = "10.0.0.5:8500"
  token   = "t0ken"
  retry {
    attempts    = 5
    backoff     = "100ms"
    max_backoff = "10s"
  }
}

wait {
  min = "1s"
  max = "3s"
}

template {
  source      = "a.j2"
  destination = "a.out"
  command     = "echo a"
  perms       = 0640
  backup      = true
  wait {
    min = "2s"
  }
}

template {
  contents             = "{{ key('x') }}\\n"
  destination          = "b.out"
  command              = ["/bin/echo", "b"]
  check_command        = "test -s {staged}"
  command_timeout      = "5s"
  error_on_missing_key = true
}

template {
  source      = "c.j2"
  destination = "c.out"
}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_repeated_template_blocks_keep_every_field(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "t.hcl", FULL_HCL)])
    a, b, c = config.templates
    assert (a.source, a.destination, a.command, a.perms, a.backup) == ("a.j2", "a.out", "echo a", 0o640, True)
    assert (b.contents, b.destination, b.command) == ("{{ key('x') }}\n", "b.out", ["/bin/echo", "b"])
    assert (b.check_command, b.command_timeout, b.error_on_missing_key) == ("test -s {staged}", 5.0, True)
    assert (c.source, c.destination, c.command, c.perms, c.wait) == ("c.j2", "c.out", None, 0o644, None)


def test_nested_blocks_wait_and_retry(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "t.hcl", FULL_HCL)])
    assert config.wait == WaitConfig(1.0, 3.0)
    assert config.templates[0].wait == WaitConfig(2.0, 8.0)  # max defaults to 4 x min
    assert config.wait_for(config.templates[0]) == WaitConfig(2.0, 8.0)
    assert config.wait_for(config.templates[1]) == WaitConfig(1.0, 3.0)
    assert config.consul.address == "10.0.0.5:8500" and config.consul.token == "t0ken"
    assert config.consul.retry == RetryConfig(attempts=5, backoff=0.1, max_backoff=10.0)


def test_json_config_is_equivalent(tmp_path: Path) -> None:
    data = {"consul": {"address": "10.0.0.5:8500", "retry": {"attempts": 0}},
            "wait": {"min": "1s", "max": "3s"},
            "template": [{"source": "a.j2", "destination": "a.out", "perms": "0600", "wait": {"min": "2s"}},
                         {"contents": "x", "destination": "b.out"}]}
    config = load_config([write(tmp_path, "t.json", json.dumps(data))])
    assert [t.destination for t in config.templates] == ["a.out", "b.out"]
    assert config.templates[0].perms == 0o600 and config.templates[0].wait == WaitConfig(2.0, 8.0)
    assert config.wait == WaitConfig(1.0, 3.0) and config.consul.retry.attempts == 0


def test_haproxy_block_and_files_merge_in_order(tmp_path: Path) -> None:
    first = write(tmp_path, "1.hcl", 'template {\n source = "h.j2"\n destination = "h.cfg"\n}\n'
                                      'log_level = "debug"\n')
    second = write(tmp_path, "2.hcl", 'log_level = "warn"\nhaproxy {\n  mode = "reload"\n'
                                       '  master_socket = "/run/m.sock"\n  supervise = false\n  maxconn = 10\n}\n')
    args = build_parser().parse_args(["-config", first, "--config", second])
    config = build_config(args)
    assert config.log_level == "warn" and len(config.templates) == 1
    assert config.haproxy == HAProxySettings(mode="reload", config=str(Path("h.cfg").resolve()),
                                             master_socket="/run/m.sock", supervise=False,
                                             extra={"maxconn": 10})


def test_config_directory_is_merged_lexically(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path, "conf/b.hcl", 'template {\n contents = "b"\n destination = "b.out"\n}\n')
    write(tmp_path, "conf/a.json", '{"template": {"contents": "a", "destination": "a.out"}}')
    assert [t.destination for t in load_config([str(tmp_path / "conf")]).templates] == ["a.out", "b.out"]


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.hcl", 'template {\n  source = "a"\n  destination "b"\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config([path])
    assert info.value.file == path and info.value.line in (3, 4)
    assert f"{path}:{info.value.line}: invalid HCL" in str(info.value)


def test_bad_field_in_second_template_names_its_line(tmp_path: Path) -> None:
    text = ('template {\n  source = "a"\n  destination = "a.out"\n}\n\n'
            'template {\n  source = "b"\n  destination = "b.out"\n  perms = "rw-r--r--"\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config([write(tmp_path, "t.hcl", text)])
    assert (info.value.line, info.value.field) == (9, "template.perms")
    assert "invalid file mode" in str(info.value)


@pytest.mark.parametrize("text,field", [
    ('template {\n destination = "x"\n sauce = "y"\n}\n', "template.sauce"),
    ('template {\n source = "x"\n}\n', "template.destination"),
    ('template {\n source = "x"\n contents = "y"\n destination = "z"\n}\n', "template.source"),
    ('consul {\n retry {\n attempts = -1\n }\n}\n', "retry.attempts"),
    ('wait {\n min = "soon"\n}\n', "wait"),
    ('haproxy {\n mode = "magic"\n}\n', "haproxy.mode"),
    ('colour = "blue"\n', "colour"),
])
def test_config_mistakes_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([write(tmp_path, "t.hcl", text)])
    assert info.value.field == field and info.value.line is not None


def test_invalid_json_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([write(tmp_path, "t.json", '{\n "template": [\n }')])
    assert info.value.line == 3


def test_durations_and_waits() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("1m30s") == 90 and parse_duration(2) == 2.0
    assert parse_wait("2s") == WaitConfig(2.0, 8.0) and parse_wait("1s:5s") == WaitConfig(1.0, 5.0)
    with pytest.raises(ValueError):
        parse_duration("5 parsecs")
    with pytest.raises(ValueError, match="shorter than min"):
        parse_wait("5s:1s")


def test_template_flag_allows_colons_in_command() -> None:
    flag = parse_template_flag("in.j2:/etc/out.cfg:sh -c 'echo a:b'")
    assert (flag.source, flag.destination, flag.command) == ("in.j2", "/etc/out.cfg", "sh -c 'echo a:b'")
    assert parse_template_flag("in.j2:out").command is None
    with pytest.raises(ConfigError, match="source:destination"):
        parse_template_flag("only-source")


def test_flags_in_every_spelling_override_files_and_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "https://env.example:8501")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "env-token")
    path = write(tmp_path, "t.hcl", 'consul {\n address = "file.example:8500"\n}\n'
                                    'template {\n contents = "x"\n destination = "x.out"\n}\n')
    args = build_parser().parse_args([f"-config={path}", "--template", "a.j2:a.out:echo hi", "-wait=1s:2s",
                                      "-once", "--dry", "-log-level", "debug", "-metrics-addr=127.0.0.1:0"])
    config = build_config(args)
    assert config.consul.address == "http://file.example:8500" and config.consul.token == "env-token"
    assert [t.destination for t in config.templates] == ["x.out", "a.out"]
    assert config.wait == WaitConfig(1.0, 2.0) and config.once and config.dry
    assert (config.log_level, config.metrics_addr) == ("debug", "127.0.0.1:0")
    config = build_config(build_parser().parse_args(["-template", "a:b", "-consul-addr", "127.0.0.1:9",
                                                     "-token", "flag-token"]))
    assert config.consul.address == "http://127.0.0.1:9" and config.consul.token == "flag-token"
    monkeypatch.delenv("CONSUL_HTTP_ADDR")
    config = build_config(build_parser().parse_args(["-template", "a:b"]))
    assert config.consul.address == "http://127.0.0.1:8500"


def test_whole_config_checks() -> None:
    with pytest.raises(ConfigError, match="no templates"):
        build_config(build_parser().parse_args([]))
    with pytest.raises(ConfigError, match="two templates write"):
        build_config(build_parser().parse_args(["-template", "a:x", "-template", "b:x"]))
