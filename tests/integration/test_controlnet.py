"""ControlNet end to end on the embedded shapes model with a tiny ControlNet made from its UNet.

The ControlNet is ``ControlNetModel.from_unet`` of the shapes UNet with its zero convolutions
(and the condition embedding's last layer) filled with seeded noise, so it pushes the picture
somewhere (an untrained one, not a learnt control). What the tests check is the plumbing a
user relies on: weight 1 changes pixels, weight 0 and ``guidance_end: 0`` give exactly the
picture without ControlNet (diffusers multiplies every residual by the weight, and a unit
outside its window has weight 0; adding zeros leaves the UNet's sums as they were), the
PNG's infotext and the manifest name the unit, and a ``.safetensors`` file loads offline.
Two units over a batch of two condition images must give each image exactly what one unit
gave it (the second unit at weight 0), which fails if the batch's images and the units are
crossed. A ``module: canny`` unit must give exactly what its edge map (made with cv2 in the
test) gives as a ready-made image. Times on a 2-core CPU: about 12 s for the file (one tiny
ControlNet, 8 runs of one or two 32x32 images at 4 steps), and about 2.5 s for the canny test
(3 runs and a dry run); the AND, hires, LoRA and embedding, and two-unit img2img tests
add about 10 s (10 runs), the two control-mode tests about 9.5 s (11 runs), the two
resize-mode tests about 2.5 s (the condition images control_call hands diffusers, and 2 runs
with three units), the two Pixel Perfect tests about 2 s (the maps control_call hands
diffusers, then a run and its replayed rerun); more when other jobs share the cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.plan.controlnet import a1111_short_hash
from sdbatch.shapes.world import Scene, render
from tests.conftest import run_cli


def tiny_controlnet(unet, channels: tuple[int, ...]):
    """``ControlNetModel.from_unet`` of ``unet``, seeded, with its zero convolutions and the
    condition embedding's last layer drawn at random, so that a unit changes the picture (a
    fresh ControlNet adds exactly zero). ``channels``: one halving of the condition image per
    layer after the first, down to the latent's size."""
    from diffusers import ControlNetModel

    torch.manual_seed(0)  # the condition embedding's own layers are drawn here
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    with torch.no_grad():
        for p in cn.controlnet_cond_embedding.conv_out.parameters():
            p.normal_(0, 3.0)
        for m in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
            for p in m.parameters():
                p.normal_(0, 0.1)
    return cn


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory) -> Path:
    """models/ControlNet with the tiny ControlNet as a diffusers folder and as one file."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from sdbatch.models import EMBEDDED_MODEL_PATH

    root = tmp_path_factory.mktemp("a1111") / "models" / "ControlNet"
    unet = UNet2DConditionModel.from_pretrained(EMBEDDED_MODEL_PATH, subfolder="unet")
    cn = tiny_controlnet(unet, (8, 16, 32))
    cn.save_pretrained(root / "tiny_cn")
    save_file(cn.state_dict(), root / "tiny_file.safetensors")
    cn.save_config(root / "tiny_file.config")  # the config beside a single file
    cond = root.parent.parent / "cond"
    cond.mkdir()
    pic = np.zeros((32, 32, 3), np.uint8)
    pic[8:24, 4:14] = 255
    Image.fromarray(pic).save(cond / "left.png")
    Image.fromarray(255 - pic[:, ::-1]).save(cond / "right.png")  # mirrored, inverted
    return root


def _run(monkeypatch, capsys, out: Path, cn: Path, units: str, *args: str) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={out}", "run.device=cpu",
        "run.progress=false", "size=32x32", "steps=4", "negative_prompt=", "seeds=[1]",
        "prompt=a red circle on a white background", f"folders.controlnet={cn}",
        f"controlnet={units}", *args,
    )  # fmt: skip
    assert code == 0, err


def _images(out: Path) -> dict[tuple, np.ndarray]:
    """(seed, first unit's condition image name) -> pixels."""
    rows = pq.read_table(out / "manifest").to_pylist()
    out_ = {}
    for r in rows:
        cond = Path(r["controlnet"][0]["image"]).name if r["controlnet"] else None
        out_[(r["seed"], cond)] = np.asarray(Image.open(out / r["image"]), np.int16)
    return out_


def _unit(cn: Path, model: str = "tiny_cn", image: str = "left.png", **extra) -> str:
    cond = cn.parent.parent / "cond" / image
    fields = [f"model:{model}", f"image:'{cond}'", *(f"{k}:{v}" for k, v in extra.items())]
    return "{" + ",".join(fields) + "}"


def test_weight_one_changes_pixels_weight_zero_and_an_empty_window_do_not(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    cn = controlnet_dir
    _run(monkeypatch, capsys, tmp_path / "plain", cn, "[]")
    (plain,) = _images(tmp_path / "plain").values()
    # one unit over both condition images: one batch of two images
    _run(monkeypatch, capsys, tmp_path / "w1", cn, f"[{_unit(cn, image='')}]")
    on = _images(tmp_path / "w1")
    assert sorted(on) == [(1, "left.png"), (1, "right.png")]
    for got in on.values():
        assert np.abs(got - plain).mean() > 2
    # the untrained ControlNet leans on its condition only a little (mean 0.46 levels of 255
    # between the two images, measured): enough for the exact comparisons below to tell
    # which condition image each image of the batch got
    assert not np.array_equal(on[1, "left.png"], on[1, "right.png"])
    # two units (MultiControlNetModel): the .safetensors file of the same model at weight 1
    # over both images, the folder at weight 0: each image as the one unit made it
    multi = f"[{_unit(cn, 'tiny_file', image='')},{_unit(cn, image='left.png', weight=0)}]"
    _run(monkeypatch, capsys, tmp_path / "multi", cn, multi)
    for key, got in _images(tmp_path / "multi").items():
        assert np.array_equal(got, on[key]), key
    # weight 0 and an empty window: exactly the picture without ControlNet
    off = f"[{_unit(cn, weight=0)},{_unit(cn, 'tiny_file', guidance_end=0)}]"
    _run(monkeypatch, capsys, tmp_path / "off", cn, off)
    (got,) = _images(tmp_path / "off").values()
    assert np.array_equal(got, plain)
    out = tmp_path / "multi"
    rows = pq.read_table(out / "manifest").to_pylist()
    h = a1111_short_hash(cn / "tiny_file.safetensors")
    text = read_png_infotext(out / rows[0]["image"])
    assert (
        f'ControlNet 0: "Module: none, Model: tiny_file [{h}], Weight: 1.0, Resize Mode: Crop and '
        "Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, "
        'Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced", ControlNet 1: "Module: '
        f"none, Model: tiny_cn [{a1111_short_hash(cn / 'tiny_cn')}], Weight: 0.0,"
    ) in text
    assert parse_infotext(text).params["ControlNet 0"].startswith("Module: none, Model: tiny_file")
    units = rows[0]["controlnet"]
    assert [u["model"] for u in units] == ["tiny_file", "tiny_cn"]
    assert units[0]["hash"] == h and [u["weight"] for u in units] == [1.0, 0.0]
    assert units[0]["start"] == 0.0 and units[0]["end"] == 1.0
    assert units[1]["image"].endswith("left.png") and len(units[1]["image_sha256"]) == 64
    ends = [u["end"] for u in pq.read_table(tmp_path / "off" / "manifest")["controlnet"][0].as_py()]
    assert ends == [1.0, 0.0]


def test_img2img_and_inpainting_take_controlnet(controlnet_dir, tmp_path, monkeypatch, capsys):
    cn = controlnet_dir
    pic = tmp_path / "pic.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(pic)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    img = (f"init_images={pic}", "denoise=0.8")
    _run(monkeypatch, capsys, tmp_path / "plain", cn, "[]", *img)
    plain = _images(tmp_path / "plain")
    _run(monkeypatch, capsys, tmp_path / "w1", cn, f"[{_unit(cn)}]", *img)
    on = _images(tmp_path / "w1")
    _run(monkeypatch, capsys, tmp_path / "w0", cn, f"[{_unit(cn, weight=0)}]", *img)
    off = _images(tmp_path / "w0")
    for key in plain:
        k = (key[0], "left.png")
        assert np.abs(on[k] - plain[key]).mean() > 2, key
        assert np.array_equal(off[k], plain[key]), key
    _run(monkeypatch, capsys, tmp_path / "inpaint", cn, f"[{_unit(cn)}]", *img,
         f"masks={tmp_path / 'mask.png'}", "mask_blur=0")  # fmt: skip
    kept = np.asarray(Image.open(pic).convert("RGB"), np.int16)
    for key, got in _images(tmp_path / "inpaint").items():
        assert np.array_equal(got[:, :16], kept[:, :16]), key  # unmasked: the input's own
        assert np.abs(got[:, 16:] - kept[:, 16:]).mean() > 2, key  # the masked half redrawn


@pytest.mark.parametrize("family, unet_dir, skips", [("sd1", "sd15", 12), ("sdxl", "sdxl", 9)])
def test_the_shipped_controlnet_configs_build_their_familys_controlnet(family, unet_dir, skips):
    """A single file without a config beside it loads with its family's config (no hub
    fetch); it must describe that family's UNet geometry, or the ControlNet weights would not
    fit it. SDXL's is ControlNetModel.from_unet of the shipped SDXL UNet config (built on the
    meta device here: the same config, and so the same layers)."""
    import json

    from diffusers import ControlNetModel, UNet2DConditionModel

    from sdbatch.render.controlnet import CONFIG

    config = ControlNetModel.load_config(CONFIG[family])
    unet_config = CONFIG[family].parent / unet_dir / "unet"
    unet = json.loads((unet_config / "config.json").read_text())
    for key in ("block_out_channels", "cross_attention_dim", "attention_head_dim",
                "layers_per_block", "down_block_types", "in_channels"):  # fmt: skip
        assert config[key] == unet[key], key
    with torch.device("meta"):
        model = ControlNetModel.from_config(config)
        if family == "sdxl":
            derived = ControlNetModel.from_unet(
                UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_config)),
                load_weights_from_unet=False,
            )
            shipped, made = (
                {k: v for k, v in json.loads(m.to_json_string()).items() if k[0] != "_"}
                for m in (model, derived)
            )
            assert shipped == made
            assert model.config.addition_embed_type == "text_time"
    assert len(model.controlnet_down_blocks) == skips  # SD 1.5's 12, SDXL's 9 skip connections


