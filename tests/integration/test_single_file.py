"""Single-file (LDM layout) checkpoints, VAE override, clip skip and SDXL, on tiny models.

The embedded tiny model is written out the way A1111/Civitai files are laid out
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``),
loaded back through sdbatch with the network cut off, and must draw the same pixels as the
diffusers folder it came from.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.plan.checkpoints import SHIPPED_CONFIGS, resolve_models
from sdbatch.plan.recipe import build_plan
from sdbatch.render.loading import load_tokenizer, load_vae
from sdbatch.render.pipeline import Renderer
from tests.conftest import quick_cfg

TINY = EMBEDDED_MODEL_PATH
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


# ------------------------------------------------------------- diffusers -> LDM key names
# The inverse of diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint (and of
# scripts/convert_diffusers_to_original_stable_diffusion.py), for any number of levels.

UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
]
UNET_RESNET += [("norm2", "out_layers.0"), ("conv2", "out_layers.3")]
UNET_RESNET += [("conv_shortcut", "skip_connection")]
VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v")]
VAE_ATTN += [("to_out.0", "proj_out")]


def _rename(key: str, prefixes: dict[str, tuple[str, list]]) -> str:
    for old in sorted(prefixes, key=len, reverse=True):
        if key.startswith(old):
            new, renames = prefixes[old]
            rest = key[len(old) :]
            for a, b in renames:
                if rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
            return new + rest
    raise KeyError(key)


def unet_to_ldm(sd: dict, config: dict) -> dict:
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    m = {
        "time_embedding.linear_1.": ("time_embed.0.", []),
        "time_embedding.linear_2.": ("time_embed.2.", []),
        "add_embedding.linear_1.": ("label_emb.0.0.", []),  # SDXL
        "add_embedding.linear_2.": ("label_emb.0.2.", []),
        "conv_in.": ("input_blocks.0.0.", []),
        "conv_norm_out.": ("out.0.", []),
        "conv_out.": ("out.2.", []),
        "mid_block.resnets.0.": ("middle_block.0.", UNET_RESNET),
        "mid_block.attentions.0.": ("middle_block.1.", []),
        "mid_block.resnets.1.": ("middle_block.2.", UNET_RESNET),
    }
    for i in range(n):
        for j in range(per):
            block = (per + 1) * i + j + 1
            m[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{block}.0.", UNET_RESNET)
            m[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{block}.1.", [])
        for j in range(per + 1):
            block = (per + 1) * i + j
            m[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{block}.0.", UNET_RESNET)
            m[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{block}.1.", [])
        if i < n - 1:
            down = f"input_blocks.{(per + 1) * (i + 1)}.0.op."
            m[f"down_blocks.{i}.downsamplers.0.conv."] = (down, [])
            slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
            m[f"up_blocks.{i}.upsamplers.0."] = (f"output_blocks.{(per + 1) * i + per}.{slot}.", [])
    return {"model.diffusion_model." + _rename(k, m): v for k, v in sd.items()}


def vae_to_ldm(sd: dict, config: dict, prefix: str = "first_stage_model.") -> dict:
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    res = [("conv_shortcut", "nin_shortcut")]
    m = {
        f"{p}.{a}": (f"{p}.{b}", [])
        for p in ("encoder", "decoder")
        for a, b in [
            ("conv_in.", "conv_in."),
            ("conv_out.", "conv_out."),
            ("conv_norm_out.", "norm_out."),
        ]
    }
    m |= {"quant_conv.": ("quant_conv.", []), "post_quant_conv.": ("post_quant_conv.", [])}
    for p in ("encoder", "decoder"):
        m[f"{p}.mid_block.resnets.0."] = (f"{p}.mid.block_1.", res)
        m[f"{p}.mid_block.resnets.1."] = (f"{p}.mid.block_2.", res)
        m[f"{p}.mid_block.attentions.0."] = (f"{p}.mid.attn_1.", VAE_ATTN)
    for i in range(n):
        for j in range(per):
            m[f"encoder.down_blocks.{i}.resnets.{j}."] = (f"encoder.down.{i}.block.{j}.", res)
        for j in range(per + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}."] = (f"decoder.up.{n - 1 - i}.block.{j}.", res)
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0."] = (f"encoder.down.{i}.downsample.", [])
            m[f"decoder.up_blocks.{i}.upsamplers.0."] = (f"decoder.up.{n - 1 - i}.upsample.", [])
    out = {}
    for k, v in sd.items():
        new = _rename(k, m)
        if ".mid.attn_1." in new and new.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM keeps the VAE attention projections as 1x1 convs
        out[prefix + new] = v
    return out


def clip_to_ldm(sd: dict) -> dict:
    """transformers' CLIPTextModel keys (flat in 5.x, ``text_model.``-prefixed in 4.x)."""
    pre = "cond_stage_model.transformer.text_model."
    out = {pre + k.removeprefix("text_model."): v for k, v in sd.items()}
    out[pre + "embeddings.position_ids"] = torch.arange(77)[None]  # as real SD 1.x files have
    return out


