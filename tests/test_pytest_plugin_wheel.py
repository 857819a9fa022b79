"""Issue 14, the users' own integration tests: a wheel of the project, installed in a fresh
virtualenv outside the repository, registers the pytest plugin, and the example suite
(examples/pytest_plugin) run there with that venv's pytest gets a whole cluster from the
`csbs_cluster` fixture: it replicates a backup and boots a server from the replica whose disks
have the source's SHA-256. Afterwards no process the run started is left, nor its temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from tests.harness import REPO_ROOT

pytestmark = pytest.mark.timeout(240)

EXAMPLE = REPO_ROOT / "examples" / "pytest_plugin" / "test_disaster_recovery.py"
EXAMPLE_TESTS = 3
PYTEST = "pytest==9.2.0"  # as pyproject.toml pins it
INNER_TIMEOUT = 180.0
# What the source tree copied to build from leaves out: state, caches, the repository's venv.
NOT_SOURCE = (".git", ".venv", "var", "build", "*.egg-info", ".*_cache", "__pycache__")


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INNER_TIMEOUT, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def _wheel(tmp: Path) -> Path:
    """A wheel built from a copy of the source tree (the generated csbs/v1 included)."""
    source = tmp / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(source)])
    (wheel,) = tmp.glob("csbs_sim-*.whl")
    return wheel


def _inner_env(tmp_dir: Path) -> dict[str, str]:
    """The environment of a user's shell: nothing of this run's venv, pytest or csbs settings;
    temp dirs under `tmp_dir`, so that what the inner run leaves there can be seen."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CSBS_", "PYTEST_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["TMPDIR"] = str(tmp_dir)
    return env


def _run_watching_children(
    argv: list[str], cwd: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[int, str]]:
    """Runs `argv`, noting every process under it while it runs (pid -> command line)."""
    seen: dict[int, str] = {}
    with subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as inner:
        parent = psutil.Process(inner.pid)
        deadline = time.monotonic() + INNER_TIMEOUT
        while inner.poll() is None and time.monotonic() < deadline:
            try:
                for child in parent.children(recursive=True):
                    # The latest: a child just forked shows its parent's command line until
                    # it execs its own (seen by CI once: csbs.cluster counted twice).
                    seen[child.pid] = " ".join(child.cmdline())
            except psutil.Error:
                pass  # a process that ended while being looked at
            time.sleep(0.1)
        if inner.poll() is None:
            inner.kill()
        output, _ = inner.communicate(timeout=30)
    return subprocess.CompletedProcess(argv, inner.returncode, output), seen


def _still_running(pid: int, cmdline: str) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and " ".join(process.cmdline()) == cmdline
    except psutil.Error:
        return False


def test_the_example_suite_passes_from_a_wheel_in_a_fresh_venv_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    wheel = _wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("csbs/v1/region_node_pb2.py", "csbs/cluster.toml", "csbs/pytest_plugin.py"):
        assert needed in names, f"{needed} is not in {wheel.name}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", str(wheel), PYTEST])
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(EXAMPLE, suite)
    inner_tmp = tmp_path / "inner-tmp"
    inner_tmp.mkdir()
    env = _inner_env(inner_tmp)
    where = _run([python, "-c", "import csbs; print(csbs.__file__)"], cwd=suite, env=env)
    assert where.stdout.startswith(str(venv)), where.stdout
    # The shipped config's cluster, installed, keeps its data in the user's state directory,
    # not in site-packages beside the config.
    state = tmp_path / "state"
    shipped = "from csbs.config import *; print(load_cluster_config(SHIPPED_CONFIG).data_dir)"
    data_dir = _run([python, "-c", shipped], cwd=suite, env={**env, "XDG_STATE_HOME": str(state)})
    assert data_dir.stdout.strip() == str(state / "csbs-sim"), data_dir.stdout

    done, seen = _run_watching_children(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], suite, env
    )

    assert done.returncode == 0, done.stdout
    assert f"{EXAMPLE_TESTS} passed" in done.stdout, done.stdout
    processes = [cmd for cmd in seen.values() if " -m csbs.cluster " in f"{cmd} "]
    processes += [
        cmd for cmd in seen.values() if "-m region_node" in cmd or "-m coordinator" in cmd
    ]
    assert len(processes) == 5, seen  # csbs-cluster, the three region nodes, the coordinator
    left = {pid: cmd for pid, cmd in seen.items() if _still_running(pid, cmd)}
    assert not left, f"still running after the inner run: {left}"
    assert not list(inner_tmp.glob("csbs-*")), list(inner_tmp.iterdir())
