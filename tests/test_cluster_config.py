"""Offline checks of the Ray cluster launcher configs: cluster.yaml (AWS) and examples/onprem/cluster.yaml.

Ray's own validator (the one `ray up` runs) plus the project's network/storage rules: the dashboard and MLflow
never listen on 0.0.0.0, every node exports SDAKD_TRACKING_URI / SDAKD_STORAGE_PATH, the bucket (or NFS root) is
named once. No AWS credentials, no network: the validator only reads Ray's bundled defaults and JSON schema.
The shell snippets that write ~/.sdakd_env are executed for real in a temporary HOME (and the head's MLflow command
in tests/test_cluster_mlflow_login.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"aws": ROOT / "cluster.yaml", "onprem": ROOT / "examples" / "onprem" / "cluster.yaml"}
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
# Addresses MLflow may bind: loopback, or the head's private/LAN address (a variable set on the head).
ALLOWED_BIND_HOSTS = {"127.0.0.1", "$SDAKD_HEAD_IP", "${SDAKD_HEAD_IP}"}
# Where each config names its shared storage root (exactly once) and how storage paths must start.
STORAGE_ROOT = {"aws": ("SDAKD_BUCKET", "s3://$SDAKD_BUCKET/"), "onprem": ("SDAKD_NFS_ROOT", "$SDAKD_NFS_ROOT/")}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No AWS credentials or config anywhere, and any socket connect fails the test."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during offline config validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def raw(name: str) -> dict:
    return yaml.safe_load(CONFIGS[name].read_text())


def prepared(name: str) -> dict:
    """What `ray up` validates: the config merged with the provider's defaults."""
    return prepare_config(raw(name))


def commands(cfg: dict, *keys: str) -> list[str]:
    return [c for k in (keys or COMMAND_LISTS) for c in cfg.get(k) or []]


def mlflow_command(cfg: dict) -> str:
    found = [c for c in commands(cfg, "head_start_ray_commands") if "mlflow server" in c]
    assert len(found) == 1, f"expected one `mlflow server` command in head_start_ray_commands, got {found}"
    return found[0]


