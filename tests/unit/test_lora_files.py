"""LoRA tags, hashes and file checks (sdbatch.plan.lora_files, sdbatch.plan.extra_networks) and
how the plan orders, batches and identifies jobs that use LoRA files. Pure: the files are
safetensors headers written here, no torch."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from sdbatch.errors import RecipeError
from sdbatch.outputs.infotext import format_params, parse_infotext
from sdbatch.plan.extra_networks import parse_tags, strip_tags, tag_warning, unapplied_tags
from sdbatch.plan.lora_files import (
    addnet_hash,
    lora_family,
    lora_hash,
    lora_tags,
    lora_type_problem,
    resolve_loras,
)
from sdbatch.plan.networks import LoraUse, Networks
from sdbatch.plan.recipe import build_plan

SD1_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [
        4,
        64,
    ],
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [64, 4],
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 64],
}
SDXL_KEYS = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 64],
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 64],
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 64],
}
LOHA_KEYS = {"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": [4, 64]}


def write_safetensors(path: Path, keys: dict[str, list], metadata: dict | None = None) -> Path:
    """A valid safetensors file holding zeros of float16 tensors of ``keys``' shapes."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in keys.items():
        size = 2
        for n in shape:
            size *= n
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        struct.pack("<Q", len(raw))
        + raw
        + bytes(range(256)) * (offset // 256)
        + b"\1" * (offset % 256)
    )
    return path


@pytest.mark.parametrize(
    ("tag", "want"),
    [
        ("<lora:detail>", ("detail", 1.0, 1.0)),
        ("<lora:detail:0.7>", ("detail", 0.7, 0.7)),
        ("<lora:detail:0.7:0.3>", ("detail", 0.7, 0.3)),
        ("<lora:detail:unet=0.2>", ("detail", 1.0, 0.2)),
        ("<lora:detail:te=0.5>", ("detail", 0.5, 0.5)),  # unet follows te unless given
        ("<lora:detail:0.9:te=0.5:unet=0.1>", ("detail", 0.5, 0.1)),  # named wins
        ("<lyco:styles/detail:-1>", ("styles/detail", -1.0, -1.0)),
        ("<lora:detail:1e-1>", ("detail", 0.1, 0.1)),
    ],
)
def test_lora_tags_read_as_a1111_reads_them(tag, want):
    (found,) = lora_tags(f"a cat, {tag} on a mat")
    assert found[1:] == want and found[0].text == tag


@pytest.mark.parametrize(
    ("tag", "words"),
    [
        ("<lora:detail:1:1:8>", ["dyn", "DyLoRA"]),
        ("<lora:detail:dyn=8>", ["dyn"]),
        ("<lora:detail:strong>", ["te multiplier", "'strong'"]),
        ("<lora:detail:1:nan>", ["unet multiplier"]),
        ("<lora:detail:scale=2>", ["te= and unet= only", "scale"]),
        ("<lora::1>", ["a LoRA name first"]),
    ],
)
def test_a_tag_we_cannot_honour_is_one_error_line(tag, words):
    with pytest.raises(RecipeError) as exc:
        lora_tags(f"a cat {tag}")
    text = str(exc.value)
    assert text.startswith(f"prompt: {tag!r} is not allowed") and "\n" not in text
    for word in words:
        assert word in text


def test_tags_are_stripped_as_a1111_strips_them():
    text = "a <lora:x:1>red [<lora:y:1>circle:square:0.5], (big:1.2)<hypernet:h:1><Foo:bar>"
    assert strip_tags(text) == "a red [circle:square:0.5], (big:1.2)"
    assert [t.kind for t in parse_tags(text)] == ["lora", "lora", "hypernet", "Foo"]
    assert strip_tags("a <b> <x:> <:y> cat") == "a <b> <x:> <:y> cat"  # not tags to A1111