def test_prompt_editing_and_latent_fills_reach_the_controlnet_pipelines(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    """At weight 0 the ControlNet pipelines must give exactly the plain pipelines' pictures:
    so prompt editing's per-step embeddings and inpainting's "latent nothing" start reach
    them (without either, the pictures would differ)."""
    cn = controlnet_dir
    pic = tmp_path / "pic.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(pic)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cases = {
        "edit": ("prompt=[a red circle:a blue square on a black background:2]",),
        "fill": (f"init_images={pic}", "denoise=0.5", f"masks={tmp_path / 'mask.png'}",
                 "inpainting_fill=latent nothing"),
    }  # fmt: skip
    for name, args in cases.items():
        _run(monkeypatch, capsys, tmp_path / f"{name}_plain", cn, "[]", *args)
        _run(monkeypatch, capsys, tmp_path / f"{name}_cn", cn, f"[{_unit(cn, weight=0)}]", *args)
        (plain,) = _images(tmp_path / f"{name}_plain").values()
        (got,) = _images(tmp_path / f"{name}_cn").values()
        assert np.array_equal(got, plain), name


def _replay_and_rerun(monkeypatch, capsys, tmp_path, cn, row, images: list[str]) -> str:
    """``sdbatch-tools replay`` of the first run's PNG, then that recipe run with each unit's
    condition image set (the infotext does not say which was used); asserts the rerun plans the
    same job id and renders the same pixels. Returns replay's stderr (its warnings)."""
    from sdbatch import config, tools

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    try:
        code = tools.main(["replay", str(tmp_path / "first" / row["image"]), "-o",
                           str(recipes / "again.yaml")])  # fmt: skip
    except SystemExit as exc:
        code = exc.code
    _, warnings = capsys.readouterr()
    assert code in (0, None), warnings
    monkeypatch.setenv("SDBATCH_RECIPES", str(recipes))
    config.register_configs()
    try:
        code, _, err = run_cli(
            monkeypatch, capsys, "+recipe=again", f"output.dir={tmp_path / 'again'}",
            "run.device=cpu", "run.progress=false", f"folders.controlnet={cn}",
            *(f"controlnet.{i}.image='{image}'" for i, image in enumerate(images)),
        )  # fmt: skip
    finally:
        monkeypatch.delenv("SDBATCH_RECIPES")
        config.register_configs()
    assert code == 0, err
    (again,) = pq.read_table(tmp_path / "again" / "manifest").to_pylist()
    assert again["job_id"] == row["job_id"]
    first = np.asarray(Image.open(tmp_path / "first" / row["image"]))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / again["image"])), first)
    return warnings


