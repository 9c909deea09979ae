"""A feature whose optional dependency is missing says which extra installs it (found: a new
user's `deploy_serving` run failed with `No such file or directory: 'ray'`, scripts/setup.sh
having installed no Ray)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from unified_assets import extras
from unified_assets.extras import MissingExtra, require

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def without(monkeypatch):
    """Makes the named modules look uninstalled to `require`."""
    def hide(*modules: str) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(extras.importlib.util, "find_spec",
                            lambda name, *a: None if name in modules else real(name, *a))
    return hide


def test_a_missing_module_names_the_extra_and_the_command():
    with pytest.raises(MissingExtra) as raised:
        require("no_such_module_for_this_test", "ray", "Serving")
    said = str(raised.value)
    assert "Serving needs `no_such_module_for_this_test`" in said
    assert f"{sys.prefix}/bin/pip install -e '.[ray]'" in said
    require("dagster", "ray", "anything")  # installed: nothing to say


def test_serving_without_ray_installed_says_how_to_install_it(tmp_path, without):
    from unified_assets.serving.deploy import ensure_local_ray

    without("ray")
    with pytest.raises(MissingExtra, match=r"no RAY_ADDRESS set\) needs `ray`.*\[ray\]"):
        ensure_local_ray(tmp_path)
    assert not (tmp_path / "serving" / "ray.json").exists()  # nothing started, nothing recorded


def test_the_ray_deployment_without_dagster_ray_says_how_to_install_it(tmp_path, without):
    from unified_assets.placement.ray_executor import ray_executor_for
    from unified_assets.settings import Settings

    without("dagster_ray")
    settings = Settings(deployment="ray", home=tmp_path, dataset_spec=None)
    with pytest.raises(MissingExtra, match=r"`ray` executor\) needs `dagster_ray`"):
        ray_executor_for(settings)


def test_the_run_commands_install_brings_the_ray_extra():
    """`bash scripts/dev.sh` (the README's run command) installs what serving needs."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert """pip install --quiet -e ".[ray]\"""" in setup


def test_the_cli_says_it_in_one_line(tmp_path, without, monkeypatch, capsys):
    from unified_assets.cli import main

    monkeypatch.setenv("UNIFIED_AI_HOME", str(tmp_path))
    monkeypatch.setenv("UNIFIED_AI_DEPLOYMENT", "ray")
    without("dagster_ray")
    assert main(["pending"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unified-ai pending: ") and "\n" not in err, err
    assert "install the project's `ray` extra" in err
