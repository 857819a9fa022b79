"""The harness writes configs the cluster accepts, mirroring the shipped one on port 0."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from csbs.config import ConfigError, load_cluster_config
from tests.harness import DEFAULT_REGIONS, REPO_ROOT, write_cluster_config


def test_written_config_has_three_regions_on_port_0(tmp_path: Path) -> None:
    config = load_cluster_config(write_cluster_config(tmp_path))

    assert [r.region_id for r in config.regions] == ["cn-north-4", "cn-east-3", "cn-south-1"]
    assert {r.region_id: r.accepts_replication for r in config.regions} == {
        "cn-north-4": True,
        "cn-east-3": True,
        "cn-south-1": False,
    }
    assert [len(r.projects) for r in config.regions] == [2, 3, 2]
    east = config.region("cn-east-3")
    assert east.main_project("default").project_id == "cn-east-3_default"
    assert all(r.listen == "127.0.0.1:0" for r in config.regions)
    assert config.coordinator.listen == "127.0.0.1:0"
    assert [a.account_id for a in config.accounts] == ["default", "acme"]
    assert config.account("acme").tokens and config.operator_tokens
    assert config.data_dir == (tmp_path / "data").resolve()
    assert all(r.data_dir.is_relative_to(config.data_dir) for r in config.regions)
    assert config.chunk_size == 1 << 20
    assert not config.simulated_clock


def test_written_config_takes_chunk_size_and_simulated_clock(tmp_path: Path) -> None:
    config = load_cluster_config(
        write_cluster_config(tmp_path, chunk_size=64 * 1024, simulated_clock=True)
    )

    assert config.chunk_size == 64 * 1024
    assert config.simulated_clock


def test_default_regions_mirror_the_shipped_config() -> None:
    shipped = tomllib.loads((REPO_ROOT / "csbs" / "cluster.toml").read_text(encoding="utf-8"))

    without_listen = [
        {k: v for k, v in r.items() if k not in ("listen", "metrics_listen")}
        for r in shipped["regions"]
    ]
    assert without_listen == list(DEFAULT_REGIONS)


def test_p3_config_refuses_two_main_projects_of_an_account_in_a_region(tmp_path: Path) -> None:
    regions = [
        {
            "id": "cn-east-3",
            "accepts_replication": True,
            "projects": [
                {"id": "cn-east-3_default", "account": "default", "main": True},
                {"id": "cn-east-3_dr", "account": "default", "main": True},
            ],
        }
    ]

    with pytest.raises(ConfigError, match=r"P3"):
        load_cluster_config(write_cluster_config(tmp_path, regions=regions))
