"""Textual-inversion embeddings a prompt uses, found as A1111 finds them. Pure: no torch.

A1111 registers every file of its ``embeddings/`` folder (subfolders too) under its file stem,
tokenizes that stem with CLIP's tokenizer, and replaces any run of prompt tokens equal to the
stem's tokens with the embedding's vectors (``find_embedding_at_position``; the longest name
wins). Matching is on token ids, so it inherits CLIP's view of text: case does not matter,
``bad-hands-5`` also matches ``bad - hands - 5``, and a stem can match inside a longer word
whose tokens end the same way. We tokenize with the ``tokenizers`` library over CLIP's own
vocabulary (the files every SD 1.x / SDXL tokenizer ships, committed with the embedded model),
configured as transformers' ``CLIPTokenizer`` configures it, so the plan sees the ids the
renderer will see without importing transformers.

What a file holds is read from its header, never loaded: a safetensors JSON header, or a torch
pickle's opcodes (``pickletools``; shapes follow each tensor's persistent id). A1111 skips an
embedding whose vector width is not the model's (768 for SD 1.x, 768 + 1280 for SDXL's
``clip_l``/``clip_g``, 1024 for SD 2.x) and prints the skipped names; we warn on one line and
the word stays text. Pickles follow the weights policy (``sdbatch.plan.weights``).
A1111's hash in ``TI hashes`` is the file's sha256, first 12 hex digits.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import RecipeError
from sdbatch.models import EMBEDDED_MODEL_PATH, SHIPPED_CONFIGS_DIR
from sdbatch.plan.hashing import cached_sha256
from sdbatch.plan.model_folders import list_files
from sdbatch.plan.prompts import EmbeddingLookup, chunk_tokens, parse_attention
from sdbatch.plan.weights import (
    SAFETENSORS,
    _read_pickle,
    check_weights_file,
    safetensors_header,
)

# A1111 compares the sum of an embedding's widths with the model's token width.
FAMILY_WIDTH = {"sd1": 768, "sdxl": 768 + 1280, "sd2": 1024}
FAMILY_NAMES = {"sd1": "SD 1.x", "sdxl": "SDXL", "sd2": "SD 2.x"}
SDXL_KEYS = ("clip_l", "clip_g")
SHIPPED_CONFIGS = {"sd1": SHIPPED_CONFIGS_DIR / "sd15", "sdxl": SHIPPED_CONFIGS_DIR / "sdxl"}
CLIP_FILES = EMBEDDED_MODEL_PATH / "tokenizer"


@dataclass(frozen=True, slots=True)
class EmbeddingFile:
    """What an embedding file holds, read from its header."""

    name: str  # the file stem: the word in the prompt
    path: str
    vectors: int  # how many token positions it fills
    widths: dict[str, int]  # tensor key -> vector width ("clip_l"/"clip_g" for SDXL)

    @property
    def width(self) -> int:
        return sum(self.widths.values())

    def family(self) -> str | None:
        return next((f for f, w in FAMILY_WIDTH.items() if w == self.width), None)


# ------------------------------------------------------------------------------ file headers


def read_embedding(path: str | Path, field: str, allow_pickle: bool) -> EmbeddingFile:
    """Vector count and widths of an embedding file, as A1111's ``load_from_file`` would find
    them (``string_to_param``; ``clip_l`` + ``clip_g``; else a single tensor), or one
    RecipeError on ``field``. Pickles are checked by the weights policy first. Remembered by
    (path, size, mtime) once read."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns, allow_pickle)
    except OSError:
        key = None
    if key in _HEADERS:
        return _HEADERS[key]
    info = _read_embedding(p, field, allow_pickle)
    if key is not None:
        _HEADERS[key] = info
    return info


_HEADERS: dict[tuple, EmbeddingFile] = {}


def _read_embedding(p: Path, field: str, allow_pickle: bool) -> EmbeddingFile:
    check_weights_file(p, field, allow_pickle)
    if p.suffix.lower() == SAFETENSORS:
        header = safetensors_header(p)
        shapes = {k: v.get("shape") for k, v in header.items()}
    else:
        shapes = _pickle_shapes(p)
    return _interpret(p, shapes, field)


