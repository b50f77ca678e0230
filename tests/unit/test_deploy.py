"""deploy/: the compose file, the Dockerfile and nginx.conf agree with the app and its tests.

Docker cannot run here, so this checks what a typo would break in production: the compose
file parses and every service, network and volume it names exists; every STUDYRAG_ variable
it (or the Dockerfile) sets is a real setting with a valid value; the workers set what the
multi-worker test sets for the same roles; nginx.conf parses (crossplane) and every
streaming route of the app (WebSocket or Server-Sent Events, found in the app's route table)
lands on a location that streams; Host and X-Forwarded-* reach every location; the upload
locations' client_max_body_size matches the workers' upload limits. bench/fanout_lb.py runs
the same nginx.conf in front of real workers.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crossplane
import pytest
import yaml
from fastapi.routing import APIWebSocketRoute
from pydantic import BaseModel

from studyrag.api.errors import max_body_bytes
from studyrag.api.routes.notebooks import MAX_FILES_PER_UPLOAD
from studyrag.app import create_app
from studyrag.config import Settings
from tests.api.test_access_policy import routes

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
NGINX = DEPLOY / "nginx.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = DEPLOY / "env.example"
MULTI_WORKER_TEST = ROOT / "tests" / "e2e" / "test_multi_worker.py"

# What the multi-worker test sets that is a test's tuning, not a role of the topology.
TEST_TUNING = {
    "STUDYRAG_LLM__MAX_TOKENS": "short answers keep the test fast",
    "STUDYRAG_LLM__N_THREADS": "two workers share this machine's 2 cores",
    "STUDYRAG_CHAT__REWRITE_FOLLOWUPS": "one model call per answer in the test",
    "STUDYRAG_API__RATE_LIMIT_PER_MINUTE": "the test asks many questions from one address",
    "STUDYRAG_JOBS__HEARTBEAT_SECONDS": "a killed worker's job moves within seconds in the test",
    "STUDYRAG_JOBS__STALLED_AFTER_SECONDS": "a killed worker's job moves within seconds",
    "STUDYRAG_JOBS__RETRY_WAIT_SECONDS": "retries within the test's time",
}
# Sections whose settings are the roles every worker must share (docs/operations.md):
# compose may set none the multi-worker test does not exercise.
ROLE_SECTIONS = {"database", "vectors", "broker", "jobs"}
MULTIPART_SLACK = 64 * 1024  # the framing the upload routes allow beyond the file itself
MiB = 1024 * 1024


# --- compose ------------------------------------------------------------------------------
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against deploy/.env's example."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"compose needs ${{{name}}} ({arg}): add it to deploy/env.example")

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    values = env_example()
    return {str(k): interpolate(str(v), values) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def workers(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {
        name: svc
        for name, svc in data["services"].items()
        if command(svc)[:2] == ["studyrag", "serve"]
    }
    assert len(found) >= 2, f"the compose file runs {len(found)} API workers, not 2 or more"
    return found


def dockerfile_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line):
                values[key] = value
    return values


def test_compose_parses_and_names_only_what_it_defines() -> None:
    data = compose()
    services = data["services"]
    networks = set(data.get("networks") or {})
    volumes = set(data.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on {dep!r}, which is not a service"
        nets = svc.get("networks") or []
        for net in nets if isinstance(nets, list) else nets.keys():
            assert net in networks, f"{name} joins network {net!r}, which is not defined"
        for mount in svc.get("volumes") or []:
            source = str(mount).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts volume {source!r}: not defined"
            elif source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}: no such file"
        build = svc.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        assert "healthcheck" in svc or name == "nginx", f"{name} has no healthcheck"
    # Fixed addresses (nginx's is the trusted proxy; workers keep theirs across restarts)
    # are distinct and inside their network's subnet.
    import ipaddress

    fixed: list[str] = []
    for net_name, net in (data.get("networks") or {}).items():
        subnets = [ipaddress.ip_network(c["subnet"]) for c in net["ipam"]["config"]]
        for svc in services.values():
            joined = svc.get("networks")
            if isinstance(joined, dict) and (joined.get(net_name) or {}).get("ipv4_address"):
                address = ipaddress.ip_address(joined[net_name]["ipv4_address"])
                assert any(address in subnet for subnet in subnets), address
                fixed.append(str(address))
    assert len(fixed) == len(set(fixed)) >= 3, fixed
    # The topology of issue 13: nginx, 2+ workers, redis, postgres, chroma, ollama.
    for role in ("nginx", "redis", "postgres", "chroma", "ollama"):
        assert role in services, f"no {role} service"
    assert "chroma" in command(services["chroma"])[:2] and "run" in command(services["chroma"])


def test_workers_are_health_checked_on_health() -> None:
    for name, svc in workers(compose()).items():
        check = " ".join(str(part) for part in svc["healthcheck"]["test"])
        assert "/health" in check, f"{name}'s healthcheck does not ask /health"
        assert "--host" in command(svc) and "0.0.0.0" in command(svc)


def test_every_url_a_worker_uses_names_a_service() -> None:
    data = compose()
    for name, svc in workers(data).items():
        env = environment(svc)
        for key in (
            "STUDYRAG_DATABASE__URL",
            "STUDYRAG_VECTORS__URL",
            "STUDYRAG_BROKER__URL",
            "STUDYRAG_LLM__OLLAMA_URL",
        ):
            host = re.sub(r"^[a-z0-9+]+://([^@/]*@)?", "", env[key]).split("/")[0].split(":")[0]
            assert host in data["services"], f"{name}: {key} names {host!r}, not a service"
            assert host in (svc.get("depends_on") or {}) or any(
                host in (other.get("depends_on") or {})
                for other in workers(data).values()
                if other is not svc
            ), f"{name} does not wait for {host}"


def _setting_path(variable: str) -> str:
    """STUDYRAG_A__B -> a.b, failing for a name no setting has (pydantic ignores those)."""
    assert variable.startswith("STUDYRAG_"), variable
    parts = variable.removeprefix("STUDYRAG_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        fields = model.model_fields
        assert part in fields, f"{variable}: {'.'.join(parts[: i + 1])} is not a setting"
        annotation = fields[part].annotation
        last = i == len(parts) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            assert not last, f"{variable} names a section, not a setting"
            model = annotation
        else:
            assert last, f"{variable}: {'.'.join(parts[: i + 1])} has no sub-settings"
    return ".".join(parts)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Settings:
    """Settings built from exactly this environment, as the worker would build them."""
    import os

    for key in list(os.environ):
        if key.startswith("STUDYRAG_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STUDYRAG_CONFIG_FILE", str(tmp / "absent.toml"))
    return Settings()


def _value(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_every_studyrag_variable_is_a_real_setting_with_a_valid_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = compose()
    sources = {name: environment(svc) for name, svc in data["services"].items()}
    sources["Dockerfile"] = dockerfile_env()
    checked = 0
    for where, env in sources.items():
        ours = {k: v for k, v in env.items() if k.startswith("STUDYRAG_")}
        for variable in ours:
            _setting_path(variable)
            checked += 1
        settings = settings_from(ours, monkeypatch, tmp_path)  # raises on an invalid value
        for variable, raw in ours.items():
            value = _value(settings, _setting_path(variable))
            shown = str(value) if not isinstance(value, list) else str(value).replace("'", '"')
            assert raw.strip() in (shown, str(value).lower()) or _same(raw, value), (
                f"{where}: {variable}={raw!r} became {value!r}"
            )
    assert checked >= 12


def _same(raw: str, value: Any) -> bool:
    import json

    try:
        return bool(json.loads(raw) == value)
    except ValueError:
        try:
            return float(raw) == float(value)
        except (TypeError, ValueError):
            return False


def test_a_misspelt_or_invalid_variable_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The checks above would catch these (pydantic alone ignores the unknown name).
    with pytest.raises(AssertionError, match="not a setting"):
        _setting_path("STUDYRAG_BROKER__URLS")
    with pytest.raises(AssertionError, match="names a section"):
        _setting_path("STUDYRAG_BROKER")
    with pytest.raises(ValueError, match="trusted_proxies"):
        settings_from({"STUDYRAG_API__TRUSTED_PROXIES": '["nginx"]'}, monkeypatch, tmp_path)


def multi_worker_variables() -> set[str]:
    """The STUDYRAG_ names tests/e2e/test_multi_worker.py gives its workers."""
    tree = ast.parse(MULTI_WORKER_TEST.read_text())
    names = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"STUDYRAG_[A-Z0-9_]+", node.value)
    }
    assert "STUDYRAG_BROKER__URL" in names, "the multi-worker test's settings were not found"
    return names


def test_workers_set_what_the_multi_worker_test_sets_for_the_same_roles() -> None:
    data = compose()
    tested = multi_worker_variables()
    shared = tested - set(TEST_TUNING)
    envs = {name: environment(svc) for name, svc in workers(data).items()}
    for name, env in envs.items():
        missing = sorted(shared - set(env))
        assert not missing, f"{name} does not set {missing}, which the multi-worker test sets"
        untested = sorted(
            k
            for k in env
            if k.startswith("STUDYRAG_")
            and k.split("__")[0].removeprefix("STUDYRAG_").lower() in ROLE_SECTIONS
            and k not in tested
        )
        assert not untested, f"{name} sets {untested}: no multi-worker test exercises them"
    # Every worker of one deployment: the same stores, broker and namespace.
    first = next(iter(envs.values()))
    for name, env in envs.items():
        assert env == first, f"{name}'s environment differs from the first worker's"
    for variable in TEST_TUNING:
        assert variable in tested, f"{variable} is listed as tuning but no longer in the test"


# --- nginx --------------------------------------------------------------------------------
@dataclass
class Block:
    directives: dict[str, list[list[str]]]
    parent: Block | None = None
    modifier: str = ""
    pattern: str = ""
    children: list[Block] = field(default_factory=list)

    def own(self, name: str) -> list[list[str]]:
        return self.directives.get(name, [])

    def get(self, name: str) -> list[list[str]]:
        """A directive as nginx applies it here: the nearest level that sets it (nginx
        does not merge lists such as proxy_set_header across levels)."""
        block: Block | None = self
        while block is not None:
            if name in block.directives:
                return block.directives[name]
            block = block.parent
        return []

    def one(self, name: str) -> str | None:
        values = self.get(name)
        return " ".join(values[-1]) if values else None

    def headers(self) -> dict[str, str]:
        return {args[0].lower(): " ".join(args[1:]) for args in self.get("proxy_set_header")}


def _block(parsed: list[dict[str, Any]], parent: Block | None, args: list[str]) -> Block:
    block = Block({}, parent)
    if args:
        block.modifier, block.pattern = (args[0], args[1]) if len(args) == 2 else ("", args[0])
    for item in parsed:
        if "block" in item:
            child = _block(item["block"], block, item["args"])
            child.directives["__name__"] = [[item["directive"]]]
            block.children.append(child)
        else:
            block.directives.setdefault(item["directive"], []).append(item["args"])
    return block


def nginx() -> Block:
    parsed = crossplane.parse(str(NGINX), single=True, comments=False)
    assert parsed["status"] == "ok" and not parsed["errors"], parsed["errors"]
    return _block(parsed["config"][0]["parsed"], None, [])


def children(block: Block, name: str) -> list[Block]:
    return [c for c in block.children if c.directives["__name__"] == [[name]]]


def server() -> tuple[Block, Block]:
    (http,) = children(nginx(), "http")
    (srv,) = children(http, "server")
    return http, srv


def location_for(srv: Block, path: str) -> Block:
    """The location nginx picks for `path` (exact, longest prefix, ^~, regexes in order)."""
    locations = children(srv, "location")
    for loc in locations:
        if loc.modifier == "=" and loc.pattern == path:
            return loc
    prefixes = [
        loc for loc in locations if loc.modifier in ("", "^~") and path.startswith(loc.pattern)
    ]
    best = max(prefixes, key=lambda loc: len(loc.pattern), default=None)
    if best is not None and best.modifier == "^~":
        return best
    for loc in locations:
        flags = re.IGNORECASE if loc.modifier == "~*" else 0
        if loc.modifier in ("~", "~*") and re.search(loc.pattern, path, flags):
            return loc
    assert best is not None, f"no nginx location serves {path}"
    return best


def sample(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "0123456789abcdef", template)


def _seconds(value: str | None) -> float:
    """An nginx time (60, 60s, 5m, 1h) in seconds; nginx's 60 s when unset."""
    if value is None:
        return 60.0
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _bytes(value: str | None) -> int:
    """An nginx size (1m, 512k, 100) in bytes; nginx's 1m when unset."""
    number, unit = re.fullmatch(r"(\d+)([kKmMgG])?", value or "1m").groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "k": 1024, "m": MiB, "g": 1024 * MiB}[unit and unit.lower()]


