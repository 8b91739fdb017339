"""Textual-inversion embeddings, plan side (sdbatch.plan.embedding_files, prompts' fixes).

Files are written here as bare safetensors bytes (JSON header + zero tensors), so nothing
needs torch; pickles and pixels are in tests/integration/test_embeddings.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan import embedding_files as ef
from sdbatch.plan.hashing import sha256_file
from sdbatch.plan.networks import parse_hash_list, resolve_networks
from sdbatch.plan.prompts import PLACEHOLDER_ID, chunk_tokens, parse_attention
from tests.unit.test_prompts import COMMA, fake_tokenize, words


def write_safetensors(path: Path, tensors: dict[str, list[int]]) -> Path:
    """A valid safetensors file of float32 zeros with these shapes."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def lookup(**names: tuple[list[int], int]):
    """name=(token ids, vectors) -> an ids lookup, longest first, as A1111 keeps it."""
    table: dict[int, list] = {}
    for name, (ids, n) in names.items():
        table.setdefault(ids[0], []).append((tuple(ids), name, n))
    for entries in table.values():
        entries.sort(key=lambda e: len(e[0]), reverse=True)
    return table


def chunks(text: str, table, **kw):
    return chunk_tokens(parse_attention(text), fake_tokenize, COMMA, embeddings=table, **kw)


# --- chunking with fixes -------------------------------------------------------------------


def test_an_embedding_takes_its_vector_count_in_positions_at_the_texts_weight():
    (c,) = chunks("w1 (w7 w8:1.2) w2", lookup(neg=([7, 8], 3)))
    assert c.tokens == [1, *[PLACEHOLDER_ID] * 3, 2]
    assert c.weights == pytest.approx([1.0, 1.2, 1.2, 1.2, 1.0])
    assert c.fixes == [(1, "neg")]


def test_the_longest_name_wins_and_a_partial_name_stays_text():
    table = lookup(a=([7], 1), ab=([7, 8], 2))
    (c,) = chunks("w7 w8 w7 w9", table)
    assert c.fixes == [(0, "ab"), (2, "a")]
    assert c.tokens == [0, 0, 0, 9]


def test_an_embedding_is_never_split_across_chunks():
    # 73 words, then a 4-vector embedding: it does not fit in the 2 positions left
    first, second = chunks(words(1, 74) + " w500", lookup(big=([500], 4)))
    assert first.tokens == list(range(1, 74)) and first.fixes == []
    assert second.fixes == [(0, "big")] and second.tokens == [0] * 4


def test_fixes_move_with_the_comma_back_off():
    first, second = chunks(words(1, 71) + ", w500 " + words(71, 81), lookup(e=([500], 2)))
    assert first.tokens == [*range(1, 71), COMMA] and first.fixes == []
    assert second.fixes == [(0, "e")]
    assert second.tokens[:2] == [0, 0] and second.tokens[2:] == list(range(71, 81))


def test_without_a_lookup_chunks_have_no_fixes():
    (c,) = chunks("w7 w8", None)
    assert c.tokens == [7, 8] and c.fixes == []


# --- the plan's tokenizer: A1111 matches on CLIP's token ids ------------------------------


def test_matching_is_on_clip_tokens_case_and_punctuation_spacing_as_a1111():
    table = ef.build_lookup({"EasyNegative": 2, "bad-hands-5": 1}, ef.tokenize)
    assert ef.used_names("easynegative, EASYNEGATIVE", table) == ["EasyNegative"]
    assert ef.used_names("bad - hands - 5", table) == ["bad-hands-5"]
    assert ef.used_names("easy negative", table) == []  # two words are other tokens
    assert ef.used_names("(EasyNegative:1.2), (worst quality:1.4)", table) == ["EasyNegative"]


# --- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensors, vectors, widths",
    [
        ({"emb_params": [2, 768]}, 2, {"": 768}),  # A1111's safetensors layout
        ({"<cat-toy>": [768]}, 1, {"": 768}),  # diffusers' {token: vector}
        ({"clip_l": [4, 768], "clip_g": [4, 1280]}, 4, {"clip_l": 768, "clip_g": 1280}),
    ],
)
def test_header_gives_vectors_and_widths(tmp_path, tensors, vectors, widths):
    info = ef.read_embedding(write_safetensors(tmp_path / "x.safetensors", tensors), "f", False)
    assert (info.vectors, info.widths) == (vectors, widths)