def sdxl_text_to_ldm(te: dict, te2: dict) -> dict:
    """CLIP-L as ``conditioner.embedders.0.transformer.*``; bigG (CLIPTextModelWithProjection)
    in OpenCLIP's layout as ``conditioner.embedders.1.model.*`` (fused q/k/v, transposed
    projection): the inverse of diffusers' convert_open_clip_checkpoint."""
    out = {"conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model."): v
           for k, v in te.items()}  # fmt: skip
    pre = "conditioner.embedders.1.model."
    names = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc")]
    names += [("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]
    qkv: dict[str, list] = {}
    for k, v in te2.items():
        if k == "text_projection.weight":
            out[pre + "text_projection"] = v.T.contiguous()
        elif k.startswith("text_model.embeddings.position_embedding."):
            out[pre + "positional_embedding"] = v
        elif k.startswith("text_model.embeddings.token_embedding."):
            out[pre + "token_embedding.weight"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out[pre + "ln_final." + k.rsplit(".", 1)[1]] = v
        else:
            layer, rest = k.removeprefix("text_model.encoder.layers.").split(".", 1)
            block = f"{pre}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in (
                "q_proj",
                "k_proj",
                "v_proj",
            ):
                kind = rest.rsplit(".", 1)[1]  # weight | bias
                qkv.setdefault(f"{block}attn.in_proj_{kind}", []).append((rest, v))
                continue
            for a, b in names:
                rest = rest.replace(a, b)
            out[block + rest] = v
    for key, parts in qkv.items():  # q, k, v in that order
        order = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
        parts.sort(key=lambda p: order[p[0].split(".")[1]])
        out[key] = torch.cat([v for _, v in parts])
    return out


def sdxl_to_ldm(folder: Path) -> dict:
    """A tiny SDXL diffusers folder as one SDXL LDM-layout state dict."""
    cfg = {c: json.loads((folder / c / "config.json").read_text()) for c in ("unet", "vae")}
    sd = unet_to_ldm(load_file(folder / "unet/diffusion_pytorch_model.safetensors"), cfg["unet"])
    sd |= vae_to_ldm(load_file(folder / "vae/diffusion_pytorch_model.safetensors"), cfg["vae"])
    te = load_file(folder / "text_encoder/model.safetensors")
    return sd | sdxl_text_to_ldm(te, load_file(folder / "text_encoder_2/model.safetensors"))


def tiny_to_ldm(folder: Path = TINY) -> dict:
    """The tiny diffusers folder as one LDM-layout state dict (fp16, as stored)."""
    cfg = {c: json.loads((folder / c / "config.json").read_text()) for c in ("unet", "vae")}
    sd = unet_to_ldm(load_file(folder / "unet/diffusion_pytorch_model.safetensors"), cfg["unet"])
    sd |= vae_to_ldm(load_file(folder / "vae/diffusion_pytorch_model.safetensors"), cfg["vae"])
    sd |= clip_to_ldm(load_file(folder / "text_encoder/model.safetensors"))
    sd["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # extra keys real files carry
    return sd


def copy_configs(src: Path, dst: Path) -> Path:
    """A config-only copy of a diffusers folder (JSON and tokenizer files, no weights)."""
    for f in src.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".txt"):
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / f.relative_to(src))
    return dst


def _no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """``tiny-ldm.safetensors`` + ``tiny-ldm.config/`` (its shapes are not SD 1.5's), and
    ``tiny-pickle.ckpt`` with the same weights."""
    root = tmp_path_factory.mktemp("Stable-diffusion")
    sd = tiny_to_ldm()
    save_file(sd, root / "tiny-ldm.safetensors")
    copy_configs(TINY, root / "tiny-ldm.config")
    torch.save({"state_dict": sd}, root / "tiny-pickle.ckpt")
    copy_configs(TINY, root / "tiny-pickle.config")
    return root


def render(model_cfg: dict, **overrides) -> list[np.ndarray]:
    """Two 64x64 images (one prompt, two seeds, one batch) through sdbatch's Renderer."""
    cfg = {"prompt": "a red circle", "seeds": [1, 2], **overrides}
    plan = build_plan(quick_cfg(model=model_cfg, **cfg))
    renderer = Renderer.load(plan.jobs[0].model, "cpu")
    return [pixels for batch in plan.batches for pixels, _ in renderer.render(batch.jobs)]


@pytest.fixture(scope="module")
def folder_images() -> list[np.ndarray]:
    return render({"path": None})


def test_ldm_single_file_draws_the_same_pixels_as_the_diffusers_folder(
    models_dir, folder_images, offline
):
    model = resolve_models({"path": str(models_dir / "tiny-ldm.safetensors")})[0]
    assert (model.family, model.name) == ("sd1", "tiny-ldm")
    assert model.config == str(models_dir / "tiny-ldm.config")
    images = render({"dir": str(models_dir), "name": "tiny-ldm"})
    assert len(images) == len(folder_images) == 2
    for ours, theirs in zip(images, folder_images, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_pickle_checkpoint_loads_only_when_allowed(models_dir, folder_images, offline):
    ckpt = str(models_dir / "tiny-pickle.ckpt")
    with pytest.raises(Exception, match="allow_pickle"):
        resolve_models({"path": ckpt})
    images = render({"path": ckpt, "allow_pickle": True})
    for ours, theirs in zip(images, folder_images, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def _vae_weights(shift: float) -> dict:
    sd = load_file(TINY / "vae/diffusion_pytorch_model.safetensors")
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"] + shift
    return sd


def test_vae_override_from_ldm_file_diffusers_file_or_folder(tmp_path, folder_images, offline):
    cfg = json.loads((TINY / "vae/config.json").read_text())
    save_file(vae_to_ldm(_vae_weights(0.2), cfg, prefix=""), tmp_path / "bright.safetensors")
    save_file(_vae_weights(0.2), tmp_path / "bright-diffusers.safetensors")
    folder = copy_configs(TINY / "vae", tmp_path / "bright-folder")
    save_file(_vae_weights(0.2), folder / "diffusion_pytorch_model.safetensors")

    images = render({"vae": str(tmp_path / "bright.safetensors")})
    assert not np.array_equal(images[0], folder_images[0])  # the override is what decodes
    expected = {k: v.float() for k, v in _vae_weights(0.2).items()}
    for vae in ("bright.safetensors", "bright-diffusers.safetensors", "bright-folder"):
        loaded = load_vae(tmp_path / vae, TINY, torch.float32).state_dict()
        assert loaded.keys() == expected.keys(), vae
        for key, value in expected.items():
            assert torch.equal(loaded[key], value), (vae, key)


def test_clip_skip_reaches_the_text_encoder():
    plain = resolve_models({})[0]
    skip2 = resolve_models({"clip_skip": 2})[0]
    a = Renderer.load(plain, "cpu").embeddings("a red cat", "blurry")
    b = Renderer.load(skip2, "cpu").embeddings("a red cat", "blurry")
    assert a[0].shape == b[0].shape
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_shipped_configs_are_the_real_architectures():
    """Parameter counts of SD 1.5 and SDXL base, built on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(model) -> int:
        return sum(p.numel() for p in model.parameters())

    def text(cls, folder: Path) -> int:
        return count(cls(CLIPTextConfig.from_pretrained(folder)))

    expected = {"sd1": 859_520_964, "sdxl": 2_567_463_684}
    with init_empty_weights():
        for family, folder in SHIPPED_CONFIGS.items():
            unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(folder / "unet")
            )
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            assert count(unet) == expected[family]
            assert count(vae) == 83_653_863
            assert text(CLIPTextModel, folder / "text_encoder") == 123_060_480  # CLIP ViT-L
        te2 = SHIPPED_CONFIGS["sdxl"] / "text_encoder_2"
        assert text(CLIPTextModelWithProjection, te2) == 694_659_840  # OpenCLIP bigG


def test_shipped_tokenizers_are_built_from_the_tiny_bpe_files():
    tiny = load_tokenizer(TINY / "tokenizer")
    for family, folder in SHIPPED_CONFIGS.items():
        tok = load_tokenizer(folder / "tokenizer")
        assert tok("a red cat").input_ids == tiny("a red cat").input_ids
        assert tok.pad_token_id == tok.eos_token_id == 49407, family
    tok2 = load_tokenizer(SHIPPED_CONFIGS["sdxl"] / "tokenizer_2")
    assert (tok2.pad_token, tok2.pad_token_id) == ("!", 0)  # SDXL's OpenCLIP pads with "!"


# ------------------------------------------------------------------------------------ SDXL


def build_tiny_sdxl(folder: Path) -> Path:
    """A tiny SDXL-shaped pipeline (like diffusers' own SDXL pipeline tests), saved as a
    diffusers folder; the two text encoders differ in width as CLIP-L and bigG do."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 48,  # time ids + pooled (text_encoder_2)
        cross_attention_dim=32 + 48,
        norm_num_groups=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.13025,
    )
    common = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=1, vocab_size=49408)
    common |= dict(layer_norm_eps=1e-5, num_hidden_layers=3, max_position_embeddings=77)
    torch.manual_seed(0)
    te = CLIPTextModel(
        CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, **common)
    )
    torch.manual_seed(0)
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=48,
            intermediate_size=64,
            num_attention_heads=4,
            projection_dim=48,
            hidden_act="gelu",
            **common,
        )
    )
    scheduler = EulerDiscreteScheduler.from_config(
        json.loads((SHIPPED_CONFIGS["sdxl"] / "scheduler/scheduler_config.json").read_text())
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te,
        text_encoder_2=te2,
        tokenizer=load_tokenizer(SHIPPED_CONFIGS["sdxl"] / "tokenizer"),
        tokenizer_2=load_tokenizer(SHIPPED_CONFIGS["sdxl"] / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


SDXL_RECIPE = {"prompt": "a red circle", "seeds": [7], "cfg": 5.0}


@pytest.fixture(scope="module")
def sdxl_run(sdxl_folder):
    """(renderer, job, pixels) of one 64x64 SDXL image rendered by sdbatch."""
    job = build_plan(quick_cfg(model={"path": str(sdxl_folder)}, **SDXL_RECIPE)).jobs[0]
    renderer = Renderer.load(job.model, "cpu")
    [(pixels, nan)] = renderer.render([job])
    assert not nan
    return renderer, job, pixels


def test_tiny_sdxl_renders_like_diffusers_own_call(sdxl_run, offline):
    renderer, job, pixels = sdxl_run
    assert job.model.family == "sdxl" and pixels.shape == (64, 64, 3)
    assert type(renderer.pipe).__name__ == "StableDiffusionXLPipeline"
    # diffusers from the prompt text: same encoding, pooled embeddings, noise and scheduler
    with torch.inference_mode():
        direct = renderer.pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            num_inference_steps=job.steps,
            guidance_scale=job.cfg,
            width=job.width,
            height=job.height,
            generator=[torch.Generator("cpu").manual_seed(job.seed)],
            output_type="np",
        ).images[0]
    np.testing.assert_array_equal(pixels, (direct * 255).round().clip(0, 255).astype(np.uint8))


def test_sdxl_ldm_single_file_draws_the_same_pixels(sdxl_folder, sdxl_run, tmp_path, offline):
    save_file(sdxl_to_ldm(sdxl_folder), tmp_path / "tiny-xl.safetensors")
    copy_configs(sdxl_folder, tmp_path / "tiny-xl.config")
    model = resolve_models({"path": str(tmp_path / "tiny-xl.safetensors")})[0]
    assert model.family == "sdxl"
    image = render({"path": model.path}, **SDXL_RECIPE)[0]
    np.testing.assert_array_equal(image, sdxl_run[2])