def test_replay_of_a_controlnet_png_renders_the_same_picture_once_the_image_is_set(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    cn = controlnet_dir
    unit = _unit(cn, "tiny_file", weight=0.7, guidance_start=0.25)
    _run(monkeypatch, capsys, tmp_path / "first", cn, f"[{unit}]")
    (row,) = pq.read_table(tmp_path / "first" / "manifest").to_pylist()
    cond = cn.parent.parent / "cond" / "left.png"
    warnings = _replay_and_rerun(monkeypatch, capsys, tmp_path, cn, row, [str(cond)])
    assert "set each controlnet unit's image" in warnings


def _by_prompt(out: Path) -> dict[tuple, np.ndarray]:
    """(prompt, cfg, first unit's condition image name or None) -> pixels."""
    got = {}
    for r in pq.read_table(out / "manifest").to_pylist():
        cond = Path(r["controlnet"][0]["image"]).name if r["controlnet"] else None
        got[(r["prompt"], r["cfg"], cond)] = np.asarray(Image.open(out / r["image"]), np.int16)
    return got


def test_and_takes_controlnet_on_every_part(controlnet_dir, tmp_path, monkeypatch, capsys):
    """AND runs its own UNet batch (uncond and each part as rows); the ControlNet must run
    on those rows with each row's text and its image's condition image. ``a AND a`` at CFG
    3.5 is ``a`` at CFG 7 (A1111's formula) with ControlNet too: measured at most 1 level
    apart; it fails by more when the parts' rows take the ControlNet residuals of the uncond
    text or of the other image of the batch. Weight 0 is exactly the picture without it."""
    cn = controlnet_dir
    red, both = "a red circle on a white background", "a red circle AND a blue square"
    prompts = f"prompt=['{both}','{red}','{red} AND {red}']"
    _run(monkeypatch, capsys, tmp_path / "plain", cn, "[]", f"prompt=['{both}']")
    _run(monkeypatch, capsys, tmp_path / "w0", cn, f"[{_unit(cn, weight=0)}]", f"prompt=['{both}']")
    _run(monkeypatch, capsys, tmp_path / "w1", cn, f"[{_unit(cn, image='')}]", prompts,
         "cfg=[3.5,7]")  # fmt: skip
    (plain,) = _images(tmp_path / "plain").values()
    (off,) = _images(tmp_path / "w0").values()
    assert np.array_equal(off, plain)
    on = _by_prompt(tmp_path / "w1")
    assert len(on) == 12
    for cond in ("left.png", "right.png"):
        assert np.abs(on[both, 7.0, cond] - plain).mean() > 2, cond
        twice, once = on[f"{red} AND {red}", 3.5, cond], on[red, 7.0, cond]
        assert np.abs(twice - once).max() <= 2, cond
    left, right = on[red, 7.0, "left.png"], on[red, 7.0, "right.png"]
    assert np.abs(on[f"{red} AND {red}", 3.5, "left.png"] - right).max() > 0
    assert not np.array_equal(left, right)


def test_a_canny_unit_renders_as_its_edge_map_would_and_its_png_says_so(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    """``module: canny`` gives exactly the picture its edge map (made here with cv2 as the
    extension makes it) gives with ``module: none``, not the picture of the raw image; the
    infotext and manifest name the module, and replay brings back the same job."""
    import cv2

    from sdbatch import config, tools

    cn = controlnet_dir
    raw = render(Scene("circle", "red", "white", 0.55), 32)
    Image.fromarray(raw).save(tmp_path / "shape.png")
    # processor_res 64: 2x bicubic, then cv2.Canny (32 pixels blown up to 512 have no edges
    # above the default thresholds)
    edges = cv2.Canny(cv2.resize(raw, (64, 64), interpolation=cv2.INTER_CUBIC), 100, 200)
    assert edges.any()
    Image.fromarray(np.stack([edges] * 3, axis=2)).save(tmp_path / "edges.png")
    shape, edge_map = f"image:'{tmp_path / 'shape.png'}'", f"image:'{tmp_path / 'edges.png'}'"
    units = {
        "canny": f"{{model:tiny_cn,{shape},module:canny,processor_res:64}}",
        "edges": f"{{model:tiny_cn,{edge_map}}}",
        "raw": f"{{model:tiny_cn,{shape}}}",
    }
    got = {}
    for name, unit in units.items():
        _run(monkeypatch, capsys, tmp_path / name, cn, f"[{unit}]")
        (got[name],) = _images(tmp_path / name).values()
    assert np.array_equal(got["canny"], got["edges"])
    assert not np.array_equal(got["canny"], got["raw"])
    (row,) = pq.read_table(tmp_path / "canny" / "manifest").to_pylist()
    assert row["controlnet"][0]["module"] == "canny"
    text = parse_infotext(read_png_infotext(tmp_path / "canny" / row["image"]))
    assert text.params["ControlNet 0"].startswith("Module: canny, Model: tiny_cn [")
    assert "Processor Res: 64, Threshold A: 100, Threshold B: 200" in text.params["ControlNet 0"]
    # replay: the module and its settings come back, so the job id is the same
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    try:
        code = tools.main(["replay", str(tmp_path / "canny" / row["image"]), "-o",
                           str(recipes / "again.yaml")])  # fmt: skip
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None), capsys.readouterr().err
    capsys.readouterr()
    monkeypatch.setenv("SDBATCH_RECIPES", str(recipes))
    config.register_configs()
    try:
        code, out, err = run_cli(
            monkeypatch, capsys, "+recipe=again", f"output.dir={tmp_path / 'canny'}",
            "run.device=cpu", "run.progress=false", f"folders.controlnet={cn}",
            f"controlnet.0.image='{tmp_path / 'shape.png'}'", "run.dry_run=true",
        )  # fmt: skip
    finally:
        monkeypatch.delenv("SDBATCH_RECIPES")
        config.register_configs()
    assert code == 0, err
    assert "; 1 done;" in out  # the replayed recipe's job is the one already rendered
    assert f"{row['job_id'][:16]}  seed 1" in out
    assert "tiny_cn (shape.png, 1, canny 100/200 at 64)" in out


def test_the_hires_pass_takes_the_units_at_its_size(controlnet_dir, tmp_path, monkeypatch, capsys):
    """The extension steers A1111's hires pass too, with the condition image resized to the
    hires size: the ControlNet must run in both passes (8x8 latents with the 32x32 condition
    image, then 16x16 with it at 64x64), weight 1 changes the picture and weight 0 gives
    exactly the hires picture without ControlNet."""
    from diffusers import ControlNetModel

    cn = controlnet_dir
    hires = ("hires.scale=2", "hires.steps=2", "hires.denoise=0.5", "steps=2")
    _run(monkeypatch, capsys, tmp_path / "plain", cn, "[]", *hires)
    _run(monkeypatch, capsys, tmp_path / "w0", cn, f"[{_unit(cn, weight=0)}]", *hires)
    seen = set()
    forward = ControlNetModel.forward

    def spy(self, sample, *args, controlnet_cond=None, **kwargs):
        seen.add((tuple(sample.shape[-2:]), tuple(controlnet_cond.shape[-2:])))
        return forward(self, sample, *args, controlnet_cond=controlnet_cond, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", spy)
    _run(monkeypatch, capsys, tmp_path / "w1", cn, f"[{_unit(cn)}]", *hires)
    (plain,) = _images(tmp_path / "plain").values()
    (off,) = _images(tmp_path / "w0").values()
    (on,) = _images(tmp_path / "w1").values()
    assert plain.shape == (64, 64, 3) and np.array_equal(off, plain)
    assert np.abs(on - plain).mean() > 2
    assert seen == {((8, 8), (32, 32)), ((16, 16), (64, 64))}


def test_lora_and_embeddings_act_with_controlnet(controlnet_dir, tmp_path, monkeypatch, capsys):
    """LoRA and embeddings change the shared UNet and text encoder that the ControlNet
    pipeline is made from (``from_pipe``), and the ControlNet reads the same text: with a
    unit, the example LoRA at weight 1 changes the picture and at weight 0 gives exactly the
    picture without its tag; the example embedding's word renders otherwise than the same
    word without the embedding file."""
    from tests.conftest import ROOT

    cn = controlnet_dir
    blue, fuchsia = "a blue circle on a white background", "a fuchsia circle on a white background"
    prompts = f"prompt=['{blue}','{blue} <lora:orange:1>','{blue} <lora:orange:0>','{fuchsia}']"
    unit = f"[{_unit(cn)}]"
    _run(monkeypatch, capsys, tmp_path / "nets", cn, unit, prompts,
         f"folders.a1111={ROOT / 'examples' / 'webui'}")  # fmt: skip
    (tmp_path / "bare").mkdir()
    _run(monkeypatch, capsys, tmp_path / "word", cn, unit, f"prompt=['{fuchsia}']",
         f"folders.a1111={tmp_path / 'bare'}")  # fmt: skip
    got = {p: img for (p, _, _), img in _by_prompt(tmp_path / "nets").items()}
    assert np.array_equal(got[f"{blue} <lora:orange:0>"], got[blue])
    assert np.abs(got[f"{blue} <lora:orange:1>"] - got[blue]).mean() > 2
    (word,) = _images(tmp_path / "word").values()
    assert np.abs(got[fuchsia] - word).mean() > 2


def test_two_units_steer_a_batch_of_img2img_pictures(controlnet_dir, tmp_path, monkeypatch, capsys):
    """diffusers' ControlNet img2img and inpaint pipelines refuse two units over a batch given
    as the nested list txt2img takes; each unit's images go as one array instead, and each
    picture must get exactly what one unit gave it (the second unit at weight 0)."""
    cn = controlnet_dir
    pic = tmp_path / "pic.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(pic)
    img = (f"init_images={pic}", "denoise=0.8")
    _run(monkeypatch, capsys, tmp_path / "one", cn, f"[{_unit(cn, 'tiny_file', image='')}]", *img)
    multi = f"[{_unit(cn, 'tiny_file', image='')},{_unit(cn, image='left.png', weight=0)}]"
    _run(monkeypatch, capsys, tmp_path / "two", cn, multi, *img)
    one, two = _images(tmp_path / "one"), _images(tmp_path / "two")
    assert sorted(two) == [(1, "left.png"), (1, "right.png")]
    for key, got in two.items():
        assert np.array_equal(got, one[key]), key


MODES = {"prompt": "My prompt is more important", "control": "ControlNet is more important"}


def _soft(monkeypatch, cond_only: bool):
    """ControlNetModel.forward with the extension's soft injection written out: residual i
    (the down blocks' in order, then the mid block's) times 0.825 ** (12 - i), and with
    ``cond_only`` zeros on the uncond half of a CFG batch (diffusers' first half)."""
    from diffusers import ControlNetModel

    forward = ControlNetModel.forward

    def soft(self, sample, *args, **kwargs):
        down, mid = forward(self, sample, *args, **kwargs)
        out = [r * 0.825 ** float(12 - i) for i, r in enumerate([*down, mid])]
        if cond_only:
            keep = torch.tensor([0.0, 1.0]).view(-1, 1, 1, 1)
            out = [r * keep for r in out]
        return out[:-1], out[-1]

    monkeypatch.setattr(ControlNetModel, "forward", soft)


def test_control_modes_scale_the_residuals_as_the_extension_does(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    """ "My prompt is more important" is Balanced with the extension's soft factors on the
    residuals; "ControlNet is more important" is that with no control on the uncond rows
    (here both written out in a ControlNetModel.forward replacement that Balanced runs
    through); each differs from Balanced and from the other; two units take their own modes
    (the second at weight 0 adds zeros, so the first unit's mode alone shows). The infotext
    writes the mode and replay brings it back (the same job id)."""
    cn = controlnet_dir
    got = {}
    runs = {
        "balanced": _unit(cn),
        "prompt": _unit(cn, control_mode=f"'{MODES['prompt']}'"),
        "control": _unit(cn, control_mode=f"'{MODES['control']}'"),
        "two": _unit(cn, "tiny_file", control_mode=f"'{MODES['control']}'") + ","
        + _unit(cn, weight=0, control_mode=f"'{MODES['prompt']}'"),
    }  # fmt: skip
    for name, units in runs.items():
        _run(monkeypatch, capsys, tmp_path / name, cn, f"[{units}]")
        (got[name],) = _images(tmp_path / name).values()
    for name, cond_only in (("prompt", False), ("control", True)):
        with monkeypatch.context() as m:
            _soft(m, cond_only)
            _run(monkeypatch, capsys, tmp_path / f"hook_{name}", cn, f"[{_unit(cn)}]")
        (hooked,) = _images(tmp_path / f"hook_{name}").values()
        assert np.array_equal(got[name], hooked), name
        assert np.abs(got[name] - got["balanced"]).mean() > 1, name
    assert np.abs(got["control"] - got["prompt"]).mean() > 1
    assert np.array_equal(got["two"], got["control"])
    (row,) = pq.read_table(tmp_path / "control" / "manifest").to_pylist()
    assert row["controlnet"][0]["control_mode"] == MODES["control"]
    text = parse_infotext(read_png_infotext(tmp_path / "control" / row["image"]))
    assert text.params["ControlNet 0"].endswith("Control Mode: ControlNet is more important")
    from sdbatch.views.replay import recipe_from_infotext

    units = recipe_from_infotext(read_png_infotext(tmp_path / "control" / row["image"]), "again")
    assert units.values["controlnet"][0]["control_mode"] == MODES["control"]


def test_control_modes_with_and_img2img_and_hires(controlnet_dir, tmp_path, monkeypatch, capsys):
    """With AND the wrapper's uncond rows are the ones "ControlNet is more important" leaves
    without control: ``a AND a`` at CFG 3.5 stays ``a`` at CFG 7 (at most 2 levels apart, as
    Balanced), and ``a`` alone is the picture of the plain pass. img2img and the hires pass
    take the modes too (the pictures differ from Balanced's)."""
    cn = controlnet_dir
    red = "a red circle on a white background"
    control = _unit(cn, control_mode=f"'{MODES['control']}'")
    _run(monkeypatch, capsys, tmp_path / "and", cn, f"[{control}]",
         f"prompt=['{red}','{red} AND {red}']", "cfg=[3.5,7]")  # fmt: skip
    on = _by_prompt(tmp_path / "and")
    assert np.abs(on[f"{red} AND {red}", 3.5, "left.png"] - on[red, 7.0, "left.png"]).max() <= 2
    # the same image at CFG 3.5 without AND is another picture: the comparison above can fail
    assert np.abs(on[red, 3.5, "left.png"] - on[red, 7.0, "left.png"]).max() > 2
    pic = tmp_path / "pic.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(pic)
    cases = {
        "img2img": (f"init_images={pic}", "denoise=0.8"),
        "hires": ("hires.scale=2", "hires.steps=2", "hires.denoise=0.5", "steps=2"),
    }
    for name, args in cases.items():
        for mode, unit in (
            ("balanced", _unit(cn)),
            ("prompt", _unit(cn, control_mode=f"'{MODES['prompt']}'")),
        ):
            _run(monkeypatch, capsys, tmp_path / f"{name}_{mode}", cn, f"[{unit}]", *args)
        (balanced,) = _images(tmp_path / f"{name}_balanced").values()
        (prompt,) = _images(tmp_path / f"{name}_prompt").values()
        assert np.abs(prompt - balanced).mean() > 1, name


def _wide(cn: Path) -> Path:
    """A 64x32 condition image: red left half, blue right half, a green 8x8 square centred."""
    pic = np.zeros((32, 64, 3), np.uint8)
    pic[:, :32] = (255, 0, 0)
    pic[:, 32:] = (0, 0, 255)
    pic[12:20, 28:36] = (0, 255, 0)
    path = cn.parent.parent / "cond_wide" / "wide.png"
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(pic).save(path)
    return path


def _green(a: np.ndarray) -> tuple[int, int, int, int]:
    """The green square's rows and columns (first, last) in a condition image."""
    ys, xs = np.nonzero((a[..., 1] > 128) & (a[..., 0] < 128) & (a[..., 2] < 128))
    return ys.min(), ys.max(), xs.min(), xs.max()


def test_resize_modes_fit_a_wide_condition_image_as_the_pipeline_gets_it(controlnet_dir):
    """What control_call hands diffusers for a 64x32 condition image and a 32x32 job: Just
    Resize stretches it (the square 4 wide, 8 high), Crop and Resize cuts its centre (the square
    8x8, no margin), Resize and Fill fits it (the square 4x4) between bands of the median border
    colour (half red, half blue: 127, 0, 127)."""
    from sdbatch.plan.recipe import build_plan
    from sdbatch.render.controlnet import control_call
    from tests.conftest import quick_cfg

    wide = str(_wide(controlnet_dir))
    units = [{"model": "tiny_cn", "image": wide, "resize_mode": m}
             for m in ("Just Resize", "Crop and Resize", "Resize and Fill")]  # fmt: skip
    cfg = quick_cfg(size="32x32", folders={"controlnet": str(controlnet_dir)}, controlnet=units)
    job = build_plan(cfg, recipe_dirs=[controlnet_dir]).jobs[0]
    call = control_call([job], "txt2img")
    just, crop, fill = (np.asarray(im) for im in call["image"][0])
    assert just.shape == crop.shape == fill.shape == (32, 32, 3)
    assert _green(just) == (12, 19, 14, 17)
    assert just[16, 2, 0] > 200 and just[16, 29, 2] > 200  # red and blue both still there
    assert _green(crop) == (12, 19, 12, 19)
    assert crop[16, 0, 0] > 200 and crop[16, 31, 2] > 200
    assert (fill[:8] == (127, 0, 127)).all() and (fill[24:] == (127, 0, 127)).all()
    assert _green(fill) == (14, 17, 14, 17)
    assert fill[16, 0, 0] > 200 and fill[16, 31, 2] > 200  # the whole width is the picture's
    # the hires pass (img2img at 48x48: one float array per unit) fits them the same way
    just, crop, fill = (np.round(a[0] * 255) for a in control_call([job], "img2img", (48, 48))[
        "control_image"])  # fmt: skip
    assert just.shape == fill.shape == (48, 48, 3)
    assert (fill[:12] == (127, 0, 127)).all() and (fill[36:] == (127, 0, 127)).all()
    assert _green(crop) == (18, 29, 18, 29) and _green(just)[2:] == (21, 26)


def test_a_batch_reads_hashes_and_preprocesses_each_condition_file_once(
    controlnet_dir, tmp_path, monkeypatch
):
    """Eight jobs (4 seeds x 2 CFG) over one canny unit, in two batches and the hires pass's
    call: the file is read (and its hash checked) once and canny runs once; every job still
    gets the same map, a fresh image each (fitting it makes a new one)."""
    from sdbatch.plan import preprocessors
    from sdbatch.plan.recipe import build_plan
    from sdbatch.render import controlnet, image_inputs
    from tests.conftest import quick_cfg

    picture = tmp_path / "shape.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(picture)
    controlnet._picture.cache_clear()
    controlnet._preprocessed.cache_clear()
    calls = {"read": 0, "canny": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(image_inputs, "read_image", counted("read", image_inputs.read_image))
    monkeypatch.setattr(preprocessors, "canny", counted("canny", preprocessors.canny))
    unit = {"model": "tiny_cn", "image": str(picture), "module": "canny", "processor_res": 64}
    cfg = quick_cfg(size="32x32", folders={"controlnet": str(controlnet_dir)}, controlnet=[unit],
                    prompt="x", seeds={"start": 1, "count": 4}, cfg=[5, 7])  # fmt: skip
    jobs = build_plan(cfg).jobs
    assert len(jobs) == 8
    maps = [control_image for half in (jobs[:4], jobs[4:])
            for control_image in controlnet.control_call(half, "txt2img")["image"]]  # fmt: skip
    controlnet.control_call(jobs[:4], "img2img", (64, 64))
    assert calls == {"read": 1, "canny": 1}
    assert all(np.array_equal(np.asarray(m), np.asarray(maps[0])) for m in maps)
    assert len({id(m) for m in maps}) == 8


def test_each_resize_mode_renders_and_its_png_replays_to_the_same_job(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    cn = controlnet_dir
    wide = _wide(cn)
    modes = ("'Just Resize'", "'Crop and Resize'", "'Envelope (Outer Fit)'")
    units = ",".join(
        "{" + f"model:tiny_file,image:'{wide}',weight:0.5,resize_mode:{m}" + "}" for m in modes
    )
    _run(monkeypatch, capsys, tmp_path / "first", cn, f"[{units}]")
    (row,) = pq.read_table(tmp_path / "first" / "manifest").to_pylist()
    want = ["Just Resize", "Crop and Resize", "Resize and Fill"]  # the older name, as written
    assert [u["resize_mode"] for u in row["controlnet"]] == want
    text = read_png_infotext(tmp_path / "first" / row["image"])
    params = parse_infotext(text).params
    for i, mode in enumerate(want):
        assert f", Resize Mode: {mode}, " in params[f"ControlNet {i}"]
    warnings = _replay_and_rerun(monkeypatch, capsys, tmp_path, cn, row, [str(wide)] * 3)
    assert "Resize Mode" not in warnings


def test_pixel_perfect_hands_diffusers_the_map_of_the_computed_resolution(controlnet_dir):
    """A pixel-perfect canny unit on a 128x64 picture for a 128x128 job gives the map its
    processor_res would give at the extension's estimate (Resize and Fill: min(128/64, 128/128)
    * 64 = 64; the two others: max * 64 = 128), not the map at processor_res 512; the hires
    pass (192x192) keeps the job's estimate, as the extension computes it once."""
    from sdbatch.plan.recipe import build_plan
    from sdbatch.render.controlnet import control_call
    from tests.conftest import quick_cfg

    wide = controlnet_dir.parent.parent / "cond_wide" / "shapes.png"
    wide.parent.mkdir(exist_ok=True)
    raw = render(Scene("circle", "red", "white", 0.55), 64)
    Image.fromarray(np.concatenate([raw, raw[:, ::-1]], axis=1)).save(wide)  # 128x64
    modes = {"Just Resize": 128, "Crop and Resize": 128, "Resize and Fill": 64}

    def call(settings: dict, size=None) -> list:
        units = [{"model": "tiny_cn", "image": str(wide), "module": "canny", "threshold_a": 20,
                  "threshold_b": 50, "resize_mode": m, **settings.get(m, settings)}
                 for m in modes]  # fmt: skip
        cfg = quick_cfg(size="128x128", folders={"controlnet": str(controlnet_dir)},
                        controlnet=units)  # fmt: skip
        job = build_plan(cfg, recipe_dirs=[controlnet_dir]).jobs[0]
        if size is None:
            return [np.asarray(im) for im in control_call([job], "txt2img")["image"][0]]
        return list(control_call([job], "img2img", size)["control_image"])

    estimates = {m: {"processor_res": r} for m, r in modes.items()}
    perfect, estimate = call({"pixel_perfect": True}), call(estimates)
    default = call({"processor_res": 512})
    for mode, p, e, d in zip(modes, perfect, estimate, default, strict=True):
        assert p.shape == (128, 128, 3) and p.any(), mode
        assert np.array_equal(p, e), mode
        assert not np.array_equal(p, d), mode
    hires = zip(call({"pixel_perfect": True}, (192, 192)), call(estimates, (192, 192)), strict=True)
    for p, e in hires:
        assert p.shape == (1, 192, 192, 3) and np.array_equal(p, e)


def test_a_pixel_perfect_png_says_so_and_replays_to_the_same_job(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    cn = controlnet_dir
    shape = tmp_path / "shape.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(shape)
    unit = f"{{model:tiny_file,image:'{shape}',module:canny,threshold_a:20,pixel_perfect:true}}"
    _run(monkeypatch, capsys, tmp_path / "first", cn, f"[{unit}]")
    (row,) = pq.read_table(tmp_path / "first" / "manifest").to_pylist()
    params = parse_infotext(read_png_infotext(tmp_path / "first" / row["image"])).params
    assert ", Processor Res: 512, " in params["ControlNet 0"]  # the slider's, as the extension
    assert ", Pixel Perfect: True, " in params["ControlNet 0"]
    warnings = _replay_and_rerun(monkeypatch, capsys, tmp_path, cn, row, [str(shape)])
    assert "Pixel Perfect" not in warnings