def flag_values(cmd: str, *flags: str) -> list[str]:
    alternatives = "|".join(re.escape(f) for f in flags)
    return [m.group(1) for m in re.finditer(rf"(?:^|\s|\")(?:{alternatives})[= ]+\"?([^\"'\s]+)", cmd)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ray_validator_accepts_config_offline(name, offline):
    cfg = prepared(name)
    validate_config(cfg)
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_worker_bounds_and_idle_timeout(name):
    cfg_raw, cfg = raw(name), prepared(name)
    assert isinstance(cfg_raw.get("idle_timeout_minutes"), (int, float)), "idle_timeout_minutes must be set explicitly"
    assert cfg_raw["idle_timeout_minutes"] > 0
    types = cfg["available_node_types"]
    for type_name, node_type in types.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], type_name
    assert sum(t["min_workers"] for t in types.values()) <= cfg["max_workers"]
    if name == "aws":
        workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
        assert workers, "AWS config needs at least one worker node type"
        assert types[cfg["head_node_type"]]["max_workers"] == 0
        assert all(t["max_workers"] >= 1 for t in workers.values())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_command_binds_all_interfaces(name):
    text = "\n".join(commands(prepared(name)))
    for wildcard in ("0.0.0.0", "[::]", "--host ::", "--host=::"):
        assert wildcard not in text, f"a command in {CONFIGS[name].name} uses {wildcard!r}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ray_dashboard_on_loopback(name):
    heads = [c for c in commands(raw(name), "head_start_ray_commands") if "ray start" in c and "--head" in c]
    assert len(heads) == 1, heads
    assert flag_values(heads[0], "--dashboard-host") == ["127.0.0.1"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mlflow_binds_loopback_and_head_ip_only(name):
    cmd = mlflow_command(raw(name))
    hosts = flag_values(cmd, "--host", "-h")
    binds = [b.rsplit(":", 1)[0] for b in flag_values(cmd, "--bind", "-b")]
    assert len(hosts) == 1, f"one --host expected in {cmd!r}"
    assert set(hosts + binds) <= ALLOWED_BIND_HOSTS, f"MLflow binds {hosts + binds}"
    assert "127.0.0.1" in hosts + binds, "the UI tunnel (ray attach -p 5000) needs 127.0.0.1:5000"
    assert flag_values(cmd, "--port") == ["5000"]
    assert "sqlite:///$HOME/" in cmd, "backend store: sqlite on the head's own disk"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_storage_root_named_once_and_referenced(name):
    var, prefix = STORAGE_ROOT[name]
    cfg = raw(name)
    text = "\n".join(commands(cfg))
    assert len(re.findall(rf"\b{var}=(?!\$)", text)) == 1, f"{var} must be given a value exactly once"
    assert f"SDAKD_STORAGE_PATH={prefix}" in text
    assert flag_values(mlflow_command(cfg), "--artifacts-destination")[0].startswith(prefix)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tracking_uri_points_at_the_mlflow_server(name):
    cfg = raw(name)
    text = "\n".join(commands(cfg))
    uris = set(re.findall(r"SDAKD_TRACKING_URI=(\S+?)'", text))
    host = flag_values(mlflow_command(cfg), "--host")[0]
    assert uris == {f"http://{host}:5000"}, uris


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_project_synced_and_installed_on_every_node(name):
    cfg = raw(name)
    assert "~/sdakd" in cfg["file_mounts"]
    assert any('pip install' in c and '-e "$HOME/sdakd"' in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_env_file_sourced_before_every_ray_start(name):
    starts = [c for c in commands(raw(name), "head_start_ray_commands", "worker_start_ray_commands") if "ray start" in c]
    assert len(starts) == 2
    for c in starts:
        assert c.index("source ~/.sdakd_env") < c.index("ray start"), c


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_command_is_valid_bash(name):
    for cmd in commands(prepared(name)):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd!r}: {result.stderr}"


def test_aws_workers_can_write_checkpoints_to_s3():
    cfg = raw("aws")
    for type_name, node_type in cfg["available_node_types"].items():
        if type_name != cfg["head_node_type"]:
            assert node_type["node_config"].get("IamInstanceProfile"), f"{type_name}: no instance profile for S3"


def run_env_writers(cfg: dict, key: str, home: Path, extra_env: dict[str, str]) -> dict[str, str]:
    """Run the commands of `key` that write ~/.sdakd_env or ~/.bashrc; return what ~/.sdakd_env exports."""
    writers = [c for c in cfg[key] if re.search(r">>? ~/\.(sdakd_env|bashrc)\b", c)]
    assert writers, f"no command in {key} writes ~/.sdakd_env"
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra_env}
    for cmd in writers:
        subprocess.run(["bash", "-c", cmd], env=env, check=True, capture_output=True, text=True, timeout=120)
    out = subprocess.run(
        ["bash", "-c", "source ~/.sdakd_env && env"],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True, capture_output=True, text=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if line.startswith("SDAKD_"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_env_file_on_head_and_workers(name, tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "python").exists():
        pytest.skip("needs a venv-style sys.prefix with bin/python (the head resolves its IP with the venv's python)")
    cfg = prepared(name)
    var, prefix = STORAGE_ROOT[name]

    head_home, worker_home = tmp_path / "head", tmp_path / "worker"
    for home in (head_home, worker_home):
        home.mkdir()
        (home / ".bashrc").write_text("# stock\n")
        (home / "sdakd-venv").symlink_to(venv)

    head = run_env_writers(cfg, "head_setup_commands", head_home, {})
    import ray.util

    head_ip = ray.util.get_node_ip_address()
    assert head["SDAKD_HEAD_IP"] == head_ip
    assert head["SDAKD_TRACKING_URI"] == f"http://{head_ip}:5000"

    worker = run_env_writers(cfg, "worker_setup_commands", worker_home, {"RAY_HEAD_IP": "10.20.30.40"})
    assert worker["SDAKD_TRACKING_URI"] == "http://10.20.30.40:5000"

    for exported in (head, worker):
        root = exported[var]
        assert root
        assert exported["SDAKD_STORAGE_PATH"] == prefix.replace(f"${var}", root) + "ray-results"

    # Re-running setup (as `ray up` does after a config change) must not pile up ~/.bashrc lines.
    run_env_writers(cfg, "worker_setup_commands", worker_home, {"RAY_HEAD_IP": "10.20.30.40"})
    assert (worker_home / ".bashrc").read_text().count("source ~/.sdakd_env") == 1


def test_ray_head_on_the_private_ip_without_a_metrics_exporter():
    """What Ray lets a config choose (docs/cluster.md, "Network"): the head's own servers on the address MLflow
    and the workers use, and no per-node Prometheus exporter (it would listen on 0.0.0.0 without auth)."""
    cfg = raw("aws")
    head, worker = (next(c for c in commands(cfg, key) if "ray start" in c)
                    for key in ("head_start_ray_commands", "worker_start_ray_commands"))
    assert flag_values(head, "--node-ip-address") == ["$SDAKD_HEAD_IP"]
    for start in (head, worker):
        assert re.search(r"\bRAY_enable_metrics_collection=0\s+ray start\b", start), start