def streaming_routes() -> tuple[set[str], set[str]]:
    """(WebSocket paths, Server-Sent Events paths) of the app, from its route table."""
    app = create_app()
    sockets = {r.path for r in routes(app.routes) if isinstance(r, APIWebSocketRoute)}
    events = {
        path
        for path, operations in app.openapi()["paths"].items()
        for operation in operations.values()
        for response in operation.get("responses", {}).values()
        if "text/event-stream" in response.get("content", {})
    }
    return sockets, events


def test_nginx_conf_parses_and_proxies_every_location_with_host_and_forwarded_headers() -> None:
    http, srv = server()
    (upstream,) = children(http, "upstream")
    locations = children(srv, "location")
    assert locations
    for loc in locations:
        where = f"location {loc.modifier} {loc.pattern}".replace("  ", " ")
        assert loc.one("proxy_pass") == f"http://{upstream.pattern}", where
        headers = loc.headers()
        # Host exactly as sent (port included): the workers' Host and Origin checks read it.
        assert headers.get("host") == "$http_host", f"{where}: Host is not passed through"
        assert headers.get("x-forwarded-for") == "$proxy_add_x_forwarded_for", where
        assert headers.get("x-forwarded-proto") == "$scheme", where
        assert loc.one("proxy_http_version") == "1.1", where