def test_only_tags_that_are_not_applied_warn():
    found = unapplied_tags(["a <lora:x:1> <hypernet:h:1> <LoRA:x> <foo:1>"], ["<lora:n:1>"])
    assert [t for _, t in found] == ["<hypernet:h:1>", "<LoRA:x>", "<foo:1>", "<lora:n:1>"]
    lines = [tag_warning(f, t) for f, t in found]
    assert "does not load hypernetworks" in lines[0] and "removed" in lines[0]
    assert "lowercase <lora:...>" in lines[1]
    assert "negative prompt" in lines[3] and "as written" in lines[3]


def test_hash_is_a1111s_addnet_hash_or_the_metadata_hash(tmp_path):
    path = write_safetensors(tmp_path / "a.safetensors", SD1_KEYS, {"ss_network_dim": "4"})
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    after_header = hashlib.sha256(data[8 + n :]).hexdigest()
    assert addnet_hash(path) == after_header != hashlib.sha256(data).hexdigest()
    assert lora_hash(path) == after_header[:12]
    given = write_safetensors(tmp_path / "b.safetensors", SD1_KEYS, {"sshs_model_hash": "ab" * 32})
    assert lora_hash(given) == "abababababab"
    pickle = tmp_path / "c.pt"
    pickle.write_bytes(b"not really a pickle")
    assert lora_hash(pickle) == hashlib.sha256(b"not really a pickle").hexdigest()[:12]