def _interpret(p: Path, shapes: Mapping[str, object], field: str) -> EmbeddingFile:
    def bad(why: str) -> RecipeError:
        return RecipeError(field, str(p), f"a textual-inversion embedding ({why})")

    good = {
        k: list(s) for k, s in shapes.items() if isinstance(s, list) and 1 <= len(s) <= 2 and s[-1]
    }
    if all(k in good for k in SDXL_KEYS):
        l_shape, g_shape = good["clip_l"], good["clip_g"]
        n = g_shape[0] if len(g_shape) == 2 else 1
        return EmbeddingFile(p.stem, str(p), n, {"clip_l": l_shape[-1], "clip_g": g_shape[-1]})
    params = [k for k in good if k.startswith("string_to_param")] or list(good)
    if not params:
        raise bad("no tensor of shape (vectors, width) in it")
    if len(params) > 1:
        raise bad(f"it holds {len(params)} tensors; A1111 reads one term per file")
    shape = good[params[0]]
    return EmbeddingFile(p.stem, str(p), shape[0] if len(shape) == 2 else 1, {"": shape[-1]})


_TUPLES = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"}
_INTS = {"BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG", "LONG4"}


def _pickle_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes of a torch pickle, read from its opcodes (nothing is unpickled). Each
    tensor is ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``: after the storage's
    persistent id come the offset and the size tuple. A tensor is keyed by the last string
    seen before it (its dict key), which names ``clip_l``/``clip_g`` in SDXL files; the
    ``string_to_param`` prefix is kept so A1111's layout wins over stray tensors."""
    ops: list[tuple[str, object]] = []
    try:
        _read_pickle(path, set(), ops)
    except Exception:  # check_weights_file already refused unreadable files
        pass
    shapes: dict[str, list[int]] = {}
    in_params = False
    last_key = ""
    i = 0
    while i < len(ops):
        name, arg = ops[i]
        if name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8"):
            in_params = in_params or arg == "string_to_param"
            if arg not in ("storage", "cpu") and not str(arg).isdigit():
                last_key = str(arg)
        elif name == "BINPERSID":
            ints: list[int] = []
            j = i + 1
            while j < len(ops) and ops[j][0] not in _TUPLES:
                if ops[j][0] in _INTS:
                    ints.append(int(ops[j][1]))  # type: ignore[arg-type]
                j += 1
            key = f"string_to_param.{last_key}" if in_params else last_key
            shapes[key if key not in shapes else f"{key}#{len(shapes)}"] = ints[1:]
            i = j
        i += 1
    return shapes


# --------------------------------------------------------------------------------- tokenizer


@functools.cache
def clip_tokenizer(folder: str = str(CLIP_FILES)):
    """CLIP's BPE over ``vocab.json`` + ``merges.txt``, set up as transformers 5 sets up
    ``CLIPTokenizer`` (NFC, whitespace runs to one space, lower case, CLIP's word regex,
    byte-level BPE with ``</w>``), so the ids equal the renderer's tokenizer's ids."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
    lines = (Path(folder) / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
    bpe = BPE(
        vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
        fuse_unk=False, unk_token="<|endoftext|>",
    )  # fmt: skip
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words = (
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
        r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])  # as transformers adds them
    return tok


def tokenize(texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without BOS/EOS (A1111's ``tokenize``)."""
    return [list(_ids(t)) for t in texts]


@functools.lru_cache(maxsize=1 << 16)
def _ids(text: str) -> tuple[int, ...]:
    return tuple(clip_tokenizer().encode(text, add_special_tokens=False).ids)


def comma_id() -> int:
    return clip_tokenizer().token_to_id(",</w>")


def build_lookup(
    names_vectors: Mapping[str, int], tokenize_fn: Callable[[list[str]], list[list[int]]]
) -> EmbeddingLookup:
    """A1111's ``ids_lookup``: first token id -> [(ids, name, vectors)], longest first."""
    names = list(names_vectors)
    lookup: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}
    for name, ids in zip(names, tokenize_fn(names), strict=True):
        if ids:
            lookup.setdefault(ids[0], []).append((tuple(ids), name, names_vectors[name]))
    for entries in lookup.values():
        entries.sort(key=lambda e: len(e[0]), reverse=True)
    return lookup


