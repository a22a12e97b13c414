"""Kubernetes manifests (``deploy/k8s``), checked without a cluster (none exists here or in CI).

* Both overlays (``gpu``, ``cpu``), and each with the ``bundle-init`` component enabled the
  way docs/deploy.md says, are rendered with ``kubectl kustomize``.
* Every rendered object is validated, strictly (unknown fields are errors), against the
  Kubernetes OpenAPI schemas of the oldest and the newest version pinned below, with
  ``kubernetes-validate`` (the ``dev`` extra).
* The manifests are cross-checked against the code they deploy: the probes hit routes the
  FastAPI app has, on the port the service listens on; the pod runs as the uid/gid the
  Dockerfile creates; every ``BONEXR_*`` name is a field of ``service.settings.Settings``;
  every path the service writes is a mounted volume under a read-only root filesystem; the
  shutdown budget covers the service's drain; references (ConfigMap, Secret, PVCs,
  selectors) resolve.
* ``checkov`` scans the rendered YAML: zero failed checks, and exactly the skips listed in
  ``CHECKOV_SKIPS``, each justified in an annotation on the Deployment. checkov pins its
  dependencies too tightly to share ``.venv``; ``scripts/ensure-checkov`` installs it,
  pinned, into ``.venv-checkov/`` (this test runs the script; it is a no-op once done).

A missing tool skips its test locally but fails it under CI (``CI`` set), as in
tests/test_deploy.py and tests/test_page.py, so CI never goes green by skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.tools import missing

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "Dockerfile"
ENSURE_CHECKOV = REPO / "scripts" / "ensure-checkov"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
OVERLAYS = ("gpu", "cpu")
BUNDLE_INIT = "bundle-init"
#: Every rendering checked: the two overlays, and each with the bundle-init component.
VARIANTS = (*OVERLAYS, *(f"{overlay}+{BUNDLE_INIT}" for overlay in OVERLAYS))
NAMESPACE = "bonexr"
#: Kubernetes versions whose schemas every object must satisfy: the oldest the manifests
#: claim to support (docs/deploy.md) and the newest kubernetes-validate 1.37 ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
#: checkov checks that are skipped on purpose (reasons: annotations in base/deployment.yaml).
CHECKOV_SKIPS = {
    "CKV_K8S_43": "image digest: the image is built by its user; pinned via kustomize images",
    "CKV_K8S_35": "secret as env var: BONEXR_API_KEYS has no file source in the service",
}
#: Written by the service besides its upload store: large multipart bodies spool there.
TMP = "/tmp"

Object = dict[str, Any]


# ------------------------------------------------------------------------ tools


def kustomize_command() -> list[str]:
    """``kubectl kustomize`` (kubectl >= 1.14 embeds kustomize), else a standalone kustomize."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    missing("kubectl (or kustomize)", "install kubectl to render deploy/k8s")
    raise AssertionError("unreachable")


def render(directory: Path) -> str:
    result = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kustomize failed for {directory}:\n{result.stderr}"
    return result.stdout


def load_all(text: str) -> list[Object]:
    import yaml

    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_compose(path: Path) -> Object:
    """A compose file, ignoring compose's own YAML tags (``!reset``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    data = yaml.load(path.read_text(), Loader=Loader)
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------------ what the code says


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def dockerfile_ids() -> tuple[int, int]:
    """uid and gid of the service user the Dockerfile creates (and runs as)."""
    text = dockerfile()
    uid = re.search(r"useradd\b[^\n]*?--uid\s+(\d+)", text)
    gid = re.search(r"groupadd\b[^\n]*?--gid\s+(\d+)", text)
    user = re.search(r"^USER\s+(\d+):(\d+)\s*$", text, re.MULTILINE)
    assert uid and gid and user, "Dockerfile: useradd --uid, groupadd --gid or USER not found"
    ids = (int(uid.group(1)), int(gid.group(1)))
    assert (int(user.group(1)), int(user.group(2))) == ids, "USER is not the created user"
    return ids


def dockerfile_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", dockerfile())
    assert match, f"Dockerfile sets no {name}"
    return match.group(1)


def dockerfile_volumes() -> list[str]:
    volumes: list[str] = []
    for match in re.finditer(r"^VOLUME\s+(\[.*\])\s*$", dockerfile(), re.MULTILINE):
        volumes += json.loads(match.group(1))
    return volumes


def setting_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix")
    assert prefix == "BONEXR_"
    return {f"{prefix}{field.upper()}" for field in Settings.model_fields}


def get_routes() -> set[str]:
    """``/path`` of every GET route of the service's app."""
    from fastapi import FastAPI

    from service.doors.http.routes import api_router

    app = FastAPI()
    app.include_router(api_router(auth_enabled=False))
    paths = app.openapi()["paths"]
    return {path for path, methods in paths.items() if "get" in methods}


