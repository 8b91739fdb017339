"""The bad-input contract in one table: each input gives one line on stderr naming the field,
a non-zero exit code, no traceback, and writes nothing (not even the output folder).

Run in-process (``sdbatch.cli.main`` with ``sys.argv``) so the table stays fast; the exit codes
of real processes are covered in test_cli.py. Recipes under test live in a user recipe folder
(``SDBATCH_RECIPES``), as a downloaded recipe would.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sdbatch import config
from tests.conftest import run_cli

EVIL = {
    "callback": """
name: callback
prompt: a cat
hydra:
  callbacks:
    p:
      _target_: pathlib.Path.write_text
      _args_: ["{pwned}", "x"]
""",
    "logging": """
defaults:
  - override /hydra/job_logging: default
name: logging
prompt: a cat
""",
    "package": """
defaults:
  - quick@hydra
name: package
""",
    "target": """
name: target
prompt: a cat
vars:
  style:
    _target_: os.system
    _args_: ["touch {pwned}"]
""",
    "envleak": """
name: envleak
prompt: "a cat ${oc.env:HOME}"
""",
    "pickle": """
name: pickle
prompt: a cat
model: {allow_pickle: true}
""",
    "elsewhere": """
name: elsewhere
prompt: a cat
output: {dir: "{outside}"}
""",
    "climb": """
name: climb
prompt: a cat
output: {dir: "outputs/../../x"}
""",
    "broken": """
