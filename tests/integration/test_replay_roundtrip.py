"""Replay end to end: sdbatch's PNGs -> recipes -> the same files again; ``sdbatch-tools infotext``.

Byte identity holds when the original image was made alone (batch of one). An image made in a
batch can differ from its replay by 1/255 in a few pixels: the UNet and VAE kernels round
differently for a batch of 4 than for 1 (docs/recipes.md), and a
replayed recipe plans one job, so its batch is always 1. The tests pin both facts, and that a
hires-fix image and a variation-seed image (both made with batch_size=1) come back byte for
byte.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from sdbatch.outputs.infotext import parse_infotext, png_info, read_png_infotext
from tests.conftest import BIN, ROOT, sdbatch_env

SAMPLES_FILE = Path(__file__).resolve().parents[1] / "data" / "a1111-infotext-samples.txt"
ONE = {"prompt": "a red circle on a white background", "batch_size": 1}
# quick with the docs' extras, as ``+recipe=quick batch_size=1 hires.scale=2 ...`` would
# compose it; as recipes they share one multirun with quick itself (one process start).
EXTRAS = {
    "quick_hires": {**ONE, "seeds": 1, "hires": {"scale": 2, "steps": 2, "denoise": 0.5}},
    "quick_subseed": {**ONE, "subseed": 100, "subseed_strength": 0.3},  # seeds 1, 2 -> 100, 101
}


def run(cmd: str, *args: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / cmd), *args], cwd=cwd, env=sdbatch_env(**env), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """(type, data) of every PNG chunk but IDAT, to show what beside pixels differs."""
    data, pos, out = path.read_bytes(), 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind != b"IDAT":
            out.append((kind, data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory) -> dict:
    """Originals: quick as is (batches of 4), a hires image and a variation-seed image; four of
    them replayed; the replays and quick with batch_size=1 rendered again.

    Each sdbatch run is one Hydra multirun (one process, to spare CPU); each job writes to
    outputs/<name>/multirun/... under its run's folder.
    """
    root = tmp_path_factory.mktemp("replay")
    quick = OmegaConf.to_container(OmegaConf.load(ROOT / "recipes" / "quick.yaml"))
    (root / "extras").mkdir()
    for name, extra in EXTRAS.items():
        recipe = OmegaConf.create({**quick, "name": name, **extra})
        OmegaConf.save(recipe, root / "extras" / f"{name}.yaml")
    env = {"SDBATCH_CACHE": str(root / "cache"), "SDBATCH_RECIPES": str(root / "extras")}
    cpu = ["steps=2", "run.device=cpu", "run.progress=false"]
    (root / "a").mkdir()
    recipes = "+recipe=" + ",".join(["quick", *EXTRAS])
    res = run("sdbatch", "-m", recipes, *cpu, cwd=root / "a", **env)
    assert res.returncode == 0, res.stderr
    originals = sorted(outputs(root / "a", "quick").glob("*.png"))
    assert len(originals) == 4
    (hires,) = outputs(root / "a", "quick_hires").glob("*.png")
    (subseed,) = [p for p in outputs(root / "a", "quick_subseed").glob("*.png")
                  if "Variation seed: 101," in read_png_infotext(p)]  # fmt: skip
    picked = [originals[0], originals[-1]]
    alone = [hires, subseed]  # made with batch_size=1
    images = [*picked, *alone]
    res = run("sdbatch-tools", "replay", *map(str, images), "-o", str(root / "recipes"), cwd=root)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr  # all reproduced
    names = [f"replay_{p.stem}" for p in images]
    assert sorted(p.stem for p in (root / "recipes").glob("*.yaml")) == sorted(names)
    env["SDBATCH_RECIPES"] = str(root / "recipes")
    recipes = "+recipe=" + ",".join([*names, "quick"])
    res = run("sdbatch", "-m", recipes, "batch_size=1", *cpu, cwd=root, **env)
    assert res.returncode == 0, res.stderr
    return {"root": root, "picked": picked, "alone": alone, "stdout": res.stdout}


def outputs(root: Path, name: str) -> Path:
    (images,) = (root / "outputs" / name).rglob("images")
    return images


def replayed(root: Path, original: Path) -> Path:
    again = outputs(root, f"replay_{original.stem}") / original.name
    assert again.is_file(), f"{original.name}: the replay planned another job id"
    return again


@pytest.mark.slow
def test_replay_plans_the_same_job_id_and_writes_the_same_infotext(roundtrip):
    assert "1 jobs = 1 prompts x 1 sampler x 1 cfg x 1 seeds" in roundtrip["stdout"]
    for original in [*roundtrip["picked"], *roundtrip["alone"]]:
        again = replayed(roundtrip["root"], original)
        assert read_png_infotext(again) == read_png_infotext(original)
        assert chunks(again) == chunks(original)  # everything but the pixel data


@pytest.mark.slow
def test_replayed_recipes_carry_rng_hires_and_variation_seed(roundtrip):
    root, (hires, subseed) = roundtrip["root"], roundtrip["alone"]
    params = parse_infotext(read_png_infotext(hires)).params
    assert params["RNG"] == "CPU" and params["Size"] == "32x32"  # A1111: the first-pass size
    assert (params["Hires upscale"], params["Hires steps"], params["Hires upscaler"]) == (
        "2", "2", "Latent",
    )  # fmt: skip
    with Image.open(hires) as im:
        assert im.size == (64, 64)
    text = (root / "recipes" / f"replay_{hires.stem}.yaml").read_text(encoding="utf-8")
    assert "\nrng: cpu\n" in text and "\nhires:\n  denoise: 0.5\n  scale: 2\n" in text
    assert "not reproduced" not in text and "no RNG field" not in text
    text = (root / "recipes" / f"replay_{subseed.stem}.yaml").read_text(encoding="utf-8")
    assert "\nseeds: 1\nsize: 32x32\nsubseed: 101\nsubseed_strength: 0.3\nrng: cpu\n" in text


@pytest.mark.slow
def test_hires_and_variation_seed_images_made_alone_replay_byte_identical(roundtrip):
    for original in roundtrip["alone"]:
        assert sha(replayed(roundtrip["root"], original)) == sha(original), original.name


@pytest.mark.slow
def test_replay_is_byte_identical_to_the_same_job_made_alone(roundtrip):
    root = roundtrip["root"]
    for original in roundtrip["picked"]:
        alone = outputs(root, "quick") / original.name
        assert sha(replayed(root, original)) == sha(alone), original.name


@pytest.mark.slow
def test_replay_of_a_batched_image_differs_at_most_by_batch_rounding(roundtrip):
    """Byte-identical unless batch-of-4 rounding flipped a pixel; then by 1/255 at most."""
    root = roundtrip["root"]
    for original in roundtrip["picked"]:
        again = replayed(root, original)
        diff = np.abs(pixels(again) - pixels(original))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, original.name
        assert (sha(again) == sha(original)) == (diff.max() == 0)


# sdbatch-tools infotext: on A1111's own infotext (written into PNGs here) and on ours.


def a1111_samples() -> list[str]:
    lines = SAMPLES_FILE.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith("#")).split("\n----\n")


@pytest.fixture
def a1111_pngs(tmp_path) -> list[Path]:
    paths = []
    for i, text in enumerate(a1111_samples(), 1):
        path = tmp_path / f"a1111_{i}.png"
        Image.new("RGB", (8, 8)).save(path, pnginfo=png_info(text))
        paths.append(path)
    return paths


def test_infotext_prints_prompt_negative_and_every_key_in_order(a1111_pngs, tmp_path):
    res = run("sdbatch-tools", "infotext", str(a1111_pngs[3]), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "prompt: masterpiece, best quality, 1girl, <lora:add_detail:0.6>, easynegative",
        "negative prompt: easynegative, (worst quality:1.4)",
        "Steps: 30",
        "Sampler: DPM++ 2M SDE Karras",
        "CFG scale: 6",
        "Seed: 987654321",
        "Size: 768x512",
        "Model hash: 1fe6c7ec54",
        "Model: anything-v5",
        "VAE hash: 735e4c3a44",
        "VAE: kl-f8-anime2.ckpt",
        "Lora hashes: add_detail: 7c6bad76eb54",
        "TI hashes: easynegative: c74b4e810b03",
        "Emphasis: No norm",
        "Version: v1.9.4",
    ]


def test_infotext_json_is_an_object_for_one_image_and_a_list_for_several(a1111_pngs, tmp_path):
    one = run("sdbatch-tools", "infotext", "--json", str(a1111_pngs[4]), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == {
        "file": str(a1111_pngs[4]),
        "prompt": "검은 머리, 긴 머리, (드레드락:1.2), 미소\na second prompt line",
        "negative_prompt": "저화질, (나쁜 손:1.3)",
        "params": {
            "Steps": "28", "Sampler": "DDIM", "CFG scale": "11", "Seed": "0", "Size": "512x828",
            "Model hash": "7f96a1a9ca", "Model": "AnythingV5V3_v5PrtRE", "RNG": "CPU",
        },
    }  # fmt: skip
    many = run("sdbatch-tools", "infotext", "--json", *map(str, a1111_pngs), cwd=tmp_path)
    parsed = json.loads(many.stdout)
    assert [p["file"] for p in parsed] == [str(p) for p in a1111_pngs]
    assert list(parsed[1]["params"])[:3] == ["Steps", "Sampler", "Schedule type"]


@pytest.mark.slow
def test_infotext_on_our_own_png(roundtrip, tmp_path):
    original = roundtrip["picked"][0]
    res = run("sdbatch-tools", "infotext", str(original), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1] == "negative prompt: blurry" and "Model: sdbatch-shapes" in lines
    assert lines[-2:] == ["RNG: CPU", "Version: sdbatch 0.1.0"]  # A1111's default is GPU


def test_a_file_without_infotext_is_one_error_line_and_exit_2(a1111_pngs, tmp_path):
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    res = run("sdbatch-tools", "infotext", str(a1111_pngs[0]), str(bare), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr == f"error: {bare}: no A1111 infotext (no 'parameters' text chunk)\n"
    assert res.stdout.startswith(f"== {a1111_pngs[0]} ==\nprompt: (best quality)")  # still shown


def test_replay_of_a1111_pngs_warns_and_writes_nothing_on_error(a1111_pngs, tmp_path):
    res = run("sdbatch-tools", "replay", str(a1111_pngs[1]), str(a1111_pngs[2]), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.split("\n---\n")
    assert "sampler: DPM++ 2M Karras\n" in first
    assert "hires:\n  denoise: 0.5\n  scale: 2\n  steps: 10\n  upscaler: latent\n" in first
    assert "rng: gpu\n" in first and "# no RNG field: A1111's default noise source" in first
    assert "subseed: 43\nsubseed_strength: 0.1\n" in second
    assert "# not reproduced: ENSD: 31337\n" in second
    warned = [line for line in res.stderr.splitlines() if "not reproduced" in line]
    assert warned == [
        f"warning: {a1111_pngs[2]}: not reproduced: ENSD: 31337 (eta noise seed delta)"
    ]
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    out = tmp_path / "recipes"
    res = run(
        "sdbatch-tools", "replay", str(a1111_pngs[0]), str(bare), "-o", str(out), cwd=tmp_path
    )
    assert res.returncode == 2 and not out.exists()
    assert res.stderr.strip().splitlines() == [
        f"error: {bare}: no A1111 infotext (no 'parameters' text chunk)"
    ]
