"""The CLIP tokenizer conversion (``sdbatch.shapes.clip_files``) on a synthetic BPE file.

The real input (open_clip's ``bpe_simple_vocab_16e6.txt.gz``) is not on this machine; the
shipped vocab is checked against CLIP's real ids in tests/integration/test_embedded_model.py.
"""

from __future__ import annotations

import gzip
import json
import zipfile

import pytest

from sdbatch.shapes import clip_files as cf


def fake_bpe(n_merges: int) -> bytes:
    lines = ["#version: fake header", *(f"x{i} y</w>" for i in range(n_merges + 5))]
    return gzip.compress("\n".join(lines).encode())


@pytest.mark.parametrize("as_wheel", [False, True])
def test_vocab_is_bytes_then_word_ends_then_merges_then_specials(tmp_path, as_wheel):
    src = tmp_path / "bpe.txt.gz"
    src.write_bytes(fake_bpe(cf.N_MERGES))
    if as_wheel:  # read straight out of a wheel, by member name
        wheel = tmp_path / "open_clip.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(cf.BPE_MEMBER, src.read_bytes())
        src = wheel
    vocab_path, merges_path = cf.convert_clip_bpe(src, tmp_path / "tok")
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    assert len(vocab) == cf.VOCAB_SIZE == 49408
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # byte chars, then their word-end forms
    assert vocab["x0y</w>"] == 512 and f"x{cf.N_MERGES}y</w>" not in vocab  # first N merges only
    assert vocab[cf.BOS] == 49406 and vocab[cf.EOS] == 49407
    merges = merges_path.read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and merges[1] == "x0 y</w>"
    assert len(merges) == cf.N_MERGES + 1


def test_a_short_merges_file_is_refused(tmp_path):
    src = tmp_path / "bpe.txt.gz"
    src.write_bytes(gzip.compress(b"#h\na b\n"))
    with pytest.raises(ValueError, match="unexpected BPE merges file layout"):
        cf.convert_clip_bpe(src, tmp_path / "tok")