name: broken
prompt: [unclosed
""",
}

# (arguments, exit code, words the one line must hold)
CASES = [
    (["+recipe=callback"], 2, ["callback.yaml", "hydra"]),
    (["+recipe=logging"], 2, ["logging.yaml", "defaults", "override /hydra/job_logging"]),
    (["+recipe=package"], 2, ["package.yaml", "quick@hydra"]),
    (["+recipe=target"], 2, ["target.yaml", "vars.style._target_"]),
    (["+recipe=envleak"], 2, ["envleak.yaml", "prompt", "oc.env"]),
    (["+recipe=pickle"], 2, ["pickle.yaml", "model.allow_pickle"]),
    (["+recipe=elsewhere"], 2, ["elsewhere.yaml", "output.dir", "outside outputs/"]),
    (["+recipe=climb"], 2, ["climb.yaml", "output.dir"]),
    (["+recipe=broken"], 2, ["broken.yaml", "line 3", "not valid YAML"]),
    (["+recipe=nope"], 2, ["recipe", "'nope'", "not a known recipe", "quick"]),
    (["+recipe=quick", "name=../../z"], 2, ["name", "'../../z'", "plain folder name"]),
    (["+recipe=quick", "+foo=1"], 2, ["foo", "not a known key"]),
    (["+recipe=quick", "+run.foo=1"], 2, ["run.foo", "not a known key", "run keys are"]),
    (["+recipe=quick", "+model._target_=os.system"], 2, ["model._target_", "model keys are"]),
    (["+recipe=quick", "stpes=3"], 2, ["stpes"]),
    (["+recipe=quick", "run.verify=nope"], 2, ["run.verify", "'nope'", "hash", "size"]),
    (["+recipe=quick", "run.dtype=fp8"], 2, ["run.dtype", "'fp8'", "fp32, fp16, bf16"]),
    (["+recipe=quick", "run.dtype=bfloat"], 2, ["run.dtype", "'bfloat'", "bf16"]),
    (["+recipe=quick", "run.compile=fast"], 2, ["run.compile", "fast"]),
    (["+recipe=quick", "run.device=tpu"], 2, ["run.device", "'tpu'", "auto, cpu, cuda"]),
    (["+recipe=quick", "run.max_jobs=0"], 2, ["run.max_jobs", "integer >= 1"]),
    (["+recipe=quick", "size=100000x100000"], 2, ["size", "100000x100000", "2048"]),
    (["+recipe=quick", "size=500x512"], 2, ["size", "multiples of 8"]),
    (["+recipe=quick", "size=1024", "hires.scale=8"], 2, ["hires.scale", "4096"]),
    (
        ["+recipe=quick", "seeds={start:0,count:4294967296}"],
        2,
        ["run.max_jobs", "4,294,967,296 jobs"],
    ),
    (
        ["+recipe=quick", "seeds={start:0,count:1000000}", "cfg=1-100000"],
        2,
        ["run.max_jobs", "200,000,000,000 jobs", "raise run.max_jobs"],
    ),
    (["+recipe=quick", "steps=1-1000000000"], 2, ["steps", "at most 100,000 values"]),
    (["+recipe=quick", "seeds={start:-1,count:2}"], 2, ["seeds.start"]),
    (  # one variation seed, not an axis: a list is the field's error, not Hydra's
        ["+recipe=quick", "subseed=[5,6]", "subseed_strength=0.5"],
        2,
        ["subseed", "[5, 6]", "an integer in 0..4294967295"],
    ),
    (["+recipe=quick", "cfg=-1"], 2, ["cfg", "-1", ">= 0"]),
    (["+recipe=quick", "sampler=Nope"], 2, ["sampler", "Nope"]),
    (["+recipe=quick", "batch_size=0"], 2, ["batch_size"]),
    (["+recipe=quick", "run.deadline=25:99"], 2, ["run.deadline", "25:99"]),
    (["+recipe=quick", "shard.index=3", "shard.count=2"], 2, ["shard.index"]),
    (["+recipe=quick", "prompt='(x:1.2.3)'"], 2, ["prompt", "(x:1.2.3)"]),
    (["+recipe=quick", "model.path=/nonexistent.safetensors"], 2, ["model.path"]),
    (["+recipe=quick", "prompt=a __../../etc/passwd__ cat"], 2, ["prompt[0]", "no '..' part"]),
    (["+recipe=quick", "prompt=__../x/sec*__"], 2, ["prompt[0]", "a name inside wildcards/"]),
    (["+recipe=quick", "prompt=__/etc/passwd__"], 2, ["prompt[0]", "no leading /"]),
    (["+recipe=quick", "prompt=__nope*__"], 2, ["prompt[0]", "available:"]),
    (["+recipe=quick", "model.dir=.", "model.name=../x"], 2, ["model.name", "'../x'"]),
    (["+recipe=quick", "model.path={truncated}"], 2, ["model.path", "truncated"]),
    # LoRA tags (tests/integration/test_lora.py; the folder is _lora_tree's)
    (["+recipe=quick", "prompt=a <lora:orang:1>", "folders.a1111={webui}"], 2,
     ["prompt", "'orang'", "closest match: 'orange'"]),
    (["+recipe=quick", "prompt=a <lora:orange:1>"], 2, ["prompt", "set folders.lora"]),
    (["+recipe=quick", "prompt=a <lora:hada:1>", "folders.a1111={webui}"], 2,
     ["prompt", "<lora:hada:1>", "LyCORIS LoHa", "cannot convert"]),
    (["+recipe=quick", "prompt=a <lora:xl:1>", "folders.a1111={webui}"], 2,
     ["prompt", "<lora:xl:1>", "SDXL LoRA", "the model is SD 1.x"]),
    (["+recipe=quick", "prompt=a <lora:old:1>", "folders.a1111={webui}"], 2,
     ["prompt", "old.pt", "model.allow_pickle"]),
    (["+recipe=quick", "prompt=a <lora:orange:1:1:8>", "folders.a1111={webui}"], 2,
     ["prompt", "<lora:orange:1:1:8>", "dyn"]),
    # hires upscalers (tests/integration/test_upscalers.py; the files are _upscaler_tree's)
    (["+recipe=quick", "hires.scale=2", "hires.upscaler=R-ESRGAN 4x", "folders.a1111={webui}"],
     2, ["hires.upscaler", "'R-ESRGAN 4x'", "closest match: 'R-ESRGAN 4x+'"]),
    (["+recipe=quick", "hires.scale=2", "hires.upscaler=R-ESRGAN 4x+", "folders.a1111={webui}"],
     2, ["hires.upscaler", "RealESRGAN_x4plus.pth, not found", "A1111 downloads it from"]),
    (["+recipe=quick", "hires.scale=2", "hires.upscaler=4x-Tiny", "folders.a1111={webui}"], 2,
     ["hires.upscaler", "4x-Tiny.pth", "model.allow_pickle"]),
    (["+recipe=quick", "hires.scale=2", "hires.upscaler=4x-Swin", "folders.a1111={webui}"], 2,
     ["hires.upscaler", "4x-Swin.safetensors", "an ESRGAN-family upscaler"]),
    (["+recipe=quick", "hires.scale=2", "hires.upscaler=SwinIR 4x"], 2,
     ["hires.upscaler", "'SwinIR 4x'", "does not build"]),
    (["+recipe=quick", "hires.scale=2", "hires.upscaler=4x-UltraSharp"], 2,
     ["hires.upscaler", "no upscaler folder is set"]),
    (["+recipe=quick", "model.vae=vae-ft-mse", "folders.a1111={webui}"], 2,
     ["model.vae", "'vae-ft-mse'", "closest match: 'vae-ft-mse-840000-ema-pruned'"]),
    # TI embeddings (tests/integration/test_embeddings.py; the files are _embedding_tree's)
    (["+recipe=quick", "negative_prompt=(negpt:1.2)", "folders.a1111={webui}"], 2,
     ["negative_prompt", "negpt.pt", "model.allow_pickle"]),
    (["+recipe=quick", "prompt=a cutoff cat", "folders.a1111={webui}"], 2,
     ["prompt", "cutoff.safetensors", "truncated"]),
    (["+recipe=quick", "prompt=a twoterms cat", "folders.a1111={webui}"], 2,
     ["prompt", "twoterms.safetensors", "holds 2 tensors", "one term per file"]),
    # image inputs (tests/integration/test_image_inputs.py; the files are _pictures_tree's)
    (["+recipe=quick", "init_images={pics}/nope.png"], 2, ["init_images", "nope.png", "not found"]),
    (["+recipe=quick", "init_images={pics}/notes.png"], 2, ["init_images", "notes.png", "not one"]),
    (["+recipe=quick", "masks={pics}/masks"], 2, ["masks", "only together with init_images"]),
    (["+recipe=quick", "init_images={pics}/a.png", "denoise=2"], 2, ["denoise", "2", "0..1"]),
    (["+recipe=quick", "init_images={pics}/*.png", "masks={pics}/masks/b*"], 2,
     ["masks", "'a'", "a.png has none"]),
    (["+recipe=quick", "init_images={pics}/b.png", "prompt={caption}"], 2,
     ["init_images", "b.png", "caption file", "b.txt"]),
    (["+recipe=quick", "init_images={pics}/a.png", "hires.scale=2"], 2,
     ["hires.scale", "no hires fix"]),
    (["+recipe=quick", "init_images={pics}/a.png", "resize_mode=Stretch"], 2,
     ["resize_mode", "'Stretch'", "Just resize, Crop and resize, Resize and fill"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shape,image:'{pics}/a.png'}]"],
     2, ["controlnet[0].model", "'control_shape'", "closest match: 'control_shapes'"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/nope.png'}]"],
     2, ["controlnet[0].image", "nope.png", "not found"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',weight:3}]"],
     2, ["controlnet[0].weight", ": 3 is not allowed", "0..2"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',guidance_end:1.5}]"],
     2, ["controlnet[0].guidance_end", "0..1"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',"
      "control_mode:'ControlNet is important'}]"],
     2, ["controlnet[0].control_mode", "ControlNet is important", "one of Balanced, My prompt "
         "is more important, ControlNet is more important"]),
    (["+recipe=quick", "controlnet.0.weight=1"],  # no unit 0 to set a key of
     2, ["controlnet[0]", "no such ControlNet unit", "controlnet=[{model: NAME, image: PATH}]"]),
    (["+recipe=quick", "folders.a1111={webui}",  # a key the unit does not set: the plan's line
      "controlnet=[{model:control_shapes,image:'{pics}/a.png'}]", "controlnet.0.wieght=1"],
     2, ["controlnet[0].wieght", "keys model, image, weight"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',module:depth}]"],
     2, ["controlnet[0].module", "'depth'", "none or canny", "ready-made condition images"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',module:canny,threshold_a:0}]"],
     2, ["controlnet[0].threshold_a", ": 0 is not allowed", "an integer in 1..255"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',module:canny,threshold_b:99.5}]"],
     2, ["controlnet[0].threshold_b", "99.5", "an integer in 1..255"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',module:canny,"
      "processor_res:4096}]"],
     2, ["controlnet[0].processor_res", "4096", "an integer in 64..2048"]),
    (["+recipe=quick", "folders.a1111={webui}",
      "controlnet=[{model:control_shapes,image:'{pics}/a.png',threshold_a:50}]"],
     2, ["controlnet[0].threshold_a", "50", "unset with module: none"]),
]  # fmt: skip


def _controlnet_tree(root: Path) -> Path:
    """models/ControlNet with one (claimed) ControlNet file."""
    key = b'"controlnet_cond_embedding.conv_in.weight"'
    header = b"{" + key + b': {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    (root / "models/ControlNet").mkdir(parents=True, exist_ok=True)
    path = root / "models/ControlNet/control_shapes.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return root


def _truncated_safetensors(path: Path) -> Path:
    """A safetensors header that promises 4 MB of tensor data, followed by 10 bytes."""
    header = (
        b'{"model.diffusion_model.input_blocks.0.0.weight": {"dtype": "F32", "shape": [1024, 1024],'
        b' "data_offsets": [0, 4194304]}, "cond_stage_model.transformer.x": {"dtype": "F32",'
        b' "shape": [1], "data_offsets": [4194304, 4194308]}}'
    )
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 10)
    return path


def _lora_tree(root: Path) -> Path:
    """An A1111 tree whose LoRA folder holds a good file and one of each kind refused."""
    from tests.unit.test_lora_files import LOHA_KEYS, SD1_KEYS, SDXL_KEYS, write_safetensors

    loras = root / "models/Lora"
    write_safetensors(loras / "orange.safetensors", SD1_KEYS)
    write_safetensors(loras / "hada.safetensors", LOHA_KEYS)
    write_safetensors(loras / "xl.safetensors", SDXL_KEYS)
    (loras / "old.pt").write_bytes(b"\x80\x02pickle")
    return root


def _embedding_tree(root: Path) -> Path:
    """An embeddings folder holding a pickle, a truncated file and a file with two terms."""
    from tests.unit.test_embedding_files import write_safetensors

    emb = root / "embeddings"
    emb.mkdir(parents=True, exist_ok=True)
    (emb / "negpt.pt").write_bytes(b"\x80\x02pickle")
    cut = write_safetensors(emb / "cutoff.safetensors", {"emb_params": [2, 768]})
    cut.write_bytes(cut.read_bytes()[:-100])
    write_safetensors(emb / "twoterms.safetensors", {"a": [1, 768], "b": [1, 768]})
    return root


def _pictures_tree(root: Path) -> Path:
    """Two pictures (a.png with a caption), a PNG that is text, and a mask for b only."""
    from PIL import Image

    (root / "masks").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (32, 32), (220, 30, 30)).save(root / f"{name}.png")
    (root / "a.txt").write_text("a red square")
    Image.new("L", (32, 32), 255).save(root / "masks" / "b.png")
    (root / "notes.txt").write_text("not a picture")
    (root / "notes.txt").rename(root / "notes.png")
    return root


def _upscaler_tree(root: Path) -> Path:
    """Upscaler folders holding an ESRGAN pickle and a safetensors file of another kind; a VAE."""
    import shutil

    data = Path(__file__).resolve().parents[1] / "data" / "upscalers"
    (root / "models/ESRGAN").mkdir(parents=True)
    shutil.copy(data / "esrgan_old_x4_nf8_nb1.pth", root / "models/ESRGAN/4x-Tiny.pth")
    header = b'{"layers.0.attn.qkv.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    swin = root / "models/ESRGAN/4x-Swin.safetensors"  # a SwinIR key, no ESRGAN ones
    swin.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    (root / "models/VAE").mkdir()
    vae = b'{"encoder.conv_in.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    vae_file = root / "models/VAE/vae-ft-mse-840000-ema-pruned.safetensors"
    vae_file.write_bytes(struct.pack("<Q", len(vae)) + vae + b"\0" * 4)
    return root


@pytest.fixture
def user_recipes(tmp_path, monkeypatch):
    work = tmp_path / "work"
    recipes = tmp_path / "recipes"
    work.mkdir()
    recipes.mkdir()
    fill = {"pwned": str(tmp_path / "pwned.txt"), "outside": str(tmp_path / "elsewhere")}
    for name, text in EVIL.items():
        for key, value in fill.items():
            text = text.replace("{" + key + "}", value)
        (recipes / f"{name}.yaml").write_text(text.lstrip("\n"))
    monkeypatch.setenv("SDBATCH_RECIPES", str(recipes))
    monkeypatch.chdir(work)
    config.register_configs()
    yield tmp_path
    monkeypatch.delenv("SDBATCH_RECIPES")
    config.register_configs()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize(("args", "code", "words"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_code_and_nothing_written(
    user_recipes, monkeypatch, capsys, args, code, words
):
    tmp = user_recipes
    truncated = _truncated_safetensors(tmp / "truncated.safetensors")
    webui = _controlnet_tree(_embedding_tree(_upscaler_tree(_lora_tree(tmp / "webui"))))
    pics = _pictures_tree(tmp / "pics")
    args = [a.replace("{truncated}", str(truncated)).replace("{webui}", str(webui)) for a in args]
    args = [a.replace("{pics}", str(pics)) for a in args]
    before = _files(tmp)
    got, out, err = run_cli(monkeypatch, capsys, "run.device=cpu", "run.progress=false", *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in out + err
    assert _files(tmp) == before, sorted(map(str, _files(tmp) - before))
    assert not (tmp / "pwned.txt").exists()


def test_a_broken_or_unsafe_user_recipe_fails_only_the_run_that_uses_it(
    user_recipes, monkeypatch, capsys
):
    code, out, err = run_cli(monkeypatch, capsys, "+recipe=quick", "run.dry_run=true")
    assert code == 0 and "quick: 4 jobs" in out, err
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    recipes = next(ln for ln in out.splitlines() if ln.startswith("recipe: "))
    assert code == 0 and "quick" in recipes and "broken" not in recipes


def test_dynamic_prompts_variables_are_text_not_interpolations(tmp_path, monkeypatch, capsys):
    """sd-dynamic-prompts' ${var=...} in a recipe or on the command line reaches dynamicprompts."""
    (tmp_path / "dp.yaml").write_text("name: dp\nprompt: '${c=!{red|blue}} a ${c} circle'\n")
    (tmp_path / "dpt.yaml").write_text(
        "name: dpt\ntemplate: '${c=!{red|blue}} a ${c} {shape}'\nvars: {shape: [circle, square]}\n"
    )
    monkeypatch.setenv("SDBATCH_RECIPES", str(tmp_path))
    config.register_configs()
    try:
        code, out, err = run_cli(monkeypatch, capsys, "+recipe=dp", "run.dry_run=true")
        assert code == 0 and "' a red circle'" in out, err
        code, out, err = run_cli(monkeypatch, capsys, "+recipe=dpt", "run.dry_run=true")
        assert code == 0 and "' a red circle'" in out and "' a red square'" in out, err
        code, out, err = run_cli(
            monkeypatch, capsys, "+recipe=quick", "run.dry_run=true", "prompt=${s={a|b}} ${s} cat"
        )
        assert code == 0 and "' a cat'" in out and "' b cat'" in out, err
    finally:
        monkeypatch.delenv("SDBATCH_RECIPES")
        config.register_configs()


def test_command_line_keeps_hydra_power_a_recipe_does_not(user_recipes, monkeypatch, capsys):
    """output.dir outside outputs/ is refused from a recipe, accepted from the command line."""
    elsewhere = user_recipes / "elsewhere"
    code, out, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={elsewhere}", "run.dry_run=true"
    )
    assert code == 0 and "quick: 4 jobs" in out, err
    assert not elsewhere.exists()  # a dry run writes nothing