def test_a_file_with_two_terms_is_one_error_line(tmp_path):
    path = write_safetensors(tmp_path / "two.safetensors", {"a": [1, 768], "b": [1, 768]})
    with pytest.raises(RecipeError, match="holds 2 tensors; A1111 reads one term per file"):
        ef.read_embedding(path, "f", False)


# --- resolving --------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    write_safetensors(tmp_path / "emb" / "EasyNegative.safetensors", {"emb_params": [2, 768]})
    write_safetensors(tmp_path / "emb" / "xl" / "xlneg.safetensors",
                      {"clip_l": [1, 768], "clip_g": [1, 1280]})  # fmt: skip
    return {"embeddings": str(tmp_path / "emb")}


def test_the_job_id_and_ti_hashes_carry_the_files_a1111_short_hash(folder):
    nets = resolve_networks("a cat", "(EasyNegative:1.2), lowres", "sd1", folder, False)
    (use,) = nets.embeddings
    path = Path(folder["embeddings"]) / "EasyNegative.safetensors"
    assert (use.name, use.path, use.hash) == ("EasyNegative", str(path), sha256_file(path)[:12])
    assert '"ti":[["EasyNegative","' + use.hash in nets.key()
    assert not resolve_networks("a cat", "lowres", "sd1", folder, False)  # ids stay as before


def test_an_embedding_for_another_family_is_skipped_with_one_warning(folder, capsys):
    resolve_networks("xlnegative", "", "sd1", folder, False)  # other tokens: A1111 says nothing
    assert capsys.readouterr().err == ""
    nets = resolve_networks("xlneg EasyNegative", "", "sd1", folder, False)
    assert [u.name for u in nets.embeddings] == ["EasyNegative"]
    resolve_networks("xlneg", "", "sd1", folder, False)  # said once per file and model width
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "warning: embedding xlneg" in err and "is for SDXL" in err and "stays text" in err
    nets = resolve_networks("xlneg", "", "sdxl", folder, False)
    assert [u.name for u in nets.embeddings] == ["xlneg"]


def test_a_pickle_embedding_is_refused_without_allow_pickle(tmp_path):
    (tmp_path / "neg.pt").write_bytes(b"not read: refused by its suffix")
    with pytest.raises(RecipeError, match="model.allow_pickle"):
        resolve_networks("neg", "", "sd1", {"embeddings": str(tmp_path)}, False)


def test_files_no_prompt_names_are_not_opened(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x00")  # would be an error if read
    assert not resolve_networks("a cat", "", "sd1", {"embeddings": str(tmp_path)}, False)
    with pytest.raises(RecipeError, match="broken"):
        resolve_networks("broken", "", "sd1", {"embeddings": str(tmp_path)}, False)


def test_lora_tags_are_not_embedding_words(folder):
    assert not ef.resolve_embeddings("<lora:EasyNegative:1>", "", "sd1", folder, False)


def test_ti_hashes_names_drop_colons_and_commas_as_a1111():
    assert ef.infotext_name("a:b,c") == "abc"


def test_replay_finds_ti_hashes_by_hash_then_by_name(folder):
    path = Path(folder["embeddings"]) / "EasyNegative.safetensors"
    short = sha256_file(path)[:12]
    assert parse_hash_list(f"EasyNegative: {short}, bad: 0123456789AB") == [
        ("EasyNegative", short), ("bad", "0123456789ab"),
    ]  # fmt: skip
    assert ef.find_embedding("easynegative", short, folder) == ("EasyNegative", "")
    assert ef.find_embedding("old-name", short, folder) == (
        "EasyNegative", "found by its hash as 'EasyNegative'",
    )  # fmt: skip
    found, note = ef.find_embedding("EasyNegative", "0123456789ab", folder)
    assert found == "EasyNegative" and note.startswith(f"found by name, but its hash is {short}")
    found, note = ef.find_embedding("gone", "0123456789ab", folder)
    assert found is None and "no file with that hash or name" in note
    assert ef.find_embedding("x", short, {}, env={})[0] is None  # no folder set