# ----------------------------------------------------------------------------------- resolving


def _squash(text: str) -> str:
    """Lower case without whitespace or emphasis brackets: a stem whose tokens occur in a
    text occurs in the text's squashed form, so this cheaply skips files no prompt names."""
    text = unicodedata.normalize("NFC", text).lower()
    text = re.sub(r":\s*[+-]?[.\d]+\s*\)", "", text)
    return re.sub(r"[\s()\[\]\\]+", "", text)


_LISTINGS: dict[tuple, list[tuple[str, str, Path]]] = {}  # folders and their stamps -> files


def _stamp(roots: list[Path]) -> tuple:
    """The folders' mtimes: a file added, removed or renamed at their top level changes them.
    A1111 reloads its embeddings on the same signal (a change deeper down waits for the next
    process, there as here)."""
    out = []
    for root in roots:
        try:
            out.append(os.stat(root).st_mtime_ns)
        except OSError:
            out.append(None)
    return tuple(out)


def _listing(folders: Mapping[str, object] | None) -> list[tuple[str, str, Path]]:
    """(stem, squashed stem, file) of every embedding file, listed once per folder state: a
    plan asks once per prompt and model."""
    from sdbatch.plan.model_folders import folders_of

    roots = folders_of("embeddings", folders)
    if not roots:
        return []
    key = (tuple(map(str, roots)), _stamp(roots))
    if key not in _LISTINGS:
        if len(_LISTINGS) > 16:
            _LISTINGS.clear()
        rows, seen = [], set()
        for rel, path in list_files("embeddings", folders).items():
            stem = rel.rsplit("/", 1)[-1]
            if stem not in seen:  # A1111 names by stem; of two files, the first found wins
                seen.add(stem)
                rows.append((stem, _squash(stem), path))
        _LISTINGS[key] = rows
    return _LISTINGS[key]


def candidates(texts: list[str], folders: Mapping[str, object] | None) -> dict[str, Path]:
    """Stem -> file for embedding files whose stem could be a word of ``texts``."""
    rows = _listing(folders)
    if not rows:
        return {}
    squashed = [_squash(t) for t in texts]
    return {stem: path for stem, key, path in rows if key and any(key in t for t in squashed)}


def used_names(text: str, lookup: EmbeddingLookup) -> list[str]:
    """The embeddings ``text`` uses, in order of first use, chunked as the renderer chunks."""
    from sdbatch.plan.prompts import CHUNK_LEN, COMMA_BACKTRACK

    chunks = chunk_tokens(
        parse_attention(text), tokenize, comma_id(), CHUNK_LEN, COMMA_BACKTRACK, embeddings=lookup
    )
    return list(dict.fromkeys(name for c in chunks for _, name in c.fixes))


def embedding_hash(path: str | Path) -> str:
    """A1111's ``Embedding.shorthash``: the file's sha256, first 12 hex digits (remembered in
    this process by path, size and mtime; on disk by the sha256 cache)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = cached_sha256(path)[:12]
    return _HASHES[key]


_HASHES: dict[tuple, str] = {}


_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")  # <lora:...>: A1111 removes these before tokenizing
_WARNED: set[tuple[str, str]] = set()  # (file, family) already warned about in this process


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def text_width(model: object | None, family: str) -> int | None:
    """The model's token width as A1111's ``get_expected_shape`` measures it: the hidden sizes
    of its text encoders (a diffusers folder's, or a single file's config folder), summed;
    else the family's."""
    path = getattr(model, "path", None)
    folder = Path(path) if path and Path(path).is_dir() else None
    if folder is None and getattr(model, "config", None):
        folder = Path(model.config)  # type: ignore[attr-defined]
    if folder is None:
        folder = SHIPPED_CONFIGS.get(family)
    widths = []
    for sub in ("text_encoder", "text_encoder_2"):
        try:
            config = json.loads((folder / sub / "config.json").read_text(encoding="utf-8"))
            widths.append(int(config["hidden_size"]))
        except (OSError, TypeError, ValueError, KeyError):
            continue
    return sum(widths) if widths else FAMILY_WIDTH.get(family)