def test_a_read_only_folder_of_finished_work_reports_what_is_done(tmp_path, monkeypatch, capsys):
    """All jobs done and the folder cannot be locked (read-only): the summary says so, exit 0."""
    from sdbatch.run import runner
    from tests.conftest import quick_cfg

    out = tmp_path / "out"
    assert runner.execute(quick_cfg(), out).written == 4
    capsys.readouterr()

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(out / ".sdbatch.lock"))

    monkeypatch.setattr(runner.OutputLock, "acquire", refuse)
    summary = runner.execute(quick_cfg(), out)
    text = capsys.readouterr().out
    assert summary.exit_code == 0 and summary.skipped == 4
    assert "4 done" in text and "done: 0 written, 4 skipped" in text


# sdbatch-tools on crafted or damaged output folders: (arguments, exit code, words in the line).
# OUT is a folder with one honest row and one row "evil" pointing at IMAGE with the sha256 of a
# file outside the folder; DAMAGED gets a truncated manifest part.
TOOL_CASES = [
    (["manifest", "verify", "OUT"], {"image": "../../secret.txt"}, 2, ["row evil", "'..'"]),
    (["manifest", "verify", "OUT"], {"image": "SECRET"}, 2, ["row evil", "is absolute"]),
    (["export", "OUT", "-o", "DEST"], {"image": "../../secret.txt"}, 2, ["row evil", "refusing"]),
    (["gallery", "OUT", "--thumbs", "32"], {"image": "SECRET"}, 2, ["row evil", "absolute"]),
    (["grid", "OUT", "--x", "seed"], {"image": "../../secret.txt"}, 2, ["row evil"]),
    (["manifest", "summary", "OUT"], {"damage": True}, 2, ["manifest file", "is damaged"]),
    (["export", "OUT", "-o", "DEST"], {"damage": True}, 2, ["is damaged"]),
    (["replay", "BOMB"], {}, 2, ["bomb.png", "100,000x100,000", "decompression-bomb limit"]),
    (["infotext", "BOMB"], {}, 2, ["bomb.png", "decompression-bomb limit"]),
    (["replay", "HUGE"], {}, 2, ["huge.png", "at most 1,048,576 bytes (1 MiB)"]),
    # ray-shards checks its arguments before Ray starts (these need no ray installed)
    (["ray-shards", "--shards", "2", "+recipe=quick"], {}, 2, ["output.dir: not set"]),
    (["ray-shards", "--shards", "0", "output.dir=DEST"], {}, 2, ["--shards: 0 is not allowed"]),
    (["ray-shards", "--shards", "2", "shard.index=1"], {}, 2, ["shard.index: '1' is not allowed"]),
]


