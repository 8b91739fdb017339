"""One policy for every weight file sdbatch loads, checked at plan time without torch.

Checkpoints, VAE files and folders and every component of a diffusers folder: a pickle is
refused unless ``model.allow_pickle``, and then must be one ``torch.load(weights_only=True)``
reads (the only way diffusers reads pickles); a ``.safetensors`` file must be whole; a diffusers
folder must hold every component its ``model_index.json`` lists. The files here are small and
real: safetensors' own writer, pickles in torch.save's layout, and (in one subprocess, so this
process stays torch-free) files written by torch.save and judged by torch.load itself.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdbatch.errors import RecipeError
from sdbatch.plan.checkpoints import check_weights_file, resolve_models
from sdbatch.plan.weights import WEIGHTS_ONLY_GLOBALS, from_pretrained_kwargs, weights_only_problem
from tests.conftest import ROOT

PICKLE_REFUSED = "convert it to .safetensors or pass model.allow_pickle=true on the command line"
SD1 = {
    "model.diffusion_model.input_blocks.0.0.weight": np.zeros((8, 4, 1, 1), np.float16),
    "cond_stage_model.transformer.text_model.final_layer_norm.bias": np.zeros(8, np.float16),
}
VAE = {"encoder.conv_in.weight": np.zeros((8, 3, 1, 1), np.float16)}
COMPONENTS = {
    "unet": ("diffusers", "UNet2DConditionModel", "diffusion_pytorch_model"),
    "vae": ("diffusers", "AutoencoderKL", "diffusion_pytorch_model"),
    "text_encoder": ("transformers", "CLIPTextModel", "model"),
    "tokenizer": ("transformers", "CLIPTokenizer", None),
    "scheduler": ("diffusers", "PNDMScheduler", None),
}


def torch_zip(path: Path, obj: object, protocol: int = 2) -> Path:
    """torch.save's layout: a zip holding archive/data.pkl (protocol 2, as torch.save writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=protocol))
    return path


def diffusers_folder(root: Path, pickled: tuple[str, ...] = (), leave_out: str = "") -> Path:
    """A small SD 1.x diffusers folder; components in ``pickled`` get only ``.bin`` weights."""
    index = {"_class_name": "StableDiffusionPipeline", "safety_checker": [None, None]}
    for name, (library, cls, weights) in COMPONENTS.items():
        index[name] = [library, cls]
        if name == leave_out:
            continue
        sub = root / name
        sub.mkdir(parents=True)
        if weights is None:
            config = "scheduler_config.json" if name == "scheduler" else "tokenizer_config.json"
            (sub / config).write_text("{}")
            continue
        (sub / "config.json").write_text("{}")
        if name in pickled:
            torch_zip(sub / f"{weights}.bin", {"weight": None})
        else:
            save_file({"weight": np.zeros(4, np.float16)}, str(sub / f"{weights}.safetensors"))
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def error_of(model: dict) -> RecipeError:
    with pytest.raises(RecipeError) as err:
        resolve_models(model)
    assert "\n" not in str(err.value)
    return err.value


# ------------------------------------------------------------------------ pickles refused


def test_a_folder_whose_unet_has_only_pickle_weights_is_refused_naming_the_file(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15", pickled=("unet",))
    err = error_of({"path": str(folder)})
    bin_file = folder / "unet" / "diffusion_pytorch_model.bin"
    assert str(err) == f"model.path: {str(bin_file)!r} is not allowed; " + (
        "pickle weights can run code when loaded; " + PICKLE_REFUSED
    )
    model = resolve_models({"path": str(folder), "allow_pickle": True})[0]
    assert model.allow_pickle and model.key == model.hash  # how to load, not what is drawn


def test_a_text_encoder_with_only_pytorch_model_bin_is_refused_too(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15", pickled=("text_encoder",))
    err = error_of({"path": str(folder)})
    assert err.field == "model.path" and err.value.endswith("text_encoder/model.bin")


def test_a_pickle_beside_safetensors_is_not_what_loads_so_it_is_not_refused(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15")
    torch_zip(folder / "unet" / "diffusion_pytorch_model.bin", {"weight": None})
    assert resolve_models({"path": str(folder)})[0].family == "sd1"


def test_a_folder_named_in_model_dir_is_refused_under_model_name(tmp_path):
    diffusers_folder(tmp_path / "models" / "old-sd15", pickled=("vae",))
    err = error_of({"dir": str(tmp_path / "models"), "name": "old-sd15"})
    assert err.field == "model.name" and "vae/diffusion_pytorch_model.bin" in err.value


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".pth"])
def test_pickle_vae_files_are_refused_unless_allowed(tmp_path, suffix):
    vae = torch_zip(tmp_path / f"kl-f8-anime2{suffix}", {"state_dict": dict.fromkeys(VAE)})
    err = error_of({"vae": str(vae)})
    assert err.field == "model.vae" and err.value == str(vae) and PICKLE_REFUSED in str(err)
    assert resolve_models({"vae": str(vae), "allow_pickle": True})[0].vae_name == vae.name


@pytest.mark.parametrize("layout", ["flat", "vae subfolder"])
def test_a_vae_folder_with_diffusion_pytorch_model_bin_is_refused_unless_allowed(tmp_path, layout):
    folder = tmp_path / "vae-ft-mse"
    sub = folder if layout == "flat" else folder / "vae"
    sub.mkdir(parents=True)
    (sub / "config.json").write_text("{}")
    weights = torch_zip(sub / "diffusion_pytorch_model.bin", {"weight": None})
    err = error_of({"vae": str(folder)})
    assert err.field == "model.vae" and err.value == str(weights) and PICKLE_REFUSED in str(err)
    assert resolve_models({"vae": str(folder), "allow_pickle": True})[0].vae == str(folder)


def test_the_loader_asks_diffusers_for_safetensors_only_without_allow_pickle():
    assert from_pretrained_kwargs(False) == {"use_safetensors": True}
    assert from_pretrained_kwargs(True) == {}


# ------------------------------------------------------------------ truncated safetensors


def _truncated(path: Path, tensors: dict, cut: int) -> Path:
    save_file(tensors, str(path))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - cut)
    return path


