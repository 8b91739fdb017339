"""Crafted manifests: an ``image`` that leads outside the output folder is never followed.

Every tool that opens image paths (manifest verify, export, gallery, grid, animate, the resume
scan) refuses ``../../secret.txt``, an absolute path, or a symlink out, even when the row's
sha256 matches the outside file. Tools: one line naming the row and the path, exit code 2.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdbatch import tools
from sdbatch.outputs.image_paths import ImagePaths, UnsafeImagePath, safe_image_path
from sdbatch.outputs.manifest import Manifest
from sdbatch.run.resume import scan_manifest
from tests.unit.test_manifest import row

SECRET = b"the neighbour's private key"
SHA = hashlib.sha256(SECRET).hexdigest()
GOOD = hashlib.sha256(b"png").hexdigest()


@pytest.fixture
def out(tmp_path) -> Path:
    """tmp/runs/out: one honest image, plus tmp/secret.txt outside the output folder."""
    out = tmp_path / "runs" / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "1-good.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    return out


def crafted(out: Path, image: str) -> None:
    """The honest row, and row ``evil`` pointing at ``image`` with the secret's sha256."""
    good = row("good", seed=1, image="images/1-good.png", image_sha256=GOOD)
    Manifest(out / "manifest").append([good, row("evil", seed=2, image=image, image_sha256=SHA)])


def outside_paths(out: Path) -> dict[str, str]:
    """Each way out, as the manifest's ``image`` value (symlinks made here)."""
    secret = out.parent.parent / "secret.txt"
    (out / "images" / "2-evil.png").symlink_to(secret)
    elsewhere = out.parent.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2-evil.png").write_bytes(SECRET)
    (out / "linked").symlink_to(elsewhere, target_is_directory=True)
    return {
        "dotdot": "../../secret.txt",
        "absolute": str(secret),
        "symlink file": "images/2-evil.png",
        "symlink folder": "linked/2-evil.png",
    }


WHY = {
    "dotdot": "goes up out of the folder with '..'",
    "absolute": "is absolute",
    "symlink file": "leads outside the output folder through a symlink",
    "symlink folder": "leads outside the output folder through a symlink",
}
CASES = list(WHY)