def test_family_and_type_come_from_key_names():
    assert lora_family(SD1_KEYS, {}) == "sd1"
    assert lora_family(SDXL_KEYS, {}) == "sdxl"
    assert lora_family({"unet.down_blocks.0.x.lora_A.weight": [4, 64]}, {}) is None
    assert lora_family({}, {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"
    big = {"lora_unet_x_attn2_to_k.lora_down.weight": [4, 2048]}  # SDXL's text width
    assert lora_family(big, {}) == "sdxl"
    assert lora_type_problem(SD1_KEYS) is None
    assert "LoHa" in lora_type_problem(LOHA_KEYS)
    assert "LoKr" in lora_type_problem({"lora_unet_x.lokr_w1": [2, 2]})
    assert "no lora_down" in lora_type_problem({"model.diffusion_model.x": [1]})


def test_infotext_field_is_quoted_once_as_a1111_writes_it():
    nets = Networks((LoraUse("add_detail", "/x", "7c6bad76eb54"), LoraUse("a:b,c", "/y", "0" * 12)))
    line = format_params(nets.infotext())
    assert line == 'Lora hashes: "add_detail: 7c6bad76eb54, abc: 000000000000"'
    # the sample A1111 wrote reads back to the same value
    sample = 'a cat\nSteps: 20, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.9.4'
    assert parse_infotext(sample).params["Lora hashes"] == "add_detail: 7c6bad76eb54"


def _folder(tmp_path) -> dict:
    root = tmp_path / "webui"
    write_safetensors(root / "models/Lora/detail.safetensors", SD1_KEYS)
    write_safetensors(root / "models/Lora/styles/ink.safetensors", SD1_KEYS, {"x": "1"})
    write_safetensors(root / "models/LyCORIS/hada.safetensors", LOHA_KEYS)
    write_safetensors(root / "models/Lora/xl.safetensors", SDXL_KEYS)
    (root / "models/Lora/old.pt").write_bytes(b"\x80\x02not a torch file")
    return {"a1111": str(root)}


def test_resolving_names_files_weights_and_errors(tmp_path):
    folders = _folder(tmp_path)
    (use,) = resolve_loras("a <lora:detail:0.5> <lora:detail:0.25:1>", "sd1", folders, False)
    assert (use.name, use.te_weight, use.unet_weight) == ("detail", 0.75, 1.5)  # tags add up
    assert Path(use.path).name == "detail.safetensors" and len(use.hash) == 12
    cases = [
        ("<lora:detial>", "sd1", ["'detial'", "closest match: 'detail'"]),
        ("<lora:hada>", "sd1", ["LyCORIS LoHa", "cannot convert"]),
        ("<lora:xl>", "sd1", ["SDXL LoRA", "the model is SD 1.x"]),
        ("<lora:detail>", "sdxl", ["SD 1.x LoRA", "the model is SDXL"]),
        ("<lora:old>", "sd1", ["model.allow_pickle"]),
    ]
    for prompt, family, words in cases:
        with pytest.raises(RecipeError) as exc:
            resolve_loras(prompt, family, folders, False)
        assert str(exc.value).startswith("prompt: ") and all(w in str(exc.value) for w in words)


def test_plan_puts_each_lora_set_together_and_ids_take_hash_and_weight(tmp_path):
    folders = _folder(tmp_path)
    cfg = {
        "name": "t", "template": "a {w} cat <lora:detail:{w}>", "vars": {"w": ["0.5", "1"]},
        "prompt": ["a dog"], "seeds": [1, 2], "cfg": [5, 7], "folders": folders, "batch_size": 8,
    }  # fmt: skip
    plan = build_plan(cfg, [])
    sets = [j.networks.batch_key() for j in plan.jobs]
    assert len(plan.jobs) == 12 and len(set(sets)) == 3
    changes = sum(a != b for a, b in zip(sets, sets[1:], strict=False))
    assert changes == 2  # three stretches: each set's jobs together, across the cfg axis
    for batch in plan.batches:
        assert len({j.networks.batch_key() for j in batch.jobs}) == 1
    weights = {j.prompt: j.networks.loras for j in plan.jobs}
    assert weights["a 0.5 cat <lora:detail:0.5>"][0].unet_weight == 0.5
    assert weights["a dog"] == ()
    # the file's bytes and the weight decide the id: a changed file gives new ids
    before = {j.job_id for j in plan.jobs if j.networks.loras}
    write_safetensors(
        tmp_path / "webui/models/Lora/detail.safetensors", {**SD1_KEYS, "x.alpha": [1]}
    )
    after = {j.job_id for j in build_plan(cfg, []).jobs if j.networks.loras}
    assert before.isdisjoint(after)


def test_a_plan_without_lora_keeps_its_order():
    cfg = {"name": "t", "prompt": ["a", "b"], "seeds": [1, 2], "cfg": [5, 7]}
    jobs = build_plan(cfg, []).jobs
    assert [(j.cfg, j.prompt, j.seed) for j in jobs][:4] == [
        (5.0, "a", 1), (5.0, "a", 2), (5.0, "b", 1), (5.0, "b", 2),
    ]  # fmt: skip


def test_replay_maps_lora_hashes_to_the_folders_names(tmp_path, monkeypatch):
    from sdbatch.views.replay import recipe_from_infotext

    folder = tmp_path / "Lora"
    renamed = write_safetensors(folder / "styles/add_detail_v2.safetensors", SD1_KEYS)
    other = write_safetensors(folder / "ink.safetensors", SD1_KEYS, {"sshs_model_hash": "f" * 64})
    monkeypatch.setenv("SDBATCH_LORA", str(folder))
    monkeypatch.delenv("SDBATCH_A1111", raising=False)
    text = (
        "a cat <lora:add_detail:0.6> <lora:ink:1> <lora:gone:1>\n"
        "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32, Lora hashes: "
        f'"add_detail: {lora_hash(renamed)}, ink: 0123456789ab, gone: 00000000abcd", '
        "Version: v1.10.1"
    )
    recipe = recipe_from_infotext(text, "r")
    # by hash: the file is add_detail_v2 here; by name: ink (another version); gone: missing
    assert recipe.values["prompt"] == "a cat <lora:add_detail_v2:0.6> <lora:ink:1> <lora:gone:1>"
    lora_lines = [w for w in recipe.warnings if w.startswith("Lora hashes:")]
    assert len(lora_lines) == 3, recipe.warnings
    assert "found by its hash as 'add_detail_v2'" in lora_lines[0]
    assert f"{other.name} has hash ffffffffffff, not 0123456789ab" in lora_lines[1]
    assert "gone (00000000abcd) is missing: no file with this name or hash" in lora_lines[2]
    assert recipe.comments[0].startswith('Lora hashes: "add_detail: ')
