"""The CLI's registry features against a live server: lineage at push, aliases, and rollout by alias.

The CLI runs as a separate process (``python -m edgefleet_cli``), as in ``tests/test_cli.py``.
No worker here: validation is not what is under test, so pushed versions stay "validating".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from accounts.models import ApiToken, AuditEntry
from ota.models import Alias, ModelVersion
from tests import factories
from tests.onnx_models import mlp_classifier
from tests.test_cli import cli_env, run


@pytest.mark.usefixtures("roles")
def test_push_with_lineage_alias_commands_and_rollout_by_alias(
    live_server: Any, operator: Any, viewer: Any, store: Path, tmp_path: Path
) -> None:
    env = cli_env(live_server.url, ApiToken.issue(operator, "ci")[1], tmp_path)
    model = tmp_path / "m.onnx"
    model.write_bytes(mlp_classifier(seed=11).SerializeToString())
    lineage_file = tmp_path / "lineage.json"
    lineage_file.write_text(json.dumps({"meta": {"metrics": {"auc": 0.91}}, "links": {"data": "https://d.example/1"}}))

    lineage_args = ["--meta", "git_commit=abc123", "--meta", "dataset_hash=sha256:ff"]
    lineage_args += ["--link", "run=https://runs.example/7", "--lineage", str(lineage_file)]
    done = run(["push", "vib", str(model), "--label", "v9", *lineage_args], env)
    assert done.returncode == 0, done.stderr
    v = ModelVersion.objects.get(label="v9")
    assert v.lineage == {
        "meta": {"metrics": {"auc": 0.91}, "git_commit": "abc123", "dataset_hash": "sha256:ff"},
        "links": {"data": "https://d.example/1", "run": "https://runs.example/7"},
    }
    # the server's bounds reach the CLI user as a refusal naming the field (exit 1), nothing stored
    bad = run(["push", "vib", str(model), "--label", "v10", "--link", "run=javascript:alert(1)"], env)
    assert bad.returncode == 1 and "links.run" in bad.stderr
    assert run(["push", "vib", str(model), "--label", "v10", "--meta", "novalue"], env).returncode == 64
    assert not ModelVersion.objects.filter(label="v10").exists()

    # aliases: set, move, list, remove; only staged versions carry one
    v1 = factories.staged_version("fraud", "v1", seed=1)
    factories.staged_version("fraud", "v2", seed=2)
    factories.release(v1)
    for i in range(4):
        factories.device(labels={"region": "eu"}, name=f"d{i}")
    assert run(["alias", "set", "fraud", "production", "v1"], env).returncode == 0
    moved = run(["alias", "set", "fraud", "production", "v2"], env)
    assert moved.returncode == 0 and "fraud@production → v2" in moved.stdout
    assert "fraud@production" in run(["alias", "list", "fraud"], env).stdout
    refused = run(["alias", "set", "vib", "production", "v9"], env)  # still validating
    assert refused.returncode == 1 and "only staged versions" in refused.stderr
    assert AuditEntry.objects.filter(action="model_alias.set").count() == 2

    # rollout names the version by alias (with or without '@')
    dry = run(["--json", "rollout", "fraud", "production", "--dry-run", "--waves", "50,100"], env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["total"] == 4
    assert run(["rollout", "fraud", "@production", "--dry-run"], env).returncode == 0
    missing = run(["rollout", "fraud", "@staging", "--dry-run"], env)
    assert missing.returncode == 1 and "no version '@staging'" in missing.stderr

    # a viewer token lists but cannot move or remove
    view_env = cli_env(live_server.url, ApiToken.issue(viewer, "ro")[1], tmp_path)
    assert run(["alias", "list", "fraud"], view_env).returncode == 0
    assert run(["alias", "rm", "fraud", "production"], view_env).returncode == 4
    assert run(["alias", "rm", "fraud", "production"], env).returncode == 0
    assert not Alias.objects.exists()
