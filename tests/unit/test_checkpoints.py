"""Model identity, checkpoint families, model.dir lookup, VAE / clip skip, hash cache.

Pure: no torch. Checkpoints here are tiny fake files with the right key names; a
safetensors file is an 8-byte header length, a JSON header and the tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sdbatch.errors import RecipeError
from sdbatch.outputs.record import infotext_for
from sdbatch.plan import hashing
from sdbatch.plan.checkpoints import (
    SHIPPED_CONFIGS,
    Model,
    checkpoint_family,
    find_checkpoint,
    list_checkpoints,
    resolve_models,
)
from sdbatch.plan.recipe import build_plan
from tests.conftest import ROOT, quick_cfg

UNET = "model.diffusion_model.input_blocks.0.0.weight"
SD1_KEYS = {
    UNET: [320, 4, 3, 3],
    "cond_stage_model.transformer.text_model.final_layer_norm.bias": [768],
}
SD1_KEYS["first_stage_model.encoder.conv_in.weight"] = [128, 3, 3, 3]
SDXL_KEYS = {UNET: [320, 4, 3, 3], "conditioner.embedders.1.model.ln_final.bias": [1280]}
SDXL_KEYS["conditioner.embedders.0.transformer.text_model.final_layer_norm.bias"] = [768]
VAE_KEYS = {"encoder.conv_in.weight": [128, 3, 3, 3], "decoder.conv_out.bias": [3]}


def fake_safetensors(path: Path, keys: dict[str, list[int]], salt: str = "") -> Path:
    """A valid safetensors file: one byte of data per tensor (shapes are only claimed)."""
    header: dict = {"__metadata__": {"format": "pt", "salt": salt}}
    for i, (name, shape) in enumerate(keys.items()):
        header[name] = {"dtype": "U8", "shape": shape, "data_offsets": [i, i + 1]}
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(len(keys)))
    return path


def fake_torch_zip(path: Path, keys) -> Path:
    """The layout of torch.save (a zip with <name>/data.pkl, pickle protocol 2); the pickle is
    only parsed."""
    data = pickle.dumps({"state_dict": dict.fromkeys(keys)}, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
    return path


# ------------------------------------------------------------------------------ families


@pytest.mark.parametrize(
    ("keys", "family"), [(SD1_KEYS, "sd1"), (SDXL_KEYS, "sdxl")], ids=["sd1", "sdxl"]
)
def test_family_comes_from_the_key_names(tmp_path, keys, family):
    assert checkpoint_family(fake_safetensors(tmp_path / "m.safetensors", keys)) == family


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({UNET: [320, 4, 3, 3], "cond_stage_model.model.ln_final.bias": [1024]}, "SD 2.x"),
        ({UNET: [384, 4, 3, 3], "conditioner.embedders.0.model.ln_final.bias": [1280]}, "refiner"),
        ({"lora_unet_down_blocks_0.alpha": []}, "LoRA"),
        (VAE_KEYS, "model.vae"),
        ({"down_blocks.0.resnets.0.conv1.weight": [1]}, "one diffusers component"),
        ({"foo": [1]}, "no SD 1.x"),
        ({**SD1_KEYS, UNET: [320, 9, 3, 3]}, "9 input channels"),
    ],
    ids=["sd2", "refiner", "lora", "vae", "component", "unknown", "inpainting"],
)
def test_unsupported_files_are_one_line_errors_naming_the_file(tmp_path, keys, says):
    path = fake_safetensors(tmp_path / "odd.safetensors", keys)
    with pytest.raises(RecipeError) as err:
        checkpoint_family(path)
    message = str(err.value)
    assert message.startswith(f"model.path: {str(path)!r} is not allowed;")
    assert says in message and "\n" not in message
    assert "SD 1.x or SDXL" in message


def test_a_file_that_is_not_safetensors_is_named(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(RecipeError, match="broken.safetensors.*readable .safetensors"):
        checkpoint_family(path)


# -------------------------------------------------------------------------------- pickles


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path):
    ckpt = fake_torch_zip(tmp_path / "old.ckpt", SD1_KEYS)
    with pytest.raises(RecipeError) as err:
        resolve_models({"path": str(ckpt)})
    message = str(err.value)
    assert message.startswith("model.path: ") and "old.ckpt" in message
    assert (
        "convert it to .safetensors or pass model.allow_pickle=true on the command line" in message
    )
    model = resolve_models({"path": str(ckpt), "allow_pickle": True})[0]
    assert (model.family, model.name) == ("sd1", "old")
    assert model.config == str(SHIPPED_CONFIGS["sd1"])


def test_pickle_keys_are_read_without_unpickling(tmp_path, monkeypatch):
    ckpt = fake_torch_zip(tmp_path / "xl.ckpt", SDXL_KEYS)
    monkeypatch.setattr(pickle, "loads", None)  # would raise if anything unpickled
    monkeypatch.setattr(pickle, "load", None)
    assert checkpoint_family(ckpt) == "sdxl"
    legacy = tmp_path / "legacy.pt"  # pre-zip torch: several pickles in a row
    legacy.write_bytes(b"".join(pickle.dumps(x) for x in (0x1950A86A20F9469CFC6C, 1001, {})))
    with legacy.open("ab") as f:
        f.write(pickle.dumps(dict.fromkeys(SD1_KEYS)) + b"\x00raw tensor bytes")
    assert checkpoint_family(legacy) == "sd1"


# ------------------------------------------------------------------------------ model.dir


@pytest.fixture
def models_dir(tmp_path) -> Path:
    """Like A1111's models/Stable-diffusion: files, a subfolder, a pickle twin, a diffusers
    folder and a <stem>.config/ folder (not a model)."""
    root = tmp_path / "Stable-diffusion"
    fake_safetensors(root / "AnythingV5V3_v5PrtRE.safetensors", SD1_KEYS, "anything")
    fake_torch_zip(root / "AnythingV5V3_v5PrtRE.ckpt", SD1_KEYS)
    fake_safetensors(root / "sdxl" / "sd_xl_base_1.0.safetensors", SDXL_KEYS, "xl")
    fake_safetensors(root / "dreamshaper_8.safetensors", SD1_KEYS, "dream")
    (root / "dreamshaper_8.config").mkdir()
    (root / "dreamshaper_8.config" / "model_index.json").write_text("{}")
    diffusers = root / "my-diffusers"
    (diffusers / "unet").mkdir(parents=True)
    (diffusers / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    fake_safetensors(diffusers / "unet" / "diffusion_pytorch_model.safetensors", {"x": [1]})
    (root / "notes.txt").write_text("not a model")
    return root


def test_model_dir_lists_checkpoints_like_a1111(models_dir):
    found = list_checkpoints(models_dir)
    assert list(found) == [
        "AnythingV5V3_v5PrtRE",
        "dreamshaper_8",
        "my-diffusers",
        "sdxl/sd_xl_base_1.0",
    ]
    assert found["AnythingV5V3_v5PrtRE"].suffix == ".safetensors"  # preferred over .ckpt


@pytest.mark.parametrize(
    "name",
    [
        "AnythingV5V3_v5PrtRE",
        "AnythingV5V3_v5PrtRE.safetensors",
        "anythingv5v3_v5prtre",
    ],
)
def test_model_name_picks_the_file_by_stem(models_dir, name):
    path = find_checkpoint(models_dir, name)
    assert path == models_dir / "AnythingV5V3_v5PrtRE.safetensors"
    model = resolve_models({"dir": str(models_dir), "name": name})[0]
    assert (model.name, model.family, model.path) == ("AnythingV5V3_v5PrtRE", "sd1", str(path))


def test_subfolders_and_diffusers_folders_are_found(models_dir):
    xl = resolve_models({"dir": str(models_dir), "name": "sd_xl_base_1.0"})[0]
    assert (xl.family, xl.name, xl.config) == (
        "sdxl",
        "sd_xl_base_1.0",
        str(SHIPPED_CONFIGS["sdxl"]),
    )
    assert find_checkpoint(models_dir, "sdxl/sd_xl_base_1.0") == Path(xl.path)
    folder = resolve_models({"dir": str(models_dir), "name": "my-diffusers"})[0]
    assert (folder.family, folder.config) == ("sd1", None)


def test_sibling_config_folder_is_used_and_enters_the_key(models_dir):
    model = resolve_models({"dir": str(models_dir), "name": "dreamshaper_8"})[0]
    assert model.config == str(models_dir / "dreamshaper_8.config")
    assert model.config_hash and model.key == f"{model.hash} config={model.config_hash}"
    assert model.infotext() == {"Model hash": model.hash, "Model": "dreamshaper_8"}


def test_unknown_name_lists_available_names_and_the_closest_match(models_dir):
    with pytest.raises(RecipeError) as err:
        resolve_models({"dir": str(models_dir), "name": "AnythingV5"})
    message = str(err.value)
    assert message.startswith("model.name: 'AnythingV5' is not allowed; not in ")
    assert (
        "available: AnythingV5V3_v5PrtRE, dreamshaper_8, my-diffusers, sdxl/sd_xl_base_1.0"
        in message
    )
    assert message.endswith("closest match: 'AnythingV5V3_v5PrtRE'")
    assert "\n" not in message


@pytest.mark.parametrize("name", ["../outside", "/abs/model", "~/model", "C:\\m", "a/../../b"])
def test_a_name_that_leaves_model_dir_is_refused_before_looking(models_dir, name):
    (models_dir.parent / "outside.safetensors").write_bytes(b"")
    with pytest.raises(RecipeError) as err:
        resolve_models({"dir": str(models_dir), "name": name})
    assert str(err.value) == (
        f"model.name: {name!r} is not allowed; a checkpoint in model.dir: its file stem or a "
        "path relative to it like anime/AnythingV5 (no '..' part, not absolute); a file "
        "elsewhere goes in model.path"
    )


def test_long_listings_are_cut_at_twenty(tmp_path):
    for i in range(25):
        fake_safetensors(tmp_path / f"model_{i:02d}.safetensors", SD1_KEYS)
    with pytest.raises(RecipeError, match=r"model_19 \(5 more\)"):
        find_checkpoint(tmp_path, "nothing-like-it")


def test_ambiguous_stem_asks_for_the_relative_path(models_dir):
    fake_safetensors(models_dir / "anime" / "flat2d.safetensors", SD1_KEYS, "a")
    fake_safetensors(models_dir / "real" / "flat2d.safetensors", SD1_KEYS, "b")
    with pytest.raises(RecipeError, match="ambiguous; write one of: anime/flat2d, real/flat2d"):
        find_checkpoint(models_dir, "flat2d")
    assert find_checkpoint(models_dir, "real/flat2d").parent.name == "real"


@pytest.mark.parametrize(
    ("model", "field", "says"),
    [
        ({"dir": "/nonexistent/models", "name": "x"}, "model.dir", "an existing folder"),
        ({"dir": "DIR", "name": None}, "model.name", "available: AnythingV5V3_v5PrtRE"),
        ({"dir": "DIR", "path": "x.safetensors", "name": "x"}, "model.dir", "model.path is set"),
        ({"name": ["a", "b"]}, "model.name", "a list needs model.dir"),
        ({"path": "/nonexistent.safetensors"}, "model.path", "an existing file or folder"),
        ({"clip_skip": 0}, "model.clip_skip", "an integer in 1..12"),
        ({"clip_skip": "two"}, "model.clip_skip", "an integer in 1..12"),
        ({"clip_skip": True}, "model.clip_skip", "an integer in 1..12"),
        ({"vae": "/nonexistent/vae.safetensors"}, "model.vae", "no such file or folder"),
    ],
)
def test_bad_model_settings_are_one_line_errors(models_dir, model, field, says):
    model = {k: (str(models_dir) if v == "DIR" else v) for k, v in model.items()}
    with pytest.raises(RecipeError) as err:
        resolve_models(model)
    assert err.value.field == field and says in str(err.value) and "\n" not in str(err.value)


def test_unsupported_file_types_and_gguf_are_refused(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(
        RecipeError,
        match="model.path: .*model.gguf.* not allowed; an SD 1.x or SDXL base checkpoint",
    ):
        resolve_models({"path": str(gguf)})


def test_clip_skip_above_one_is_refused_for_sdxl(models_dir):
    with pytest.raises(RecipeError, match="model.clip_skip: 2 .*1 for SDXL"):
        resolve_models({"dir": str(models_dir), "name": "sd_xl_base_1.0", "clip_skip": 2})


# ------------------------------------------------------------------------- the model axis


def test_a_list_of_names_is_the_outermost_sweep_axis(models_dir):
    cfg = quick_cfg(
        model={"dir": str(models_dir), "name": ["dreamshaper_8", "AnythingV5V3_v5PrtRE"]}
    )
    plan = build_plan(cfg)
    single = build_plan(quick_cfg(model={"dir": str(models_dir), "name": "dreamshaper_8"}))
    assert len(plan.jobs) == 2 * len(single.jobs) == 8
    assert plan.axes["models"] == 2
    names = [j.model.name for j in plan.jobs]
    assert names == ["dreamshaper_8"] * 4 + ["AnythingV5V3_v5PrtRE"] * 4
    assert len({j.job_id for j in plan.jobs}) == 8
    assert all(len({j.model.key for j in b.jobs}) == 1 for b in plan.batches)  # one model a batch


def test_the_same_file_named_twice_is_one_model(models_dir):
    names = ["dreamshaper_8", "dreamshaper_8.safetensors"]
    assert len(resolve_models({"dir": str(models_dir), "name": names})) == 1


# ---------------------------------------------------------------------- VAE and clip skip


def test_vae_and_clip_skip_change_the_key_and_the_infotext_as_a1111_writes_them(tmp_path):
    vae = fake_safetensors(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors", VAE_KEYS)
    plain = resolve_models({})[0]
    with_vae = resolve_models({"vae": str(vae)})[0]
    skip2 = resolve_models({"clip_skip": 2})[0]
    both = resolve_models({"vae": str(vae), "clip_skip": 2})[0]
    assert plain.key == plain.hash  # unchanged ids for plain models
    assert len({plain.key, with_vae.key, skip2.key, both.key}) == 4
    vae_hash = hashlib.sha256(vae.read_bytes()).hexdigest()[:10]
    assert (with_vae.vae_name, with_vae.vae_hash) == (
        "vae-ft-mse-840000-ema-pruned.safetensors",
        vae_hash,
    )
    assert list(both.infotext()) == ["Model hash", "Model", "VAE hash", "VAE", "Clip skip"]
    assert "Clip skip" not in with_vae.infotext()  # A1111 writes it only above 1

    job = build_plan(quick_cfg(model={"vae": str(vae), "clip_skip": 2})).jobs[0]
    params = infotext_for(job).splitlines()[-1]
    assert (
        f"Size: 64x64, Model hash: {plain.hash}, Model: sdbatch-shapes, VAE hash: {vae_hash}, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2, RNG: CPU, Version: sdbatch "
    ) in params


def test_vae_and_clip_skip_change_job_ids(tmp_path):
    vae = fake_safetensors(tmp_path / "v.safetensors", VAE_KEYS)
    ids = [
        build_plan(quick_cfg(model=m)).jobs[0].job_id
        for m in ({}, {"vae": str(vae)}, {"clip_skip": 2})
    ]
    assert len(set(ids)) == 3


def test_vae_files_are_checked_and_pickles_refused(tmp_path):
    not_vae = fake_safetensors(tmp_path / "model.safetensors", {"foo": [1]})
    with pytest.raises(RecipeError, match="model.vae: .*no VAE encoder keys"):
        resolve_models({"vae": str(not_vae)})
    pt = tmp_path / "kl-f8-anime2.ckpt"
    pt.write_bytes(b"x")
    with pytest.raises(RecipeError, match="model.vae: .*allow_pickle=true on the command line"):
        resolve_models({"vae": str(pt)})
    folder = tmp_path / "vae-folder"
    folder.mkdir()
    with pytest.raises(RecipeError, match="no config.json"):
        resolve_models({"vae": str(folder)})
    (folder / "config.json").write_text("{}")
    with pytest.raises(RecipeError, match="the VAE folder holds no weights"):
        resolve_models({"vae": str(folder)})
    fake_safetensors(folder / "diffusion_pytorch_model.safetensors", VAE_KEYS)
    assert resolve_models({"vae": str(folder)})[0].vae_name == "vae-folder"


def test_a_model_is_a_frozen_slots_dataclass():
    model = Model("m", "/m", "0123456789")
    assert (model.family, model.clip_skip, model.key) == ("sd1", 1, "0123456789")
    with pytest.raises(AttributeError):
        model.hash = "x"  # type: ignore[misc]
    assert not hasattr(model, "__dict__")


# ------------------------------------------------------------------------------ hashing


def test_model_hash_is_a1111s_and_cached_by_size_and_mtime(tmp_path, monkeypatch):
    path = fake_safetensors(tmp_path / "m.safetensors", SD1_KEYS)
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert hashing.model_hash(path) == expected and len(calls) == 1
    assert hashing.model_hash(path) == expected and len(calls) == 1  # cache hit: not read
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert hashing.model_hash(path) == expected and len(calls) == 2  # mtime moved: re-read


@pytest.mark.parametrize("cache", ["[1, 2]", "{not json", '{"KEY": "oops"}', '{"KEY": {}}'])
def test_a_damaged_hash_cache_costs_a_reread_not_a_traceback(tmp_path, monkeypatch, cache):
    path = fake_safetensors(tmp_path / "m.safetensors", SD1_KEYS)
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    key = json.dumps(str(path.resolve()))[1:-1]
    (tmp_path / "cache" / "hashes.json").write_text(cache.replace("KEY", key))
    assert hashing.model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_resolving_models_imports_no_torch(models_dir):
    code = (
        "import sys; from sdbatch.plan.checkpoints import resolve_models; "
        f"resolve_models({{'dir': {str(models_dir)!r}, 'name': 'sd_xl_base_1.0'}}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
