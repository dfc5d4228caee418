"""The Dockerfile, the nginx config and the Kubernetes manifests agree with the app."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from nexus.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def _instructions(text: str) -> list[tuple[str, str]]:
    """Parse a Dockerfile into (INSTRUCTION, arguments), joining continued lines."""
    joined = re.sub(r"\\\n\s*", " ", text)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions((ROOT / "Dockerfile").read_text())


def _routes(app) -> set[str]:
    return {r.rule for r in app.url_map.iter_rules()}


def test_dockerfile_runs_gunicorn_with_the_project_config(dockerfile):
    cmd = [args for word, args in dockerfile if word == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    copied = " ".join(args for word, args in dockerfile if word == "COPY")
    assert "wsgi.py" in copied and "gunicorn.conf.py" in copied


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user(dockerfile):
    stages = [args for word, args in dockerfile if word == "FROM"]
    assert len(stages) >= 2 and all("slim" in s for s in stages)
    users = [args for word, args in dockerfile if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    final_stage = dockerfile[max(i for i, (word, _) in enumerate(dockerfile) if word == "FROM"):]
    assert not any(word == "RUN" and re.search(r"\b(gcc|build-essential|apt-get install)\b", args) for word, args in final_stage)


def test_the_image_has_the_locale_text_models_name(dockerfile):
    build_stage = dockerfile[: max(i for i, (word, _) in enumerate(dockerfile) if word == "FROM")]
    assert any(word == "RUN" and "en_US.UTF-8" in args and "locale-gen" in args for word, args in build_stage)
    assert ("COPY", "--from=build /usr/lib/locale/locale-archive /usr/lib/locale/locale-archive") in dockerfile


def test_dockerfile_healthcheck_probes_a_real_route(app, dockerfile):
    check = [args for word, args in dockerfile if word == "HEALTHCHECK"][-1]
    path = re.search(r"https?://[^/'\"]+(/[\w/.-]*)", check).group(1)
    assert path in _routes(app)
    exposed = [args for word, args in dockerfile if word == "EXPOSE"]
    assert exposed == ["8080 8081"]  # HTTP, gRPC
    assert any(word == "VOLUME" and "/models" in args for word, args in dockerfile)


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tests"} <= set(ignored)


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _gunicorn_setting(name: str):
    """Read a literal setting from gunicorn.conf.py without running it (it sets up metrics dirs)."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not set in gunicorn.conf.py")


def _kind(manifests, kind):
    found = [d for d in manifests if d["kind"] == kind]
    assert found, f"no {kind} in deploy/k8s"
    return found[0]


def test_deployment_probes_name_real_routes_and_the_container_port(app, manifests):
    deployment = _kind(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["http"] == int(env["PORT"]) == 8080
    assert ports["grpc"] == int(env["NEXUS_GRPC_PORT"]) == 8081
    assert container["livenessProbe"]["grpc"] == {"port": ports["grpc"], "service": ""}  # the process serves gRPC
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["path"] in _routes(app)
        assert probe["port"] in ports or probe["port"] in ports.values()


def test_deployment_outlives_the_graceful_timeout_and_is_not_root(manifests):
    spec = _kind(manifests, "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > _gunicorn_setting("graceful_timeout")
    assert spec["securityContext"]["runAsNonRoot"] is True
    container = spec["containers"][0]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts["models"] == env["NEXUS_MODEL_DIR"]


def test_pvc_is_read_write_many_and_matches_the_deployment(manifests):
    pvc = _kind(manifests, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = _kind(manifests, "Deployment")["spec"]["template"]["spec"]
    claim = [v for v in spec["volumes"] if v["name"] == "models"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]


def test_service_targets_the_http_and_grpc_ports_and_is_scraped_by_prometheus(app, manifests):
    service = _kind(manifests, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    deployment = _kind(manifests, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in _routes(app)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_nginx_body_limit_matches_the_upload_limit():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    limit = re.search(r"client_max_body_size\s+(\d+)m;", conf).group(1)
    assert int(limit) == Settings().max_upload_mb
    assert "X-Request-ID" in conf and "keepalive" in conf