def resolve_embeddings(
    prompt: str,
    negative: str,
    family: str,
    folders: Mapping[str, object] | None,
    allow_pickle: bool,
    model: object | None = None,
    warned: set[tuple[str, str]] | None = None,
) -> list[tuple[str, str, str]]:
    """(name, path, hash) of each embedding ``prompt`` or ``negative`` uses on ``model`` (a
    ``family`` model). Files of another width are skipped with one warning line each
    (``warned`` keeps a process from repeating it), as A1111 skips them; unreadable files and
    refused pickles are RecipeErrors."""
    warned = _WARNED if warned is None else warned
    prompt, negative = _NETWORK_TAG.sub("", prompt), _NETWORK_TAG.sub("", negative)
    found = candidates([prompt, negative], folders)
    if not found:
        return []
    width = text_width(model, family)
    usable: dict[str, EmbeddingFile] = {}
    skipped: dict[str, EmbeddingFile] = {}
    for stem, path in found.items():
        field = "prompt" if _squash(stem) in _squash(prompt) else "negative_prompt"
        info = read_embedding(path, field, allow_pickle)
        (usable if width is None or info.width == width else skipped)[stem] = info
    for stem in _used(prompt, negative, skipped):  # only words that A1111 would have replaced
        info = skipped[stem]
        if (info.path, str(width)) not in warned:
            made_for = FAMILY_NAMES.get(info.family() or "", "another model")
            warn(
                f"embedding {stem} ({info.path}) is for {made_for} (vectors of width "
                f"{info.width}; this {FAMILY_NAMES.get(family, family)} model takes "
                f"{width}): skipped, the word stays text"
            )
            warned.add((info.path, str(width)))
    return [
        (n, usable[n].path, embedding_hash(usable[n].path)) for n in _used(prompt, negative, usable)
    ]


def _used(prompt: str, negative: str, files: Mapping[str, EmbeddingFile]) -> list[str]:
    if not files:
        return []
    lookup = build_lookup({s: e.vectors for s, e in files.items()}, tokenize)
    return list(dict.fromkeys([*used_names(prompt, lookup), *used_names(negative, lookup)]))


def infotext_name(name: str) -> str:
    """A1111 drops ':' and ',' from a name in ``TI hashes``."""
    return name.replace(":", "").replace(",", "")


# ------------------------------------------------------------------------------------- replay


def find_embedding(
    name: str, want: str, folders: Mapping[str, object] | None = None, env=None
) -> tuple[str | None, str]:
    """The word a ``TI hashes`` entry is in the embeddings folder: the stem of the file with
    that hash (the file of that name is tried first), else the file of that name. (stem or
    None, a note for the user when the match is not exact, else "")."""
    from sdbatch.plan.model_folders import folders_of

    roots = folders_of("embeddings", folders, env)
    if not roots:
        return (
            None,
            "no embeddings folder is set (folders.embeddings, SDBATCH_EMBEDDINGS or SDBATCH_A1111)",
        )
    files = list_files("embeddings", folders, env)
    by_stem: dict[str, Path] = {}
    for rel, path in files.items():
        by_stem.setdefault(rel.rsplit("/", 1)[-1], path)
    named = by_stem.get(name) or next(
        (p for s, p in by_stem.items() if s.lower() == name.lower()), None
    )

    def short(path: Path) -> str:
        try:
            return embedding_hash(path)
        except OSError:
            return ""

    if named is not None and short(named) == want:
        return Path(named).stem, ""
    for stem, path in by_stem.items():
        if path != named and short(path) == want:
            return stem, f"found by its hash as {stem!r}"
    if named is not None:
        return Path(named).stem, f"found by name, but its hash is {short(named)}"
    where = " or ".join(str(r) for r in roots)
    return None, f"no file with that hash or name in {where}; the word stays text"