def tool(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        tools.main([str(a) for a in argv])
    stdout, err = capsys.readouterr()
    return exc.value.code, stdout, err


def assert_refused(code: int, err: str, image: str, case: str) -> None:
    assert code == 2
    (line,) = err.splitlines()
    assert line == (
        f"error: manifest row evil: image path {image!r} {WHY[case]}; refusing to follow it "
        "(image paths must stay inside the output folder)"
    )


def test_safe_image_path(out):
    ways = outside_paths(out)
    assert safe_image_path(out, "images/1-good.png") == out / "images" / "1-good.png"
    (out / "images" / "alias.png").symlink_to(out / "images" / "1-good.png")
    assert safe_image_path(out, "images/alias.png", "j")  # a symlink that stays inside
    assert safe_image_path(out, "./images/sub/x.png")  # need not exist
    for case, image in ways.items():
        with pytest.raises(UnsafeImagePath, match=f"manifest row j: image path .*{WHY[case]}"):
            safe_image_path(out, image, "j")
    for image, why in [("", "is empty"), ("images/..", "goes up"), ("a\0b", "NUL"),
                       ("images\\..\\..\\x", "goes up"), (None, "is not a path")]:  # fmt: skip
        with pytest.raises(UnsafeImagePath, match=why):
            safe_image_path(out, image, "j")


def test_the_columnar_check_agrees_with_the_one_by_one_check(out):
    import pyarrow as pa

    ways = outside_paths(out)
    images = ["images/1-good.png", "images/x/y.png", "x.png", "images/..", *ways.values()]
    got = ImagePaths(out).allowed(pa.array(images)).to_pylist()
    # allowed() leaves the last component to the caller's lstat: the symlinked file passes
    assert got == [True, True, True, False, False, False, True, False]


@pytest.mark.parametrize("case", CASES)
def test_verify_refuses(out, capsys, case):
    image = outside_paths(out)[case]
    crafted(out, image)
    code, stdout, err = tool(capsys, "manifest", "verify", out)
    assert_refused(code, err, image, case)
    assert "intact" not in stdout


@pytest.mark.parametrize("case", CASES)
def test_export_refuses_and_links_nothing(out, capsys, case, tmp_path):
    image = outside_paths(out)[case]
    crafted(out, image)
    code, _, err = tool(capsys, "export", out, "-o", tmp_path / "ds")
    assert_refused(code, err, image, case)
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").rglob("*.*"))


@pytest.mark.parametrize("command", [["gallery", "--thumbs", "32"], ["grid", "--x", "seed"],
                                     ["animate", "--axis", "seed"]])  # fmt: skip
def test_gallery_grid_and_animate_refuse(out, capsys, command):
    image = "../../secret.txt"
    crafted(out, image)
    code, _, err = tool(capsys, command[0], out, *command[1:])
    assert_refused(code, err, image, "dotdot")
    assert not (out / "index.html").exists() and not (out / "gallery").exists()


def test_gallery_thumbs_of_a_file_that_is_not_an_image_is_no_traceback(out, capsys):
    Manifest(out / "manifest").append([row("good", image="images/1-good.png")])  # b"png"
    code, stdout, err = tool(capsys, "gallery", out, "--thumbs", "32")
    assert (code, err) == (0, "") and "(1 images)" in stdout


def test_gallery_thumbnail_names_stay_in_the_gallery_folder(out, capsys, tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(out / "images" / "1-good.png")
    Manifest(out / "manifest").append([row("../../../escape", image="images/1-good.png")])
    code, _, _ = tool(capsys, "gallery", out, "--thumbs", "32")
    assert code == 0
    assert [p.parent for p in out.rglob("*.jpg")] == [out / "gallery"]
    assert not list(tmp_path.glob("*.jpg"))


@pytest.mark.parametrize("verify", ["hash", "size"])
def test_resume_scan_counts_an_outside_path_as_not_done(out, verify):
    ways = outside_paths(out)
    good = row("good", image="images/1-good.png", image_sha256=GOOD)
    rows = [good] + [row(c, image=image, image_sha256=SHA) for c, image in ways.items()]
    Manifest(out / "manifest").append(rows)
    jobs = [SimpleNamespace(job_id=j) for j in ["good", *ways]]
    done, failed, seen = scan_manifest(jobs, out, Manifest(out / "manifest"), verify=verify)
    assert (done, failed, seen) == ({"good"}, set(), {"good", *ways})


def test_resume_scan_helpers_also_refuse_a_symlinked_image(out, monkeypatch):
    from sdbatch.run import resume

    monkeypatch.setattr(resume, "STAT_SPLIT", 1)  # the stats go to helper processes
    monkeypatch.setattr(resume.os, "cpu_count", lambda: 2)
    ways = outside_paths(out)
    (out / "images" / "3-inside.png").symlink_to(out / "images" / "1-good.png")
    rows = [row(f"j{i}", image="images/1-good.png") for i in range(3)]
    rows += [row("evil", image=ways["symlink file"]), row("ok", image="images/3-inside.png")]
    Manifest(out / "manifest").append(rows)
    jobs = [SimpleNamespace(job_id=r["job_id"]) for r in rows]
    done, _, _ = scan_manifest(jobs, out, Manifest(out / "manifest"), verify="size")
    assert done == {"j0", "j1", "j2", "ok"}
    assert os.path.exists(out / ways["symlink file"])  # on disk, readable: still not done


def test_verify_reports_an_empty_image_path_as_no_image(out, capsys):
    crafted(out, "")
    code, stdout, _ = tool(capsys, "manifest", "verify", out)
    assert code == 1
    assert stdout.splitlines()[0] == "no image: job evil is ok but its row names no image file"
