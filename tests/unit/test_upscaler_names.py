"""hires.upscaler: A1111's names, model upscaler files, ids and infotext (pure: no torch)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from sdbatch.errors import RecipeError
from sdbatch.outputs.record import infotext_for
from sdbatch.plan.generation import Extras, parse_hires
from sdbatch.plan.recipe import build_plan
from tests.conftest import quick_cfg

DATA = Path(__file__).resolve().parents[1] / "data" / "upscalers"
HIRES = {"scale": 2, "steps": 10, "denoise": 0.5}


@pytest.fixture
def a1111(tmp_path) -> Path:
    """An A1111 install root with a Real-ESRGAN file and an ESRGAN one (a .pth pickle)."""
    (tmp_path / "models" / "RealESRGAN").mkdir(parents=True)
    (tmp_path / "models" / "ESRGAN").mkdir()
    real = tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x2plus.safetensors"
    shutil.copy(DATA / "realesrgan_x2plus_nf8_nb1.safetensors", real)
    shutil.copy(DATA / "esrgan_old_x4_nf8_nb1.pth", tmp_path / "models" / "ESRGAN" / "4x-Tiny.pth")
    return tmp_path


def hires(upscaler, folders=None, allow_pickle=False):
    return parse_hires({**HIRES, "upscaler": upscaler}, folders, allow_pickle)


def test_latent_and_lanczos_keep_one_id_in_either_spelling():
    """(a1111-steps: the hires pass runs all its steps, sdbatch.plan.generation.Hires.pass_steps)"""
    for spelled, key in (("latent", "latent"), ("Latent", "latent"), ("LANCZOS", "lanczos")):
        assert Extras(hires=hires(spelled)).key() == f"hires=2.0,{key},10,0.5,a1111-steps"


@pytest.mark.parametrize(
    "name",
    ["Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
     "Latent (nearest)", "Latent (nearest-exact)", "None", "Nearest"],
)  # fmt: skip
def test_a1111_builtin_upscalers_are_written_as_a1111_names_them(name):
    job = build_plan(quick_cfg(hires={**HIRES, "upscaler": name.lower()})).jobs[0]
    assert f"Hires upscaler: {name}," in infotext_for(job)
    plain = build_plan(quick_cfg(hires={**HIRES, "upscaler": "latent"})).jobs[0]
    assert job.job_id != plain.job_id


def test_a_model_upscaler_is_its_file_and_its_hash_joins_the_id(a1111):
    folders = {"a1111": str(a1111)}
    h = hires("r-esrgan 2x+", folders)
    assert (h.upscaler, Path(h.upscaler_file).name) == (
        "R-ESRGAN 2x+",
        "RealESRGAN_x2plus.safetensors",
    )
    key = f"hires=2.0,R-ESRGAN 2x+,10,0.5,{h.upscaler_hash},a1111-steps"
    assert Extras(hires=h).key() == key
    job = build_plan(quick_cfg(hires={**HIRES, "upscaler": "R-ESRGAN 2x+"}, folders=folders)).jobs[
        0
    ]
    assert "Hires upscaler: R-ESRGAN 2x+," in infotext_for(job)
    # another file under the same name makes other pixels: another id
    other = a1111 / "models" / "RealESRGAN" / "RealESRGAN_x2plus.safetensors"
    shutil.copy(DATA / "compact_x4_nf8_nc4.safetensors", other)
    again = build_plan(quick_cfg(hires={**HIRES, "upscaler": "R-ESRGAN 2x+"}, folders=folders))
    assert again.jobs[0].job_id != job.job_id


def test_esrgan_files_go_by_stem_and_pickles_need_allow_pickle(a1111):
    folders = {"a1111": str(a1111)}
    with pytest.raises(RecipeError) as err:
        hires("4x-Tiny", folders)
    assert err.value.field == "hires.upscaler" and "model.allow_pickle" in err.value.allowed
    h = hires("4x-tiny", folders, allow_pickle=True)
    assert h.upscaler == "4x-Tiny" and h.label == "4x-Tiny" and h.upscaler_file.endswith(".pth")


@pytest.mark.parametrize(
    "name, words",
    [
        ("R-ESRGAN 4x", ["closest match: 'R-ESRGAN 4x+'", "Latent (antialiased)", "4x-Tiny"]),
        ("4x-Tinny", ["closest match: '4x-Tiny'"]),
        ("SwinIR 4x", ["SwinIR 4x is an architecture sdbatch does not build"]),
        ("R-ESRGAN 4x+", ["RealESRGAN_x4plus.pth, not found in", "v0.1.0/RealESRGAN_x4plus.pth"]),
    ],
)
def test_unknown_names_are_one_line_with_the_closest_name(a1111, name, words):
    with pytest.raises(RecipeError) as err:
        hires(name, {"a1111": str(a1111)})
    text = str(err.value)
    assert text.startswith(f"hires.upscaler: {name!r} is not allowed; ") and "\n" not in text
    for word in words:
        assert word in text


def test_a_file_of_another_architecture_is_refused_by_its_keys(a1111):
    tensor = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    header = json.dumps({"layers.0.attn.qkv.weight": tensor}).encode()  # a SwinIR key
    swin = a1111 / "models" / "ESRGAN" / "4x-Swin.safetensors"
    swin.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(RecipeError) as err:
        hires("4x-Swin", {"a1111": str(a1111)})
    assert "an ESRGAN-family upscaler" in str(err.value) and str(swin) in str(err.value)


def test_no_upscaler_folder_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv("SDBATCH_UPSCALERS", raising=False)
    monkeypatch.delenv("SDBATCH_A1111", raising=False)
    with pytest.raises(RecipeError) as err:
        hires("4x-UltraSharp", {})
    assert "no upscaler folder is set" in str(err.value)


# ------------------------------------------------------------------------------ replay

A1111_LINE = (
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 64x64, "
    "VAE hash: {vae_hash}, VAE: {vae}, Denoising strength: 0.5, Hires upscale: 2, "
    "Hires upscaler: {upscaler}, Version: v1.10.1"
)


@pytest.fixture
def replay_root(a1111, monkeypatch):
    """SDBATCH_A1111 with R-ESRGAN 4x+'s file (a .pth) and a VAE (encoder keys only)."""
    from safetensors.numpy import save_file

    np = pytest.importorskip("numpy")
    shutil.copy(
        DATA / "esrgan_old_x4_nf8_nb1.pth", a1111 / "models/RealESRGAN/RealESRGAN_x4plus.pth"
    )
    (a1111 / "models" / "VAE").mkdir()
    vae = a1111 / "models" / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors"
    save_file({"encoder.conv_in.weight": np.zeros((8, 3, 1, 1), np.float16)}, str(vae))
    monkeypatch.setenv("SDBATCH_A1111", str(a1111))
    for env in ("SDBATCH_VAE", "SDBATCH_UPSCALERS"):
        monkeypatch.delenv(env, raising=False)
    return a1111


