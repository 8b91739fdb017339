"""A1111's folders and name lookup by file stem (sdbatch.plan.model_folders)."""

from __future__ import annotations

import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan.model_folders import find_file, folders_of, list_files


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def a1111(tmp_path):
    root = tmp_path / "webui"
    _touch(root / "models/Lora/detail.safetensors")
    _touch(root / "models/Lora/styles/ink.safetensors")
    _touch(root / "models/Lora/styles/ink.pt")  # the safetensors file of one stem wins
    _touch(root / "models/LyCORIS/loha_thing.safetensors")
    _touch(root / "models/Lora/notes.txt")
    _touch(root / "embeddings/EasyNegative.safetensors")
    _touch(root / "embeddings/neg/bad-hands-5.pt")
    _touch(root / "models/VAE/vae-ft-mse-840000-ema-pruned.safetensors")
    _touch(root / "models/RealESRGAN/RealESRGAN_x4plus.pth")
    _touch(root / "models/ESRGAN/4x-UltraSharp.pth")
    return root


def test_root_finds_every_kind_by_stem_in_subfolders(a1111):
    folders = {"a1111": str(a1111)}
    env: dict[str, str] = {}
    assert (
        find_file("lora", "ink", folders, "prompt", env)
        == a1111 / "models/Lora/styles/ink.safetensors"
    )
    assert find_file("lora", "styles/ink", folders, "prompt", env).suffix == ".safetensors"
    assert find_file("lora", "loha_thing", folders, "prompt", env).parent.name == "LyCORIS"
    assert find_file("embeddings", "bad-hands-5", folders, "prompt", env).suffix == ".pt"
    assert (
        find_file("embeddings", "easynegative", folders, "prompt", env).name
        == "EasyNegative.safetensors"
    )
    vae = find_file("vae", "vae-ft-mse-840000-ema-pruned", folders, "model.vae", env)
    assert vae.parent.name == "VAE"
    assert find_file("upscalers", "4x-UltraSharp", folders, "hires.upscaler", env).suffix == ".pth"
    assert "notes" not in list_files("lora", folders, env)


def test_setting_beats_environment_beats_root(a1111, tmp_path):
    own = tmp_path / "mylora"
    _touch(own / "mine.safetensors")
    env = {"SDBATCH_A1111": str(a1111)}
    assert folders_of("lora", {}, env)[0] == a1111 / "models/Lora"
    assert folders_of("lora", {}, {**env, "SDBATCH_LORA": str(own)}) == [own]
    assert folders_of("lora", {"lora": str(own)}, env) == [own]
    assert folders_of("lora", {}, {}) == []


def test_unknown_name_lists_closest(a1111):
    with pytest.raises(RecipeError) as e:
        find_file("lora", "detial", {"a1111": str(a1111)}, "prompt[0]", {})
    msg = str(e.value)
    assert msg.startswith("prompt[0]: 'detial'") and "closest match: 'detail'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "~/x", "a/../../b"])
def test_names_stay_inside_their_folder(a1111, name):
    with pytest.raises(RecipeError, match="no '..'"):
        find_file("lora", name, {"a1111": str(a1111)}, "prompt", {})


def test_no_folder_says_which_setting(tmp_path):
    with pytest.raises(RecipeError, match="folders.lora .or SDBATCH_LORA."):
        find_file("lora", "detail", {}, "prompt", {})