# ------------------------------------------------------------------------ rendering


@pytest.fixture(scope="module")
def rendered_text(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each variant's ``kubectl kustomize`` output. The bundle-init variants are rendered from
    a copy of deploy/k8s whose overlay lists the component, as a user enables it."""
    out: dict[str, str] = {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}
    for overlay in OVERLAYS:
        copy = tmp_path_factory.mktemp(f"k8s-{overlay}-{BUNDLE_INIT}") / "k8s"
        shutil.copytree(K8S, copy)
        kustomization = copy / "overlays" / overlay / "kustomization.yaml"
        text = kustomization.read_text()
        assert f"#   - ../../components/{BUNDLE_INIT}" in text, "the documented line is gone"
        kustomization.write_text(text + f"components:\n  - ../../components/{BUNDLE_INIT}\n")
        out[f"{overlay}+{BUNDLE_INIT}"] = render(copy / "overlays" / overlay)
    return out


@pytest.fixture(scope="module")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[Object]]:
    return {variant: load_all(text) for variant, text in rendered_text.items()}


def one(objects: list[Object], kind: str, name: str | None = None) -> Object:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[Object]) -> Object:
    spec: Object = one(objects, "Deployment", "bonexr")["spec"]["template"]["spec"]
    return spec


def main_container(objects: list[Object]) -> Object:
    containers = pod_spec(objects)["containers"]
    assert [c["name"] for c in containers] == ["bonexr"]
    container: Object = containers[0]
    return container


def all_containers(objects: list[Object]) -> Iterator[Object]:
    spec = pod_spec(objects)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config(objects: list[Object]) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap")["data"]
    return data


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (``1536Mi``, ``3Gi``, ``500m``, ``2``) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


# ------------------------------------------------------------------------ schema and wiring


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[Object]], variant: str
) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate", "pip install -e '.[dev]'")
    objects = rendered[variant]
    kinds = {o["kind"] for o in objects}
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{obj['kind']}/{obj['metadata']['name']}"
                pytest.fail(f"{variant}: {name} invalid for Kubernetes {version}: {exc.message}")
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "bonexr", obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    assert one(objects, "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert one(objects, "PodDisruptionBudget")["apiVersion"] == "policy/v1"


@pytest.mark.parametrize("variant", VARIANTS)
def test_references_and_selectors_resolve(rendered: dict[str, list[Object]], variant: str) -> None:
    objects = rendered[variant]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    deployment = one(objects, "Deployment", "bonexr")
    spec = pod_spec(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert ("ServiceAccount", spec["serviceAccountName"]) in names
    for volume in spec["volumes"]:
        if claim := volume.get("persistentVolumeClaim"):
            assert ("PersistentVolumeClaim", claim["claimName"]) in names
    for container in all_containers(objects):
        for source in container.get("envFrom", []):
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
        for env in container.get("env", []):
            if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                if ref.get("optional"):  # created out of band (the records database URL)
                    assert ref["name"] == "bonexr-database", ref
                    continue
                secret = one(objects, "Secret", ref["name"])
                assert ref["key"] in secret["data"]
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounted <= {v["name"] for v in spec["volumes"]}

    def selects_pods(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert deployment["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "bonexr"}
    assert selects_pods(one(objects, "Service")["spec"]["selector"])
    assert selects_pods(one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects_pods(one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    target = one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "bonexr")


# ------------------------------------------------------------------------ against the code


@pytest.mark.parametrize("variant", OVERLAYS)
def test_probes_hit_real_routes_on_the_service_port(
    rendered: dict[str, list[Object]], variant: str
) -> None:
    objects = rendered[variant]
    container = main_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = int(dockerfile_env("BONEXR_PORT"))
    assert re.search(rf"^EXPOSE\s+{port}\s*$", dockerfile(), re.MULTILINE)
    assert int(config(objects)["BONEXR_PORT"]) == port
    assert ports == {"http": port}

    def probe(name: str) -> tuple[str, int]:
        get = container[name]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    routes = get_routes()
    assert {"/ready", "/health"} <= routes
    assert probe("startupProbe") == ("/ready", port)
    assert probe("readinessProbe") == ("/ready", port)
    assert probe("livenessProbe") == ("/health", port)

    service = one(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == 80
    assert ports[service_port["targetPort"]] == port
    [rule] = one(objects, "NetworkPolicy")["spec"]["ingress"]
    assert [ports.get(p["port"], p["port"]) for p in rule["ports"]] == [port]
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] in routes


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_runs_as_the_dockerfile_user_locked_down(
    rendered: dict[str, list[Object]], variant: str
) -> None:
    uid, gid = dockerfile_ids()
    objects = rendered[variant]
    spec = pod_spec(objects)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    # Service links would set BONEXR_PORT=tcp://... for the Service named "bonexr".
    assert spec["enableServiceLinks"] is False
    for container in all_containers(objects):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert (context.get("runAsUser", uid), context.get("runAsGroup", gid)) == (uid, gid)
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context.get("privileged", False) is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        resources = container["resources"]
        for key in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[key]), (container["name"], key)
    labels = one(objects, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_path_the_service_writes_is_a_volume(
    rendered: dict[str, list[Object]], variant: str
) -> None:
    objects = rendered[variant]
    settings = config(objects)
    container = main_container(objects)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}

    upload_dir = settings["BONEXR_UPLOAD_DIR"]
    assert upload_dir == dockerfile_env("BONEXR_UPLOAD_DIR")
    assert "BONEXR_UPLOAD_STORE" not in settings  # an s3:// store would make the volume moot
    writes = {upload_dir, TMP, *dockerfile_volumes()}
    for path in writes:
        assert path in mounts, f"{path} is written by the service but not a mounted volume"
        assert not mounts[path].get("readOnly", False), path
    assert "emptyDir" in volumes[mounts[TMP]["name"]]
    assert "persistentVolumeClaim" in volumes[mounts[upload_dir]["name"]]

    models_dir = settings["BONEXR_MODELS_DIR"]
    assert models_dir == dockerfile_env("BONEXR_MODELS_DIR")
    assert mounts[models_dir]["readOnly"] is True
    models = volumes[mounts[models_dir]["name"]]
    if BUNDLE_INIT in variant:
        assert set(models) == {"name", "emptyDir"}
    else:
        assert models["persistentVolumeClaim"] == {"claimName": "bonexr-models", "readOnly": True}
    # Nothing else is writable: every other mount is one of the above.
    assert set(mounts) == writes | {models_dir}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_bonexr_variable_is_a_setting(
    rendered: dict[str, list[Object]], variant: str
) -> None:
    known = setting_names()
    objects = rendered[variant]
    named = set(config(objects))
    for container in all_containers(objects):
        named |= {e["name"] for e in container.get("env", [])}
    named |= set(one(objects, "Secret")["data"])
    bonexr_names = {n for n in named if n.startswith("BONEXR_")}
    assert bonexr_names == named, f"non-BONEXR_ variables: {named - bonexr_names}"
    assert bonexr_names <= known, f"not settings of service/settings.py: {bonexr_names - known}"
    assert "BONEXR_API_KEYS" in bonexr_names


def test_every_bonexr_name_in_the_sources_is_a_setting() -> None:
    """Commented options too (BONEXR_UPLOAD_STORE, BONEXR_RETENTION_HOURS, ...)."""
    known = setting_names()
    mentioned: dict[str, set[str]] = {}
    for path in sorted(K8S.rglob("*")):
        if path.is_file():
            for name in re.findall(r"\bBONEXR_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
                mentioned.setdefault(name, set()).add(str(path.relative_to(REPO)))
    unknown = {name: sorted(files) for name, files in mentioned.items() if name not in known}
    assert not unknown, f"not settings of service/settings.py: {unknown}"
    assert "# BONEXR_UPLOAD_STORE=" in (K8S / "base" / "config.env").read_text()


def test_gpu_only_in_the_gpu_overlay_and_images_as_compose_tags_them(
    rendered: dict[str, list[Object]],
) -> None:
    compose_gpu = load_compose(REPO / "docker-compose.yml")["services"]["bonexr"]["image"]
    compose_cpu = load_compose(REPO / "docker-compose.cpu.yml")["services"]["bonexr"]["image"]
    assert (compose_gpu, compose_cpu) == ("bonexr:gpu", "bonexr:cpu")
    for variant, objects in rendered.items():
        device = variant.split("+")[0]
        container = main_container(objects)
        assert container["image"] == {"gpu": compose_gpu, "cpu": compose_cpu}[device]
        assert config(objects)["BONEXR_DEVICE"] == device
        gpus = [
            c["resources"].get(key, {}).get("nvidia.com/gpu")
            for c in all_containers(objects)
            for key in ("requests", "limits")
        ]
        if device == "gpu":
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, variant
            assert [g for g in gpus if g is not None] == [1], variant
        else:
            assert gpus == [None] * len(gpus), variant
        # Every container built from this repository runs the service's image.
        for other in all_containers(objects):
            if other["image"].startswith("bonexr:"):
                assert other["image"] == container["image"], other["name"]


@pytest.mark.parametrize("variant", OVERLAYS)
def test_memory_is_sized_from_the_measured_rss(
    rendered: dict[str, list[Object]], variant: str
) -> None:
    resources = main_container(rendered[variant])["resources"]
    request = quantity(resources["requests"]["memory"])
    limit = quantity(resources["limits"]["memory"])
    # docs/benchmarks.md: peak RSS 0.73 GB with four ResNet50 models on CPU
    # (about 1 GB in an older run).
    assert request >= 1.5 * 2**30
    assert limit >= 2 * request
    assert quantity(resources["limits"]["cpu"]) >= quantity(resources["requests"]["cpu"])
    if variant == "cpu":
        threads = int(config(rendered[variant])["BONEXR_INTRA_OP_THREADS"])
        assert threads == quantity(resources["requests"]["cpu"])


@pytest.mark.parametrize("variant", OVERLAYS)
def test_shutdown_outlasts_the_drain(rendered: dict[str, list[Object]], variant: str) -> None:
    objects = rendered[variant]
    spec = pod_spec(objects)
    container = main_container(objects)
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:  # Kubernetes' native action
        sleep_s = int(pre_stop["sleep"]["seconds"])
    else:  # a sleep binary: the runtime image must have one (Ubuntu-based, not distroless)
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        sleep_s = int(command[1])
        bases = re.findall(r"^FROM\s+(\S+)\s+AS\s+base-", dockerfile(), re.MULTILINE)
        assert bases and all("ubuntu" in base for base in bases), bases
    assert sleep_s >= 5  # endpoint removal has to reach the proxies
    timeout_s = float(
        config(objects).get(
            "BONEXR_PREDICT_TIMEOUT_S", Settings.model_fields["predict_timeout_s"].default
        )
    )
    drain_s = int(timeout_s) + 5  # service/doors/server.py: timeout_graceful_shutdown
    assert spec["terminationGracePeriodSeconds"] > sleep_s + drain_s


def test_scaling_and_disruption_budget(rendered: dict[str, list[Object]]) -> None:
    for variant, objects in rendered.items():
        deployment = one(objects, "Deployment")
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
        [metric] = hpa["metrics"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
        assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"], variant
        pdb = one(objects, "PodDisruptionBudget")["spec"]
        # A budget the HPA's minimum can always satisfy with one pod to spare.
        assert pdb["minAvailable"] < hpa["minReplicas"], variant
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0, variant


def test_placeholder_api_key_is_refused_at_start(rendered: dict[str, list[Object]]) -> None:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh to run the init container's check")
    objects = rendered["cpu"]
    [check] = [c for c in all_containers(objects) if c["name"] == "check-api-keys"]
    assert check["command"][0] == "sh"
    import base64

    placeholder = base64.b64decode(one(objects, "Secret")["data"]["BONEXR_API_KEYS"]).decode()
    cases = {placeholder: 1, f"real-key, {placeholder}": 1, "k1,k2": 0, "": 0}
    for keys, expected in cases.items():
        result = subprocess.run(
            [sh, *check["command"][1:]],
            env={"BONEXR_API_KEYS": keys, "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == expected, (keys, result.stderr)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bundle_init_copies_then_verifies_with_the_service_image(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    from bonexr.cli import build_parser

    objects = rendered[f"{overlay}+{BUNDLE_INIT}"]
    init = {c["name"]: c for c in pod_spec(objects)["initContainers"]}
    assert list(init) == ["check-api-keys", "fetch-bundle", "verify-bundle"]
    fetch, verify = init["fetch-bundle"], init["verify-bundle"]
    models_dir = config(objects)["BONEXR_MODELS_DIR"]
    bundle = config(objects)["BONEXR_BUNDLE"]
    assert not Path(bundle).is_absolute(), "the bundle must be a folder of the copied image"

    [fetch_mount] = fetch["volumeMounts"]
    assert fetch_mount["name"] == "models" and not fetch_mount.get("readOnly", False)
    assert fetch["command"][-1].rstrip("/") == fetch_mount["mountPath"]

    command = verify["command"]
    assert command == ["bonexr", "verify", f"{models_dir}/$(BONEXR_BUNDLE)"]
    assert build_parser().parse_args(command[1:]).command == "verify"
    assert verify["image"] == main_container(objects)["image"]
    verify_mounts = {m["mountPath"]: m for m in verify["volumeMounts"]}
    assert verify_mounts[models_dir]["name"] == "models"
    assert verify_mounts[models_dir]["readOnly"] is True
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("PersistentVolumeClaim", "bonexr-models") not in names


# ------------------------------------------------------------------------ policy scan


def checkov() -> Path:
    subprocess.run([str(ENSURE_CHECKOV)], check=False, timeout=900)
    if not os.access(CHECKOV, os.X_OK):
        missing("checkov", "run scripts/ensure-checkov (it installs into .venv-checkov/)")
    return CHECKOV


def pinned_checkov_version() -> str:
    match = re.search(r"^CHECKOV_VERSION=(\S+)$", ENSURE_CHECKOV.read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def test_checkov_finds_nothing_beyond_the_justified_skips(
    rendered_text: dict[str, str], tmp_path: Path
) -> None:
    executable = checkov()
    scan = tmp_path / "rendered"
    scan.mkdir()
    for variant, text in rendered_text.items():
        (scan / f"{variant.replace('+', '-')}.yaml").write_text(text)
    (scan / "train-job.yaml").write_text(render(K8S / "jobs" / "train"))
    result = subprocess.run(
        [
            str(executable),
            "--directory",
            str(scan),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",  # offline: no guideline links from the vendor's API
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.stdout.strip(), f"no report (rc {result.returncode}):\n{result.stderr}"
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one entry per framework
        [report] = [r for r in report if r["check_type"] == "kubernetes"]
    summary = report["summary"]
    assert summary["checkov_version"] == pinned_checkov_version()
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 10 * len(rendered_text)
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} == set(CHECKOV_SKIPS)
    for check in skipped:
        comment = check["check_result"].get("suppress_comment", "")
        assert len(comment) > 40 and comment != "No comment provided", check["check_id"]
        assert check["resource"].startswith(("Deployment.", "Job.")), check["resource"]
    assert summary["passed"] > 0
    assert result.returncode == 0


# ------------------------------------------------------------------ the training Job


@pytest.fixture(scope="module")
def train_job() -> list[Object]:
    return load_all(render(K8S / "jobs" / "train"))


def test_the_training_job_validates_and_takes_one_gpu(train_job: list[Object]) -> None:
    import kubernetes_validate

    for obj in train_job:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"]["namespace"] == NAMESPACE
    job = one(train_job, "Job", "bonexr-train")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    (container,) = spec["containers"]
    assert container["image"] == "bonexr-train:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) == set(volumes)
    claims = {mounts[p]: volumes[mounts[p]]["persistentVolumeClaim"]["claimName"]
              for p in ("/data", "/app/runs", "/app/models")}  # fmt: skip
    base = {o["metadata"]["name"] for o in load_all(render(K8S / "overlays" / "cpu"))
            if o["kind"] == "PersistentVolumeClaim"}  # fmt: skip
    assert claims["models"] in base  # the bundle lands where the service reads bundles
    assert claims["runs"] in {o["metadata"]["name"] for o in train_job}
    writable = {"/app/runs", "/app/models", "/tmp", "/app/.keras", "/dev/shm"}
    assert writable <= set(mounts)  # everything training writes is a volume


def test_the_training_job_arguments_are_bonexr_train_options(train_job: list[Object]) -> None:
    """The image's ENTRYPOINT plus the Job's args parse as a real ``bonexr train`` command
    line (a renamed flag would otherwise surface only on the GPU node)."""
    from bonexr.cli import build_parser
    from training.cli import config_from_args
    from training.config import TrainConfig

    dockerfile = (REPO / "Dockerfile.train").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    (container,) = one(train_job, "Job")["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args([*entrypoint[1:], *container["args"]])
    config = config_from_args(args, TrainConfig())
    assert (config.device, config.recipe, config.mixed_precision) == ("gpu", "mura-paper", True)
    assert config.part_backbone == "densenet169" and args.resume