def a1111_text(**fields) -> str:
    return "a cat\nNegative prompt: blurry\n" + A1111_LINE.format(**fields)


def test_replay_names_the_upscaler_and_the_vae_and_the_recipe_plans(replay_root):
    from sdbatch.plan.hashing import model_hash
    from sdbatch.views.replay import recipe_from_infotext

    vae = replay_root / "models/VAE/vae-ft-mse-840000-ema-pruned.safetensors"
    text = a1111_text(vae_hash=model_hash(vae), vae=vae.name, upscaler="R-ESRGAN 4x+")
    recipe = recipe_from_infotext(text, "x")
    assert recipe.values["hires"]["upscaler"] == "R-ESRGAN 4x+"
    assert recipe.values["model"] == {"vae": "vae-ft-mse-840000-ema-pruned"}
    warnings = [w for w in recipe.warnings if not w.startswith("Model: not in the infotext")]
    assert warnings == [  # the file is a pickle: the one thing the user must add
        "Hires upscaler: R-ESRGAN 4x+ is "
        f"{replay_root / 'models/RealESRGAN/RealESRGAN_x4plus.pth'}, a pickle: run with "
        "model.allow_pickle=true"
    ]
    assert "  upscaler: R-ESRGAN 4x+\n" in recipe.to_yaml()
    values = {k: v for k, v in recipe.values.items() if k not in ("name", "sampler")}
    values["model"] = {"path": None, "name": None, "allow_pickle": True, **values["model"]}
    job = build_plan(quick_cfg(**values)).jobs[0]
    assert job.extras.hires.upscaler_file.endswith("RealESRGAN_x4plus.pth")
    assert "Hires upscaler: R-ESRGAN 4x+" in infotext_for(job)
    assert f"VAE: {vae.name}" in infotext_for(job)


def test_replay_finds_a_renamed_vae_by_hash_and_warns_once_when_there_is_none(replay_root):
    from sdbatch.plan.hashing import model_hash
    from sdbatch.views.replay import recipe_from_infotext

    vae = replay_root / "models/VAE/vae-ft-mse-840000-ema-pruned.safetensors"
    text = a1111_text(vae_hash=model_hash(vae), vae="mse.ckpt", upscaler="Latent")
    recipe = recipe_from_infotext(text, "x")
    assert recipe.values["model"] == {"vae": "vae-ft-mse-840000-ema-pruned"}
    assert recipe.values["hires"]["upscaler"] == "latent"
    assert not [w for w in recipe.warnings if "VAE" in w or "upscaler" in w]
    missing = recipe_from_infotext(a1111_text(vae_hash="0123456789", vae="kl-f8-anime2.ckpt",
                                              upscaler="4x-UltraSharp"), "x")  # fmt: skip
    assert "vae" not in missing.values.get("model", {})
    assert "not reproduced: VAE: kl-f8-anime2.ckpt" in missing.comments
    vae_lines = [w for w in missing.warnings if "VAE" in w]
    assert len(vae_lines) == 1 and "not in " in vae_lines[0] and "\n" not in vae_lines[0]
    (up,) = [w for w in missing.warnings if "Hires upscaler" in w]
    assert up.startswith("Hires upscaler: 4x-UltraSharp: ") and "closest match" in up