def test_nginx_upstream_is_every_worker_of_the_compose_file() -> None:
    http, _ = server()
    (upstream,) = children(http, "upstream")
    servers = {args[0] for args in upstream.own("server")}
    expected = {
        f"{name}:{command(svc)[command(svc).index('--port') + 1]}"
        for name, svc in workers(compose()).items()
    }
    assert servers == expected


def test_every_websocket_route_upgrades_through_nginx() -> None:
    http, srv = server()
    sockets, _ = streaming_routes()
    assert {"/ws/chat/{conversation_id}", "/ws/notebooks/{notebook_id}"} <= sockets
    (upgrade_map,) = [m for m in children(http, "map") if m.pattern == "$connection_upgrade"]
    assert upgrade_map.modifier == "$http_upgrade" and upgrade_map.own("default") == [["upgrade"]]
    settings = Settings()
    for path in sockets:
        loc = location_for(srv, sample(path))
        headers = loc.headers()
        assert headers.get("upgrade") == "$http_upgrade", f"{path}: no Upgrade header"
        assert headers.get("connection") == "$connection_upgrade", f"{path}: no Connection"
        assert _seconds(loc.one("proxy_read_timeout")) >= 10 * settings.api.ws_ping_interval, path


def test_every_event_stream_route_is_unbuffered_with_a_long_read_timeout() -> None:
    _, srv = server()
    _, events = streaming_routes()
    assert {"/api/chat/stream/{conversation_id}", "/api/jobs/{job_id}/events"} <= events
    settings = Settings()
    for path in events:
        loc = location_for(srv, sample(path))
        assert loc.one("proxy_buffering") == "off", f"{path} is buffered by nginx"
        assert _seconds(loc.one("proxy_read_timeout")) >= 10 * settings.api.sse_ping_interval, path
        # A keep-alive upstream connection, never "upgrade" or "close" on an event stream.
        assert loc.headers().get("connection") == "", path
    # Nothing else is unbuffered by accident.
    assert location_for(srv, "/api/chat/conversations").one("proxy_buffering") != "off"


