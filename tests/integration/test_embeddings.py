"""Textual-inversion embeddings rendered: the shipped example word and file formats on the
shapes model, an SDXL pair on the tiny SDXL pipeline, infotext and manifest from a real run.

The example ``examples/webui/embeddings/fuchsia.safetensors`` (``make train-embedding``)
teaches the shapes model that "fuchsia" is magenta. Pictures are judged by
``sdbatch.shapes.judge`` at 32x32, Euler, CFG 7, empty negative prompt. Measured before the
thresholds were set (seeds 1-12, 20 steps): "a fuchsia circle on a white background" is
magenta 12/12 with the file and 1/12 without it (the word is then unknown text; the others
were green 7, blue, red, cyan, yellow); "fuchsia square, black background" and "a fuchsia
triangle on a gray background" 12/12 magenta with the file. At 10 steps (what the test runs):
12/12 with the file, 0/12 without (green 6, blue 4, cyan 2).

Emphasis, measured (seeds 1-8): ``(fuchsia:w)`` stays magenta from w = 0 to 2 (7/8 at 3):
the colour also reaches the model through the later tokens, which attend to the embedding
inside CLIP and which emphasis does not touch. What moves with w is the shape's contrast
with the background (the judge's peak RGB distance), falling monotonically: 251.0 at w=0,
249.3 at 0.5, 245.5 at 1, 235.3 at 1.5, 223.5 at 2, 163.7 at 3; on each of seeds 1-4 at 10
steps as well (the smallest step between neighbours of w = 0.5, 1, 1.5, 2 is 2.3).
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sdbatch.errors import RecipeError
from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.plan.checkpoints import resolve_model
from sdbatch.plan.hashing import sha256_file
from sdbatch.plan.networks import resolve_networks
from sdbatch.render.embeddings import EmbeddingStore, load_vectors, with_embeddings
from sdbatch.render.encode import encode_pair, pipeline_encoders
from sdbatch.render.pipeline import Renderer
from sdbatch.shapes.judge import judge
from tests.conftest import ROOT, run_cli
from tests.integration.test_prompt_editing import job

pytestmark = pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")

EXAMPLE = ROOT / "examples" / "webui" / "embeddings"
FUCHSIA = EXAMPLE / "fuchsia.safetensors"
CIRCLE = "a fuchsia circle on a white background"


@pytest.fixture(scope="module")
def renderer():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_prompt_editing's renderer fixture
    yield Renderer.load(resolve_model({}), device="cpu")
    torch.set_num_threads(threads)


def planned(r, prompt, folder, seeds, negative="", allow_pickle=False, **kw):
    """Jobs as the plan makes them: the networks resolved for this model and folder."""
    nets = resolve_networks(prompt, negative, r.model.family, {"embeddings": str(folder)},
                            allow_pickle, model=r.model)  # fmt: skip
    return [job(r, prompt, s, negative=negative, networks=nets, **kw) for s in seeds]


def verdicts(r, jobs) -> list[dict]:
    out = r.render(jobs)
    assert not any(nan for _, nan in out)
    return [judge(pixels) for pixels, _ in out]


def test_the_word_draws_magenta_with_the_embedding_and_not_without(renderer, tmp_path):
    seeds = range(1, 7)
    with_file = planned(renderer, CIRCLE, EXAMPLE, seeds, steps=10)
    assert [u.name for u in with_file[0].networks.embeddings] == ["fuchsia"]
    colours = [v["colour"] for v in verdicts(renderer, with_file)]
    assert colours.count("magenta") >= 5, colours  # measured 12/12
    without = planned(renderer, CIRCLE, tmp_path, seeds, steps=10)  # the word is text here
    assert not without[0].networks
    colours = [v["colour"] for v in verdicts(renderer, without)]
    assert colours.count("magenta") <= 2, colours  # measured 0/12 (1/12 at 20 steps)


def test_emphasis_weight_lowers_the_shapes_contrast_monotonically(renderer):
    weights = (0.5, 1.0, 1.5, 2.0)
    rows = []
    for w in weights:
        vs = verdicts(renderer, planned(renderer, f"a (fuchsia:{w}) circle on a white background",
                                        EXAMPLE, (1, 2, 3, 4), steps=10))  # fmt: skip
        assert [v["colour"] for v in vs] == ["magenta"] * 4, w  # the colour does not move
        rows.append([v["contrast"] for v in vs])
    contrast = np.array(rows)  # (weight, seed)
    assert (np.diff(contrast, axis=0) < 0).all(), contrast  # measured steps >= 2.3


def test_emphasis_scales_the_embeddings_positions_as_a1111(renderer):
    renderer._ti.use(planned(renderer, CIRCLE, EXAMPLE, (1,))[0].networks.embeddings)
    plain = renderer.embeddings(CIRCLE, "")[0]
    weighted = renderer.embeddings("a (fuchsia:1.5) circle on a white background", "")[0]
    w = torch.ones(1, 77, 1)
    w[0, 2:4] = 1.5  # BOS, "a", then the embedding's two vectors
    torch.testing.assert_close(weighted, plain * w * (plain.mean() / (plain * w).mean()))


def test_plain_prompts_stay_bit_identical_with_embeddings_loaded(renderer):
    store = EmbeddingStore()
    store.use(planned(renderer, CIRCLE, EXAMPLE, (1,))[0].networks.embeddings)
    encoders = pipeline_encoders(renderer.pipe, "sd1")
    text = ("a red circle on a white background", "blurry")
    with torch.inference_mode():
        before = encode_pair(encoders, *text)
        after = encode_pair(with_embeddings(encoders, store), *text)
        used = encode_pair(with_embeddings(encoders, store), CIRCLE, "")
    assert all(torch.equal(a, b) for a, b in zip(before[:2], after[:2], strict=True))
    assert not torch.equal(used[0], encode_pair(encoders, CIRCLE, "")[0])


def test_a1111_pt_and_diffusers_bin_load_as_the_safetensors_file(renderer, tmp_path):
    vec = load_vectors(FUCHSIA)[""]
    (tmp_path / "pt").mkdir()
    (tmp_path / "bin").mkdir()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec.clone()},
                "name": "fuchsia", "step": 150}, tmp_path / "pt" / "fuchsia.pt")  # fmt: skip
    torch.save({"<fuchsia>": vec.clone()}, tmp_path / "bin" / "fuchsia.bin")
    base = EmbeddingStore()
    base.use(planned(renderer, CIRCLE, EXAMPLE, (1,))[0].networks.embeddings)
    encoders = pipeline_encoders(renderer.pipe, "sd1")
    with torch.inference_mode():
        want = encode_pair(with_embeddings(encoders, base), CIRCLE, "")[0]
    for sub in ("pt", "bin"):
        with pytest.raises(RecipeError, match="model.allow_pickle"):
            planned(renderer, CIRCLE, tmp_path / sub, (1,))
        (use,) = planned(renderer, CIRCLE, tmp_path / sub, (1,), allow_pickle=True)[
            0
        ].networks.embeddings
        assert use.hash == sha256_file(tmp_path / sub / f"fuchsia.{sub}")[:12]
        store = EmbeddingStore()
        store.use([use])
        with torch.inference_mode():
            got = encode_pair(with_embeddings(encoders, store), CIRCLE, "")[0]
        assert torch.equal(got, want), sub


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    from tests.integration.test_single_file import build_tiny_sdxl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    yield Renderer.load(resolve_model({"path": str(folder)}), device="cpu")
    torch.set_num_threads(threads)


def test_an_sdxl_embedding_feeds_clip_l_and_clip_g_to_their_encoders(xl, tmp_path, capsys):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    l_vec, g_vec = torch.randn(2, 32, generator=g), torch.randn(2, 48, generator=g)
    save_file({"clip_l": l_vec, "clip_g": g_vec}, str(tmp_path / "xlword.safetensors"))
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, str(tmp_path / "sdword.safetensors"))
    prompt = "a xlword sdword circle"
    (j,) = planned(xl, prompt, tmp_path, (1,))
    assert [u.name for u in j.networks.embeddings] == ["xlword"]  # 32 wide: not this model's
    assert "embedding sdword" in capsys.readouterr().err  # one warning, the word stays text

    seen = {}  # each encoder's token + position embeddings, after the vectors were placed

    def spy(name):
        def hook(_module, _inputs, out):
            seen.setdefault(name, out.clone())  # the prompt; the negative comes next

        return hook

    handles, positions = [], {}
    for name, enc in (("l", xl.pipe.text_encoder), ("g", xl.pipe.text_encoder_2)):
        (emb,) = [m for m in enc.modules() if type(m).__name__ == "CLIPTextEmbeddings"]
        positions[name] = emb.position_embedding.weight.detach()
        handles.append(emb.register_forward_hook(spy(name)))
    xl._ti.use(j.networks.embeddings)
    try:
        cond, _, pooled, _ = xl.embeddings(prompt, "")
    finally:
        for h in handles:
            h.remove()
    for name, vec in (("l", l_vec), ("g", g_vec)):  # BOS, "a", then the two vectors
        got = seen[name][0, 2:4] - positions[name][2:4]
        torch.testing.assert_close(got, vec.to(got.dtype), rtol=1e-5, atol=1e-5)
    plain = encode_pair(pipeline_encoders(xl.pipe, "sdxl"), prompt, "")
    assert not torch.equal(cond[..., :32], plain[0][..., :32])
    assert not torch.equal(cond[..., 32:], plain[0][..., 32:])
    assert not torch.equal(pooled, plain[2])
    # and a whole SDXL render with it (plain and embedding jobs in one batch) draws
    jobs = [*planned(xl, prompt, tmp_path, (1,), steps=2), job(xl, "a red circle", 1, steps=2)]
    out = xl.render(jobs)
    assert not any(nan for _, nan in out) and (out[0][0] != out[1][0]).any()


def test_a_run_writes_ti_hashes_and_the_manifest_column(tmp_path, monkeypatch, capsys):
    emb = tmp_path / "a1111" / "embeddings"
    emb.mkdir(parents=True)
    shutil.copy(FUCHSIA, emb / "fuchsia.safetensors")
    monkeypatch.chdir(tmp_path)
    short = sha256_file(FUCHSIA)[:12]
    out = tmp_path / "outputs" / "ti"
    code, _, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={out}", "run.device=cpu",
        "run.progress=false", f"prompt=['{CIRCLE}']", "negative_prompt='(fuchsia:0.5), blurry'",
        "seeds=1", "steps=2", "size=32x32", f"folders.a1111={tmp_path / 'a1111'}",
    )  # fmt: skip
    assert code == 0, err
    (row,) = pq.read_table(out / "manifest").to_pylist()
    assert row["embeddings"] == [{"name": "fuchsia", "hash": short}]
    params = parse_infotext(read_png_infotext(out / row["image"])).params
    assert params["TI hashes"] == f"fuchsia: {short}"
    assert f'TI hashes: "fuchsia: {short}"' in row["infotext"]  # quoted once, as A1111 writes

    # replay maps it back to the file in the embeddings folder (and warns when it is gone)
    from sdbatch.views.replay import recipe_from_infotext

    monkeypatch.setenv("SDBATCH_EMBEDDINGS", str(emb))
    replayed = recipe_from_infotext(row["infotext"], "r")
    assert not [w for w in replayed.warnings if "TI hashes" in w], replayed.warnings
    (emb / "fuchsia.safetensors").rename(emb / "renamed.safetensors")
    replayed = recipe_from_infotext(row["infotext"], "r")
    assert replayed.values["prompt"] == "a renamed circle on a white background"
    (emb / "renamed.safetensors").unlink()
    replayed = recipe_from_infotext(row["infotext"], "r")
    (line,) = [w for w in replayed.warnings if "TI hashes" in w]
    assert "fuchsia" in line and short in line and "missing" in line


def test_the_plans_tokenizer_gives_the_renderers_ids(renderer):
    """The plan finds embeddings with CLIP's vocabulary through the tokenizers library; the
    renderer matches with transformers' CLIPTokenizer. They must agree on every text."""
    from sdbatch.plan.embedding_files import tokenize

    texts = [
        "EasyNegative, (worst quality:1.4), bad-hands-5",
        "Ünïcode  tabs\tand\nnewlines 123 it's they'll <|endoftext|> x",
        "héllo wörld ！？ 漢字 😀 a,b.c;d",
        "masterpiece, best quality, 1girl, (ng_deepnegative_v1_75t:1.2)",
    ]
    want = renderer.pipe.tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert tokenize(texts) == want


def test_tools_prompt_shows_where_embeddings_go(capsys):
    from sdbatch import tools

    text = "a (fuchsia:1.2) circle, fuchsia square"
    try:
        code = tools.main(["prompt", "--embeddings", str(EXAMPLE), text])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code in (0, None)
    # two vectors each: 8 positions, each embedding shown once at its weight
    assert "chunk 1: 8 of 75 tokens\n  a <fuchsia:1.2> circle , <fuchsia> square\n" in out