@pytest.mark.parametrize(
    ("argv", "craft", "code", "words"), TOOL_CASES, ids=[" ".join(c[0]) for c in TOOL_CASES]
)
def test_tools_refuse_crafted_and_damaged_folders(tmp_path, capsys, argv, craft, code, words):
    import hashlib

    from sdbatch import tools
    from sdbatch.outputs.manifest import Manifest
    from tests.unit.test_manifest import row

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"private")
    out = tmp_path / "runs" / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "1-good.png").write_bytes(b"png")
    good = row("good", seed=1, image="images/1-good.png",
               image_sha256=hashlib.sha256(b"png").hexdigest())  # fmt: skip
    image = craft.get("image", "images/1-good.png").replace("SECRET", str(secret))
    evil = row("evil", seed=2, image=image, image_sha256=hashlib.sha256(b"private").hexdigest())
    part = Manifest(out / "manifest").append([good, evil])
    if craft.get("damage"):
        part.write_bytes(part.read_bytes()[:100])
    from tests.unit.test_replay_limits import png, text

    bomb = png(tmp_path / "bomb.png", size=(100_000, 100_000))
    huge = png(tmp_path / "huge.png", text("x" * (2 << 20)))
    dest = tmp_path / "dest"
    fill = {"OUT": out, "DEST": dest, "BOMB": bomb, "HUGE": huge}
    args = [str(fill.get(a, a)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        tools.main(args)
    _, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exit_.value.code == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in err and not dest.exists()