@pytest.mark.parametrize("cut", [1, 200], ids=["tensor data cut", "header cut"])
def test_a_truncated_checkpoint_is_one_line_naming_model_path(tmp_path, cut):
    path = _truncated(tmp_path / "dreamshaper_8.safetensors", SD1, cut)
    err = error_of({"path": str(path)})
    assert str(err).startswith(f"model.path: {str(path)!r} is not allowed; a readable ")
    assert "truncated: its header needs" in str(err) and "download it again" in str(err)


def test_a_truncated_vae_is_one_line_naming_model_vae(tmp_path):
    path = _truncated(tmp_path / "vae-ft-mse-840000.safetensors", VAE, 1)
    err = error_of({"vae": str(path)})
    assert err.field == "model.vae" and "truncated" in str(err)


def test_a_truncated_component_of_a_folder_is_named(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    _truncated(weights, {"weight": np.zeros(64, np.float16)}, 3)
    err = error_of({"path": str(folder)})
    assert err.value == str(weights) and "truncated" in str(err)


def test_a_whole_safetensors_file_passes(tmp_path):
    path = tmp_path / "whole.safetensors"
    save_file(SD1, str(path))
    check_weights_file(path, "model.path", allow_pickle=False)


# ------------------------------------------------------------------- incomplete folders


def test_a_folder_missing_its_unet_names_the_component(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15", leave_out="unet")
    err = error_of({"path": str(folder)})
    assert str(err) == (
        f"model.path: {str(folder)!r} is not allowed; model_index.json lists unet "
        "(UNet2DConditionModel), but unet/ is missing; a complete diffusers folder (an "
        "interrupted copy or download?)"
    )


@pytest.mark.parametrize(
    ("remove", "says"),
    [
        (
            "unet/diffusion_pytorch_model.safetensors",
            "unet (UNet2DConditionModel) holds no weights",
        ),
        ("text_encoder/config.json", "has no text_encoder/config.json"),
        ("scheduler/scheduler_config.json", "has no scheduler/scheduler_config.json"),
        ("tokenizer/tokenizer_config.json", "tokenizer/ is empty"),
    ],
)
def test_a_component_without_its_files_is_named(tmp_path, remove, says):
    folder = diffusers_folder(tmp_path / "sd15")
    (folder / remove).unlink()
    assert says in str(error_of({"path": str(folder)}))


def test_a_missing_shard_is_named(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file(
        {"a": np.zeros(1, np.float16)}, str(folder / "text_encoder" / index["weight_map"]["a"])
    )
    err = error_of({"path": str(folder)})
    assert "text_encoder (CLIPTextModel) misses model-00002-of-00002.safetensors" in str(err)


def test_model_vae_lets_a_folder_go_without_its_own_vae(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15", leave_out="vae")
    vae = tmp_path / "vae.safetensors"
    save_file(VAE, str(vae))
    assert "vae/ is missing" in str(error_of({"path": str(folder)}))
    assert resolve_models({"path": str(folder), "vae": str(vae)})[0].vae == str(vae)


def test_the_embedded_model_passes_every_check():
    assert resolve_models({})[0].family == "sd1"


# --------------------------------------------------------- globals torch.load would refuse


class RunsCode:
    """Unpickling this runs a shell command (what makes pickles dangerous)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_naming_a_class_is_refused_with_the_global_when_pickle_is_allowed(tmp_path):
    ckpt = torch_zip(
        tmp_path / "lightning.ckpt",
        {"state_dict": dict.fromkeys(SD1), "hyper_parameters": argparse.Namespace(lr=1e-4)},
    )
    err = error_of({"path": str(ckpt), "allow_pickle": True})
    assert str(err).startswith(
        f"model.path: {str(ckpt)!r} is not allowed; its pickle needs argparse.Namespace, which "
        "torch.load(weights_only=True) refuses"
    )
    assert "re-save just its state_dict, or convert it to .safetensors" in str(err)


def test_a_pickle_that_would_run_code_is_named_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    vae = torch_zip(tmp_path / "vae.pt", {"state_dict": {}, "x": RunsCode(marker)})
    err = error_of({"vae": str(vae), "allow_pickle": True})
    assert f"its pickle needs {os.system.__module__}.system" in str(err)
    assert not marker.exists()


def test_protocol_4_pickles_name_their_globals_and_opcodes(tmp_path):
    with_class = torch_zip(tmp_path / "a.ckpt", {"args": argparse.Namespace()}, protocol=4)
    assert "needs argparse.Namespace" in weights_only_problem(with_class)  # STACK_GLOBAL
    plain = torch_zip(tmp_path / "b.ckpt", {"state_dict": {"w": 1}}, protocol=4)
    assert "uses opcode FRAME, which torch.load(weights_only=True) cannot read" in (
        weights_only_problem(plain)
    )


def test_a_file_that_is_no_torch_pickle_is_refused_when_pickle_is_allowed(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    err = error_of({"path": str(junk), "allow_pickle": True})
    assert "a readable torch pickle (" in str(err)


TORCH_SCRIPT = r"""
import argparse, json, shutil, sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch._weights_only_unpickler import _get_allowed_globals

from sdbatch.plan.checkpoints import Model
from sdbatch.render.loading import load_pipeline
from sdbatch.models import EMBEDDED_MODEL_PATH

out = Path(sys.argv[1])


class RunsCode:
    def __reduce__(self):
        return (print, ("ran",))


sd = {"w": torch.zeros(2, 2), "b": torch.ones(3, dtype=torch.float16)}
files = {
    "state_dict.ckpt": ({"state_dict": sd}, {}),
    "legacy.ckpt": ({"state_dict": sd}, {"_use_new_zipfile_serialization": False}),
    "parameter.pt": ({"p": torch.nn.Parameter(torch.zeros(1))}, {}),
    "namespace.ckpt": ({"state_dict": sd, "hyper_parameters": argparse.Namespace(lr=1)}, {}),
    "runs_code.ckpt": ({"state_dict": sd, "x": RunsCode()}, {}),
    "protocol4.ckpt": ({"state_dict": sd}, {"pickle_protocol": 4}),
}
verdicts = {}
for name, (obj, kwargs) in files.items():
    torch.save(obj, out / name, **kwargs)
    try:
        torch.load(out / name, weights_only=True)
        verdicts[name] = None
    except Exception as exc:
        verdicts[name] = str(exc).splitlines()[0]

folder = out / "bin-unet"
shutil.copytree(EMBEDDED_MODEL_PATH, folder, ignore=shutil.ignore_patterns("*.png", "*.md"))
unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
torch.save(load_file(unet), unet.with_suffix(".bin"))
unet.unlink()
loads = {}
for allow in (False, True):
    try:
        model = Model("bin-unet", str(folder), "0" * 10, allow_pickle=allow)
        load_pipeline(model, torch.device("cpu"), torch.float32)
        loads[str(allow)] = None
    except Exception as exc:
        loads[str(allow)] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"verdicts": verdicts, "loads": loads, "allowed": sorted(_get_allowed_globals())}))
"""


@pytest.fixture(scope="module")
def torch_made(tmp_path_factory) -> tuple[Path, dict]:
    """Files torch.save wrote and what torch.load(weights_only=True) made of each, plus the
    loader's answer for a folder whose UNet is only a .bin (one subprocess: torch stays out)."""
    out = tmp_path_factory.mktemp("torch_made")
    res = subprocess.run(
        [sys.executable, "-c", TORCH_SCRIPT, str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out, json.loads(res.stdout.strip().splitlines()[-1])


def test_the_allow_list_is_torchs_own(torch_made):
    _out, made = torch_made
    assert set(made["allowed"]) == WEIGHTS_ONLY_GLOBALS


def test_the_plan_refuses_exactly_the_pickles_torch_load_refuses(torch_made):
    out, made = torch_made
    for name, torch_error in made["verdicts"].items():
        ours = weights_only_problem(out / name)
        assert (ours is None) == (torch_error is None), (name, ours, torch_error)
    assert "argparse.Namespace" in weights_only_problem(out / "namespace.ckpt")
    assert "needs builtins.print" in weights_only_problem(out / "runs_code.ckpt")


def test_at_load_time_a_pickle_only_folder_needs_allow_pickle(torch_made):
    _out, made = torch_made
    refused = made["loads"]["False"]
    assert refused and "diffusion_pytorch_model.safetensors" in refused
    assert made["loads"]["True"] is None


def test_checking_weights_imports_no_torch(tmp_path):
    folder = diffusers_folder(tmp_path / "sd15", pickled=("unet",))
    code = (
        "import sys; from sdbatch.plan.checkpoints import resolve_models; "
        f"resolve_models({{'path': {str(folder)!r}, 'allow_pickle': True}}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
