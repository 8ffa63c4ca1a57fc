"""The published dataset through the real pipeline (issue #14): a downstream team importing `data/augmented`
through a DVC remote, with real git and DVC. (Hostile class names end to end: tests/test_exp_runs.py.)"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import DVC, TINY_PARAMS, deep_update, pipeline_env, ran_stages, run

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]


def _git_commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(GIT + ["commit", "-qm", message], repo)


def _count(root: Path, origin: str) -> int:
    """How many images of `origin` (real, synthetic, source) the dataset at `root` publishes."""
    return int((pd.read_parquet(root / "manifest.parquet")["origin"] == origin).sum())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.heavy
def test_a_consumer_imports_the_dataset_through_the_remote_alone_and_updates_it(tiny_repro_copy, tmp_path):
    # the README's downstream section, both sides. Producer: a remote, push, and git pushed to a bare
    # "server" repo (which has no DVC cache and no workspace). Consumer: its own repo, importing by git URL.
    producer, remote, server = tiny_repro_copy, tmp_path / "dvc-remote", tmp_path / "server.git"
    run(DVC + ["remote", "add", "-d", "storage", str(remote)], producer)
    _git_commit(producer, "pipeline run, with a DVC remote")
    run(DVC + ["push"], producer)
    run(GIT + ["tag", "-a", "augmented-dataset@v1.0.0", "-m", "first version"], producer)  # an artifact version (GTO)
    run(["git", "clone", "-q", "--bare", str(producer), str(server)], tmp_path)
    aside = tmp_path / "producer-cache"
    shutil.move(producer / ".dvc" / "cache", aside)  # nothing but the remote can serve the data now

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    run(["git", "init", "-q"], consumer)
    run(DVC + ["init", "-q"], consumer)
    run(DVC + ["import", f"file://{server}", "data/augmented", "-o", "augmented"], consumer)
    assert _files(consumer / "augmented") == _files(producer / "data/augmented")
    n_source = _count(producer / "data/augmented", "source")
    assert n_source == TINY_PARAMS["finetune"]["source_images"]  # the shared run's seeded subset, all published
    assert _count(consumer / "augmented", "synthetic") == 20
    lock = yaml.safe_load((consumer / "augmented.dvc").read_text())
    assert lock["deps"][0]["repo"]["url"] == f"file://{server}"

    got = tmp_path / "artifact"  # the latest version of the artifact declared in dvc.yaml
    run(DVC + ["artifacts", "get", f"file://{server}", "augmented-dataset", "-o", str(got)], tmp_path)
    assert _files(got) == _files(producer / "data/augmented")

    # a new version: the producer stops publishing the relabelled source images (publish.source_images, read by
    # concat alone, which reruns), pushes; the consumer updates
    shutil.move(aside, producer / ".dvc" / "cache")
    params = producer / "params.yaml"
    params.write_text(yaml.safe_dump(deep_update(yaml.safe_load(params.read_text()),
                                                 {"publish": {"source_images": False}}), sort_keys=False))
    assert ran_stages(run(DVC + ["repro"], producer, env=pipeline_env()).stdout) == {"concat"}
    _git_commit(producer, "the GAN's images only")
    run(DVC + ["push"], producer)
    run(GIT + ["tag", "-a", "augmented-dataset@v1.1.0", "-m", "the GAN's images only"], producer)
    run(["git", "push", "-q", "--follow-tags", str(server), "HEAD:refs/heads/" + _branch(producer)], producer)
    run(DVC + ["update", "augmented.dvc"], consumer)
    assert _count(consumer / "augmented", "source") == 0 and _count(consumer / "augmented", "synthetic") == 20
    assert _files(consumer / "augmented") == _files(producer / "data/augmented")
    for rev, count in (("v1.0.0", n_source), (None, 0)):  # a pinned version, and the latest
        out = tmp_path / f"artifact-{rev}"
        run(DVC + ["artifacts", "get", f"file://{server}", "augmented-dataset", "-o", str(out),
                   *(["--rev", rev] if rev else [])], tmp_path)
        assert _count(out, "source") == count


def _branch(repo: Path) -> str:
    return run(["git", "rev-parse", "--abbrev-ref", "HEAD"], repo).stdout.strip()