def test_the_matcher_follows_nginx_precedence() -> None:
    _, srv = server()
    assert location_for(srv, "/ws/chat/abc").pattern == "/ws/"
    assert location_for(srv, "/api/jobs/abc/events").modifier == "~"
    assert location_for(srv, "/api/jobs/abc").pattern == "/"
    assert location_for(srv, "/api/notebooks/import").modifier == "="


def test_upload_limits_match_the_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    http, srv = server()
    env = environment(next(iter(workers(compose()).values())))
    settings = settings_from(
        {k: v for k, v in env.items() if k.startswith("STUDYRAG_")}, monkeypatch, tmp_path
    )
    one_file = settings.ingest.max_file_size_bytes + MULTIPART_SLACK
    limits = {
        "/api/documents": one_file,
        "/api/notebooks/{notebook_id}/documents": MAX_FILES_PER_UPLOAD * one_file,
        "/api/notebooks/import": settings.archive.max_archive_bytes + MULTIPART_SLACK,
    }
    uploads = {
        path
        for path, operations in create_app().openapi()["paths"].items()
        for operation in operations.values()
        if "multipart/form-data" in operation.get("requestBody", {}).get("content", {})
    }
    assert uploads == set(limits), "an upload route changed: give it its nginx limit here"
    for path, limit in limits.items():
        loc = location_for(srv, sample(path))
        allowed = _bytes(loc.one("client_max_body_size"))
        # Room for the worker's own 413 (with its error body), not a much larger window.
        assert limit <= allowed <= limit + 2 * MiB, (path, allowed, limit)
        assert loc.one("proxy_request_buffering") == "off", f"{path}: nginx spools the body"
    general = _bytes(location_for(srv, "/api/chat/message").one("client_max_body_size"))
    assert max_body_bytes(settings) <= general, "nginx refuses chat bodies the workers accept"
    assert math.isfinite(general)


