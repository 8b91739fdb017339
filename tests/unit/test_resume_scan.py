"""The resume scan (resume.scan_manifest): which jobs of a plan are done, failed, seen."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from sdbatch.outputs.manifest import Manifest
from sdbatch.plan.hashing import sha256_bytes
from sdbatch.run import resume
from tests.unit.test_manifest import row

PNG = b"\x89PNG not really"
PLAN = ["ok", "gone", "empty", "edited", "fail", "nan", "noimg", "sub", "subgone", "retry", "new"]


def plan(ids=PLAN) -> list:
    return [SimpleNamespace(job_id=j) for j in ids]  # scan_manifest reads only .job_id


def write(out, rel: str, data: bytes = PNG) -> None:
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_bytes(data)


def make_run(out, reverse: bool = False) -> Manifest:
    """A manifest with one row per case; ``reverse`` puts the subfolder images first."""
    good = sha256_bytes(PNG)
    rows = [
        row("ok", image_sha256=good),
        row("gone", image_sha256=good),  # its file was deleted
        row("empty", image_sha256=good),  # its file is zero bytes now
        row("edited", image_sha256=good),  # its file changed (non-empty)
        row("fail", "failed", image=None, image_sha256=None, error="boom"),
        row("nan", "nan", image=None, image_sha256=None),
        row("noimg", image=None, image_sha256=None),  # ok, but no image recorded
        row("sub", image="images/sub/sub.png", image_sha256=good),
        row("subgone", image="images/sub/subgone.png", image_sha256=good),
        row("retry", "failed", image=None, image_sha256=None, error="oom"),
        row("other", image_sha256=good),  # on disk, but not a job of this plan
    ]
    for rel in ("images/ok.png", "images/sub/sub.png", "images/other.png", "images/retry.png"):
        write(out, rel)
    write(out, "images/empty.png", b"")
    write(out, "images/edited.png", b"something else")
    m = Manifest(out / "manifest")
    m.append(rows[::-1] if reverse else rows)
    m.append([row("retry", image_sha256=good)])  # the newest row of a job wins
    return m


SEEN = set(PLAN) - {"new"}
FAILED = {"fail", "nan"}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("helpers", ["none", "ok", "no python", "crash", "short"])
def test_scan_by_size(tmp_path, monkeypatch, reverse, helpers):
    if helpers != "none":  # the stats shared with helper processes, even for a few files
        monkeypatch.setattr(resume, "STAT_SPLIT", 1)
        monkeypatch.setattr(resume.os, "cpu_count", lambda: 4)
    if helpers == "no python":
        monkeypatch.setattr(resume.sys, "executable", str(tmp_path / "no-such-python"))
    elif helpers == "crash":  # a helper that fails has its share done in-process
        monkeypatch.setattr(resume, "_STAT_HELPER", "import sys; sys.exit(3)")
    elif helpers == "short":  # or that answers for the wrong number of files
        monkeypatch.setattr(resume, "_STAT_HELPER", "import sys; sys.stdout.write('x')")
    m = make_run(tmp_path, reverse)
    done, failed, seen = resume.scan_manifest(plan(), tmp_path, m, verify="size")
    assert done == {"ok", "edited", "sub", "retry"}
    assert failed == FAILED
    assert seen == SEEN


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_by_hash(tmp_path, reverse):
    m = make_run(tmp_path, reverse)
    done, failed, seen = resume.scan_manifest(plan(), tmp_path, m, verify="hash")
    assert done == {"ok", "sub", "retry"}
    assert failed == FAILED
    assert seen == SEEN


@pytest.mark.parametrize("verify", ["size", "hash"])
def test_scan_without_images_folder(tmp_path, verify):
    m = make_run(tmp_path)
    shutil.rmtree(tmp_path / "images")
    done, failed, seen = resume.scan_manifest(plan(), tmp_path, m, verify=verify)
    assert (done, failed, seen) == (set(), FAILED, SEEN)


def test_scan_images_at_top_level_and_empty_cases(tmp_path):
    m = Manifest(tmp_path / "manifest")
    assert resume.scan_manifest(plan(), tmp_path, m, verify="size") == (set(), set(), set())
    write(tmp_path, "a.png")
    write(tmp_path, "images/b.png")
    m.append([row("a", image="a.png"), row("b"), row("c", image="c.png")])
    done, failed, seen = resume.scan_manifest(plan("abcd"), tmp_path, m, verify="size")
    assert (done, failed, seen) == ({"a", "b"}, set(), {"a", "b", "c"})
    assert resume.scan_manifest(plan("xyz"), tmp_path, m, verify="size") == (set(), set(), set())