# --- behind the proxy ---------------------------------------------------------------------
async def _client_seen(trusted: list[str], peer: str) -> tuple[str, str]:
    """(client address, scheme) the app sees through uvicorn configured as `serve` does."""
    import uvicorn

    from studyrag.cli.serve import proxy_options

    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(client=scope["client"][0], scheme=scope["scheme"])

    settings = Settings(api={"trusted_proxies": trusted})
    config = uvicorn.Config(app, **proxy_options(settings))
    config.load()
    scope = {
        "type": "http",
        "scheme": "http",
        "client": (peer, 40000),
        "server": ("172.30.0.21", 8000),
        "headers": [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")],
        "method": "GET",
        "path": "/",
    }
    await config.loaded_app(scope, None, None)
    return seen["client"], seen["scheme"]


async def test_forwarded_headers_are_believed_from_the_trusted_proxy_only() -> None:
    nginx_address = compose()["services"]["nginx"]["networks"]["backend"]["ipv4_address"]
    env = environment(next(iter(workers(compose()).values())))
    assert env["STUDYRAG_API__TRUSTED_PROXIES"] == f'["{nginx_address}"]'
    # From nginx: the student's address (rate limits, login attempts) and https (cookies).
    assert await _client_seen([nginx_address], nginx_address) == ("203.0.113.7", "https")
    assert await _client_seen(["172.30.0.0/24"], nginx_address) == ("203.0.113.7", "https")
    # From anyone else the headers are ignored: a client cannot choose its address.
    assert await _client_seen([nginx_address], "172.30.0.99") == ("172.30.0.99", "http")
    # The default: a proxy on the same machine only.
    assert Settings().api.trusted_proxies == ["127.0.0.1"]
