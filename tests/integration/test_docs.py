"""The docs run: every command, script and query in them is executed, so they cannot drift.

The extractor reads any list of Markdown files (``DOC_FILES``: README.md and docs/**/*.md) and
sorts each fenced code block by what it is:

- ``console`` blocks, or untagged blocks whose first line starts with ``$ ``: each ``$ `` line
  is a command (a trailing ``\\`` continues it), the lines up to the next ``$ `` are its
  documented output. The commands run in order in one ``bash``, so ``$ echo $?`` works; the
  output must match what the command prints (stdout and stderr together), after masking what
  changes from run to run (``VOLATILE``: clock times, durations, rates). In the documented
  output a line ``...`` (or ``…``) stands for any number of lines, and ``...`` inside a line for
  any text. A command with no documented output must exit 0; one whose output shows an
  ``error:`` line, or that is followed by ``$ echo $?``, must not.
- ``bash``/``sh``/``shell`` blocks, and untagged blocks that start with a command (a name in
  ``COMMANDS`` or a ``.venv/bin/`` path, after any ``VAR=value``): one script, which must exit 0.
- ``python`` blocks run in a subprocess; a block that leaves a table with no rows in a
  variable (anything with ``num_rows == 0``) fails, since an example that finds nothing has
  drifted.
- ``sql`` blocks run in duckdb and must return at least one row.
- ``yaml`` blocks must parse. A block whose first line is ``# PATH``, naming a file of the
  repository, shows that file: the rest of the block must be its text (for YAML: a subset of
  its keys and values). So ``docs/examples/`` files and the docs cannot disagree.
- Anything else (``text``, ``ini`` without a ``# PATH`` line, untagged output) is not run.

Two markers, an HTML comment on the line right before the fence, change that; both need a
reason, and the test prints it (a skip reason, or a ``DocsNotRun`` warning):

    <!-- docs: skip (installs packages) -->
    <!-- docs: syntax-only (renders 80 images, about 20 s) -->

``syntax-only`` checks a shell block with ``bash -n`` (a console block: its commands) and runs
nothing; use it for blocks that take minutes or need what a test machine lacks (a GPU, Slurm,
your checkpoints). ``skip`` does nothing at all.

Where the blocks run: each ``##`` section of a file starts in a fresh temporary folder holding a
copy of ``outputs/`` as ``WORLD`` leaves it (the recipes below, rendered once per session) and a
``.venv`` link to this environment, so ``.venv/bin/sdbatch`` means what the docs say; the
blocks of one section share that folder in document order, as a reader following along would.
``HOME`` is a temporary folder too, and each process gets one torch thread (sections run side by
side, the slowest first). Text substitutions are kept to ``SUBSTITUTIONS``, each with its
reason. ``extract(path)`` reads any Markdown file; ``DOC_FILES`` takes every page under docs/.

The site: ``mkdocs build --strict`` (what ``make docs`` runs) must build ``mkdocs.yml`` without a
warning (a broken link or anchor, a page missing from ``nav``); the README's own links, which
mkdocs does not see, must lead to files and headings that exist; and docs/configuration.md
must list every key of the schema's dataclasses with its default.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, ROOT, sdbatch_env

VENV = BIN.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLES = ROOT / "docs" / "examples"

# What the docs' example output folders hold: the commands that make them, run once per
# session from an empty folder. The docs' examples read these (Manifest tools says which
# sweep; the infotext and replay examples name a file of outputs/quick).
WORLD = [
    ["sdbatch", "+recipe=quick"],
    ["sdbatch", "-m", "+recipe=hair_styles", "cfg=5,9", "steps=2", "seeds.count=1"],
    ["sdbatch", "+recipe=cfg_sweep", "steps=2", "seeds=1"],
]
# (old, new, why): applied to every block before it runs.
SUBSTITUTIONS = [
    (
        "outputs/hair_styles/manifest",
        "outputs/hair_styles/multirun/cfg=5,seeds.count=1,steps=2/manifest",
        "the hair_styles examples are rendered once, as the two-job sweep that Manifest tools"
        " reads; a single run's manifest is one job folder of it",
    ),
]
# Untagged blocks whose first word is one of these (or a .venv/bin/ path) are commands.
COMMANDS = {
    "sdbatch", "sdbatch-tools", "make", "pip", "python", "python3", "pytest", "cd", "cat", "echo",
    "rm", "ls", "cp", "mv", "mkdir", "export", "source", "systemctl", "journalctl", "crontab",
    "loginctl", "duckdb", "git", "nohup", "tmux", "sbatch", "srun", "squeue",
}  # fmt: skip
# The commands the install sections (README, docs/index.md) say to call from .venv/bin/.
VENV_COMMANDS = ("sdbatch", "sdbatch-tools", "python", "pip", "pytest", "ruff")
# Masked in documented and actual output alike: what differs between two runs of one command,
# and sha256s of PNG bytes (pixels may round differently on another CPU; job ids do not).
VOLATILE = [
    (re.compile(r"\b[0-9a-f]{64}\b"), "<sha256>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?( ?UTC|[+-]\d\d:\d\d|Z)?"), "<time>"),
    (re.compile(r"\d+(\.\d+)? ?(images|img)/s"), "<rate>"),
    (re.compile(r"\b(\d+h)?(\d+m)?\d+(\.\d+)?(ms|s)\b"), "<duration>"),
]
MARKER = re.compile(r"^\s*<!--\s*docs:\s*(?P<kind>[\w-]+)\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
ELLIPSIS = ("...", "…")


class DocsNotRun(UserWarning):
    """A docs block that is only syntax-checked, with the reason."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    section: str
    mark: str | None = None
    reason: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        lang = self.lang.lower()
        if lang == "console":
            return "console"
        if lang in ("bash", "sh", "shell"):
            return "console" if first_line(self.text).startswith("$ ") else "shell"
        if lang in ("python", "py"):
            return "python"
        if lang == "sql":
            return "sql"
        if lang in ("yaml", "yml"):
            return "yaml"
        if shows_file(self) is not None:
            return "file"
        if lang == "":
            line = first_line(self.text, skip_comments=True)
            if line.startswith("$ "):
                return "console"
            if is_command(line):
                return "shell"
        return "text"


def first_line(text: str, skip_comments: bool = False) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not (skip_comments and stripped.startswith("#")):
            return stripped
    return ""


def is_command(line: str) -> bool:
    words = line.split()
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
        words = words[1:]  # VAR=value prefixes
    return bool(words) and (words[0] in COMMANDS or words[0].startswith(".venv/bin/"))


def shows_file(block: Block) -> Path | None:
    """The repository file a block shows, named by a ``# PATH`` first line."""
    lines = block.text.splitlines()
    m = re.fullmatch(r"#\s*(\S+)", lines[0].strip()) if lines else None
    if m and "/" in m.group(1) and (ROOT / m.group(1)).is_file():
        return ROOT / m.group(1)
    return None


def extract(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with the marker before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = FENCE.match(line)
        if not m:
            i += 1
            continue
        indent, fence = len(m.group("indent")), m.group("fence")
        body, j = [], i + 1
        while j < len(lines):
            close = re.match(r"^[ \t]*(`{3,}|~{3,})\s*$", lines[j])
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mark = MARKER.match(prev)
        if prev.strip().startswith("<!-- docs") and not mark:
            raise ValueError(f"{path}:{i}: cannot read the docs marker {prev.strip()!r}")
        lang = m.group("info").split()[0] if m.group("info") else ""
        blocks.append(
            Block(
                path, i + 1, lang, "\n".join(body) + "\n", section,
                mark.group("kind") if mark else None,
                (mark.group("reason") or "").strip() if mark else None,
            )
        )  # fmt: skip
        i = j + 1
    return blocks


BLOCKS = [b for path in DOC_FILES for b in extract(path)]
RUNNABLE = [b for b in BLOCKS if b.kind != "text"]


# ---- running ---------------------------------------------------------------------------------


@dataclass
class Command:
    text: str
    expected: list[str]
    output: str = ""
    rc: int | None = None


@dataclass
class Result:
    commands: list[Command] = field(default_factory=list)
    output: str = ""
    rc: int | None = None
    seconds: float = 0.0


def substitute(text: str) -> str:
    for old, new, _why in SUBSTITUTIONS:
        text = text.replace(old, new)
    return text


def console_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            cmd = [line[2:]]
            while cmd[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
            commands.append(Command("\n".join(cmd), []))
        elif commands:
            commands[-1].expected.append(line)
        i += 1
    return commands


def doc_env(home: Path) -> dict:
    # One thread per process: the blocks run side by side, and torch's threads of several
    # processes on two cores wait on each other (5x slower under load).
    env = sdbatch_env(HOME=str(home), HF_HOME=str(home / ".cache" / "huggingface"),
                      OMP_NUM_THREADS="1")  # fmt: skip
    env["SDBATCH_CACHE"] = str(home.parent / "sdbatch-cache")
    env.pop("SDBATCH_RECIPES", None)
    return env


def run_console(block: Block, cwd: Path, env: dict) -> Result:
    commands = console_commands(substitute(block.text))
    script = ["__rc=0"]  # each command sees the exit code of the one before it, as $?
    for n, c in enumerate(commands):
        script += [f"printf '\\n@@docs-cmd {n}\\n'; (exit $__rc)", c.text,
                   f"__rc=$?; printf '\\n@@docs-rc {n} %s\\n' $__rc"]  # fmt: skip
    res = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=env, timeout=300,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for n, c in enumerate(commands):
        m = re.search(rf"\n@@docs-cmd {n}\n(.*?)\n@@docs-rc {n} (\d+)\n", res.stdout, re.DOTALL)
        if m:
            c.output, c.rc = m.group(1), int(m.group(2))
    return Result(commands, res.stdout, res.returncode)


PY_EPILOGUE = """
import sys as _docs_sys
_docs_empty = [_n for _n, _v in list(globals().items()) if not _n.startswith("_")
               and not isinstance(_v, type) and getattr(_v, "num_rows", None) == 0]
if _docs_empty:
    _docs_sys.exit(f"these hold no rows: {', '.join(_docs_empty)} (the example finds nothing)")
"""
SQL_RUNNER = """
import sys, duckdb
rel = duckdb.sql(sys.stdin.read())
rows = rel.fetchall()
print(rel)
sys.exit(0 if rows else "the query returns no rows")
"""


def run_block(block: Block, cwd: Path, env: dict) -> Result:
    start = time.monotonic()
    text = substitute(block.text)
    if block.kind == "console":
        result = run_console(block, cwd, env)
    else:
        if block.kind == "shell":
            argv, stdin = ["bash", "-e", "-c", text], None
        elif block.kind == "python":
            argv, stdin = [sys.executable, "-c", text + PY_EPILOGUE], None
        elif block.kind == "sql":
            argv, stdin = [sys.executable, "-c", SQL_RUNNER], text
        else:
            raise AssertionError(block.kind)
        res = subprocess.run(argv, cwd=cwd, env=env, input=stdin, timeout=300, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        result = Result([], res.stdout, res.returncode)
    result.seconds = time.monotonic() - start
    return result


def executes(block: Block) -> bool:
    return block.mark is None and block.kind in ("console", "shell", "python", "sql")


def run_world(root: Path, env: dict) -> None:
    """Render the example outputs, the WORLD commands side by side."""
    root.mkdir(parents=True)
    procs = [
        subprocess.Popen([str(BIN / cmd[0]), *cmd[1:], "run.progress=false"], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in WORLD
    ]  # fmt: skip
    for cmd, proc in zip(WORLD, procs, strict=True):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{out}"


def run_section(blocks: list[Block], world: Path, where: Path, env: dict) -> dict:
    where.mkdir(parents=True)
    shutil.copytree(world / "outputs", where / "outputs", symlinks=True)
    (where / ".venv").symlink_to(VENV, target_is_directory=True)
    # the example A1111 tree (LoRA, embeddings) the Extra networks page points folders.a1111 at
    (where / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    results = {}
    for block in blocks:
        results[block] = run_block(block, where, env)
    return results


def section_cost(blocks: list[Block]) -> int:
    """A rough guess of a section's run time, to start the slow ones first: a run of sdbatch
    that renders loads torch and the model; a dry run or bad input stops early; a tools command
    starts at once."""
    cost = 0
    for block in blocks:
        if block.kind != "console":
            cost += 3 if block.kind == "python" else 1
            continue
        for c in console_commands(block.text):
            if not re.search(r"\.venv/bin/sdbatch\s", c.text):
                cost += 1
            elif "run.dry_run=true" in c.text or any(x.startswith("error:") for x in c.expected):
                cost += 3
            else:
                cost += 8
    return cost


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=3) as executor:
        yield executor


@pytest.fixture(scope="module")
def ran(request, tmp_path_factory, pool) -> dict[Block, Future]:
    """Runs the blocks of the selected tests once, sections side by side: block -> Future."""
    selected = {
        item.callspec.params["block"]
        for item in request.session.items
        if "block" in getattr(getattr(item, "callspec", None), "params", {})
    }
    tmp = tmp_path_factory.mktemp("docs")
    home = tmp / "home"
    home.mkdir()
    env = doc_env(home)
    world = tmp / "world"
    sections: dict[tuple[Path, str], list[Block]] = {}
    for block in RUNNABLE:
        if executes(block) and block in selected:
            sections.setdefault((block.path, block.section), []).append(block)
    futures: dict[Block, Future] = {}
    if not sections:
        return futures
    world_done = pool.submit(run_world, world, env)

    def section_job(n: int, blocks: list[Block]) -> dict:
        world_done.result()
        return run_section(blocks, world, tmp / f"section{n}", env)

    # The slowest sections first (a run of sdbatch loads torch and often the model; a tools
    # command starts at once), so that a long one does not start last and run alone.
    for n, blocks in enumerate(sorted(sections.values(), key=section_cost, reverse=True)):
        fut = pool.submit(section_job, n, blocks)
        for block in blocks:
            futures[block] = fut
    return futures


# ---- checking --------------------------------------------------------------------------------


def mask(text: str) -> str:
    for pattern, repl in VOLATILE:
        text = pattern.sub(repl, text)
    return text


def clean(output: str) -> list[str]:
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in output.strip("\n").splitlines()]
    return [mask(line) for line in lines]


def output_matches(expected: list[str], actual: list[str]) -> bool:
    parts = []
    for line in expected:
        line = mask(line.rstrip())
        if line.strip() in ELLIPSIS:
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = re.split(r"\.\.\.|…", line)
        parts.append("[^\n]*".join(re.escape(p) for p in pieces) + r"\n")
    text = "".join(f"{mask(line)}\n" for line in actual)
    return re.fullmatch("".join(parts), text) is not None


def check_console(block: Block, result: Result) -> None:
    problems = []
    commands = result.commands
    for n, c in enumerate(commands):
        if c.rc is None:
            problems.append(
                f"$ {c.text}\n  did not finish; output so far:\n{result.output[-2000:]}"
            )
            break
        expected = [line for line in c.expected]
        while expected and not expected[-1].strip():
            expected.pop()
        next_is_echo = n + 1 < len(commands) and commands[n + 1].text.strip() == "echo $?"
        should_fail = next_is_echo or any(line.startswith("error:") for line in expected)
        if should_fail and c.rc == 0:
            problems.append(f"$ {c.text}\n  exited 0; the docs show it failing")
        if not should_fail and c.rc != 0:
            problems.append(f"$ {c.text}\n  exited {c.rc}:\n{c.output[-2000:]}")
        elif expected and not output_matches(expected, clean(c.output)):
            problems.append(
                f"$ {c.text}\n  documented:\n    "
                + "\n    ".join(expected)
                + "\n  printed:\n    "
                + "\n    ".join(c.output.strip("\n").splitlines())
            )
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


def syntax_check(block: Block) -> None:
    if block.kind in ("console", "shell"):
        if block.kind == "console":
            script = "\n".join(c.text for c in console_commands(block.text))
        else:
            script = block.text
        res = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert res.returncode == 0, f"{block.where}: bash -n: {res.stderr}"
    elif block.kind == "python":
        compile(block.text, block.where, "exec")


def check_file_block(block: Block) -> None:
    path = shows_file(block)
    assert path is not None
    shown = block.text.split("\n", 1)[1]
    if block.kind == "yaml":
        assert_subset(yaml.safe_load(shown), yaml.safe_load(path.read_text()), block.where)
    else:
        assert shown.strip("\n") == path.read_text().strip("\n"), (
            f"{block.where} shows {path.relative_to(ROOT)} but differs from it"
        )


def assert_subset(shown, actual, where: str, key: str = "") -> None:
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: {key or 'the block'} is not a mapping"
        for k, v in shown.items():
            assert k in actual, f"{where}: {key}{k} is not in the file"
            assert_subset(v, actual[k], where, f"{key}{k}.")
    else:
        assert shown == actual, (
            f"{where}: {key.rstrip('.')}: {shown!r} shown, {actual!r} in the file"
        )


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[f"{b.where}-{b.kind}" for b in RUNNABLE])
def test_block(block: Block, ran) -> None:
    if block.mark == "skip":
        pytest.skip(f"{block.where}: {block.reason}")
    if block.mark == "syntax-only":
        syntax_check(block)
        warnings.warn(DocsNotRun(f"{block.where}: syntax only: {block.reason}"), stacklevel=1)
        return
    if block.kind == "yaml":
        if shows_file(block) is not None:
            check_file_block(block)
        else:
            yaml.safe_load(block.text)
        return
    if block.kind == "file":
        check_file_block(block)
        return
    if block.kind == "sql":
        pytest.importorskip("duckdb", reason="the sql blocks run in duckdb (the test extra)")
    result = ran[block].result()[block]
    print(f"{block.where}: {result.seconds:.1f}s")
    if block.kind == "console":
        check_console(block, result)
    else:
        assert result.rc == 0, f"{block.where} ({block.kind}) exited {result.rc}:\n{result.output}"


def test_the_docs_say_how_their_example_outputs_are_made() -> None:
    """The Manifest tools examples name the sweep they read; it is the one WORLD renders."""
    sweep = " ".join([".venv/bin/sdbatch", *WORLD[1][1:]])
    assert any(sweep in path.read_text(encoding="utf-8") for path in DOC_FILES), sweep


def test_every_marker_names_a_known_kind_and_a_reason() -> None:
    for block in BLOCKS:
        if block.mark is not None:
            assert block.mark in ("skip", "syntax-only"), f"{block.where}: {block.mark}"
            assert block.reason, f"{block.where}: a docs marker needs a reason in brackets"
            assert block.kind in ("console", "shell", "python"), (
                f"{block.where}: only commands and scripts take a docs marker ({block.kind})"
            )


def test_commands_are_called_as_the_install_section_says() -> None:
    """The docs install into .venv/, so their commands say .venv/bin/sdbatch, not sdbatch."""
    bare = re.compile(rf"(?:^|[\s;&|(]|\$ )(?<![/\w.-])({'|'.join(VENV_COMMANDS)})(?=\s|$)")
    problems = []
    for block in RUNNABLE:
        if block.mark == "skip":
            continue
        if block.kind == "console":
            texts = [c.text for c in console_commands(block.text)]
        elif block.kind == "shell":
            texts = [line.split(" #", 1)[0] for line in block.text.splitlines()]
        else:
            continue
        for text in texts:
            for m in bare.finditer(text):
                problems.append(f"{block.where}: {m.group(1)!r} in {text.strip()!r}")
    assert not problems, "\n".join(problems)


def test_concrete_queries_are_blocks_that_run() -> None:
    """SQL written inline against a real path would not run; it belongs in a ``sql`` block."""
    inline = re.compile(r"`([^`\n]*\bread_parquet\('outputs/[^`\n]*)`")
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in inline.finditer(text):
            found.append(f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}")
    assert not found, "inline queries: " + ", ".join(found)


def test_the_extractor_reads_markers_blocks_and_sections(tmp_path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "# T\n\n## One\n\n<!-- docs: syntax-only (takes minutes) -->\n```\n"
        ".venv/bin/sdbatch +recipe=big\n```\n\n- item:\n\n  ```\n  $ echo hi\n  hi\n  ```\n\n"
        "## Two\n\n```python\nprint(1)\n```\n\n```\nerror: not a command\n```\n"
    )
    got = [(b.line, b.kind, b.section, b.mark, b.reason) for b in extract(doc)]
    assert got == [
        (6, "shell", "One", "syntax-only", "takes minutes"),
        (12, "console", "One", None, None),
        (19, "python", "Two", None, None),
        (23, "text", "Two", None, None),
    ]
    (console,) = [b for b in extract(doc) if b.kind == "console"]
    assert [(c.text, c.expected) for c in console_commands(console.text)] == [("echo hi", ["hi"])]
    assert output_matches(["a", "...", "done in 1.5s"], ["a", "x", "y", "done in 2.0s"])
    assert output_matches(["file:///.../index.html"], ["file:///tmp/q/index.html"])
    assert output_matches(
        ["span: 2026-11-25 03:12:39 UTC (32.3s)"], ["span: 2026-12-03 09:30:59 UTC (1m11s)"]
    )
    assert not output_matches(["Steps: 2"], ["Steps: 8"])


# ---- the site (mkdocs.yml, docs/) --------------------------------------------------------------

CONFIG_PAGE = ROOT / "docs" / "configuration.md"


@pytest.mark.slow
def test_the_site_builds_without_warnings(tmp_path) -> None:
    """``make docs`` as the test runs it: ``mkdocs build --strict`` (a broken link or anchor, or a
    page left out of ``nav``, is a warning, and a warning fails the build), into a temp folder."""
    pytest.importorskip("material", reason="mkdocs-material builds the site (the test extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's end-of-life notice
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "WARNING" not in out, out
    for page in sorted((ROOT / "docs").rglob("*.md")):
        name = page.relative_to(ROOT / "docs").with_suffix("")
        html = tmp_path / "site" / ("index.html" if name.name == "index" else name / "index.html")
        assert html.is_file(), f"{page.relative_to(ROOT)} was not built"


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc (mkdocs) makes it; GitHub's agrees for plain
    headings, which are the ones the README links to."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", text, re.M)}


def test_the_readme_links_lead_to_files_that_exist() -> None:
    """The README is read on its own (on a forge, on PyPI): its links to docs/ are plain paths,
    so mkdocs does not check them; this does, anchors included."""
    problems = []
    for m in re.finditer(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text(encoding="utf-8")):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{target}: no heading #{anchor} in {path or 'README.md'}")
    assert not problems, "\n".join(problems)


def schema_keys(cls: type, prefix: str = "") -> dict[str, tuple[str, object]]:
    """Every key of the schema's dataclasses, dotted: (annotation, default)."""
    from dataclasses import MISSING, fields, is_dataclass

    keys: dict[str, tuple[str, object]] = {}
    for f in fields(cls):
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            keys.update(schema_keys(f.default_factory, f"{prefix}{f.name}."))
        else:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            keys[f"{prefix}{f.name}"] = (str(f.type), default)
    return keys


def config_rows() -> dict[str, tuple[str, str]]:
    """The configuration page's key tables: key -> (type, default) as written."""
    rows = {}
    for line in CONFIG_PAGE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


TYPE_WORDS = {"str": ["str"], "int": ["int"], "float": ["float", "number"], "bool": ["bool"],
              "None": ["null"], "dict": ["map"], "list": ["list"]}  # fmt: skip


def test_the_configuration_page_lists_every_key_with_its_default() -> None:
    """docs/configuration.md against the schema's dataclasses (and the keys a grids: entry
    takes): the same keys, each default as the dataclass has it, a type that says the same."""
    from sdbatch.plan.schema import SdbatchConfig
    from sdbatch.views.grid import GRID_KEYS

    schema = schema_keys(SdbatchConfig)
    rows = config_rows()
    documented = {k for k in rows if not k.startswith("grids[].")}
    assert documented == set(schema), (
        f"not on the page: {sorted(set(schema) - documented)}; "
        f"not in the schema: {sorted(documented - set(schema))}"
    )
    assert {k.removeprefix("grids[].") for k in rows if k.startswith("grids[].")} == GRID_KEYS
    problems = []
    for key, (annotation, default) in schema.items():
        typ, shown = rows[key]
        value = yaml.safe_load(shown.strip("`"))
        if value != default or isinstance(value, bool) != isinstance(default, bool):
            problems.append(f"{key}: default {shown} on the page, {default!r} in the schema")
        for word in re.findall(r"\w+", re.sub(r"\[.*\]", "", annotation)):
            if word != "Any" and not any(w in typ for w in TYPE_WORDS[word]):
                problems.append(f"{key}: type {typ!r} on the page, {annotation} in the schema")
    assert not problems, "\n".join(problems)


# ---- the overnight examples (docs/examples/) -----------------------------------------------

CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cron_entries(text: str) -> list[tuple[list[str], str]]:
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue  # an environment setting
        fields = line.split(None, 5)
        assert len(fields) == 6, f"not 5 time fields and a command: {line!r}"
        entries.append((fields[:5], fields[5]))
    return entries


def check_cron_field(value: str, low: int, high: int) -> None:
    for part in value.split(","):
        rng, _, step = part.partition("/")
        assert not step or step.isdigit() and int(step) > 0, value
        if rng == "*":
            continue
        ends = rng.split("-")
        assert 1 <= len(ends) <= 2 and all(e.isdigit() for e in ends), value
        assert all(low <= int(e) <= high for e in ends), f"{value} outside {low}-{high}"


def test_the_crontab_line_parses() -> None:
    (entry,) = cron_entries((EXAMPLES / "sdbatch-nightly.crontab").read_text())
    fields, command = entry
    for value, (low, high) in zip(fields, CRON_FIELDS, strict=True):
        check_cron_field(value, low, high)
    assert fields[:2] == ["0", "22"], "starts at 22:00"
    assert "%" not in command, "cron turns % into a newline"
    assert "run.deadline=07:00" in command
    res = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_systemd_units_verify(tmp_path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    home = tmp_path / "home"
    (home / "sdbatch").mkdir(parents=True)
    (home / "sdbatch" / ".venv").symlink_to(VENV, target_is_directory=True)
    units = tmp_path / "units"
    units.mkdir()
    for name in ["sdbatch-nightly.service", "sdbatch-nightly.timer"]:
        shutil.copy(EXAMPLES / name, units / name)
    runtime = tmp_path / "run"  # a user manager needs a runtime folder, even to verify
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    res = subprocess.run(
        [analyze, "--user", "verify", str(units / "sdbatch-nightly.timer"),
         str(units / "sdbatch-nightly.service")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    if "Failed to initialize manager" in res.stderr:
        pytest.skip(f"systemd-analyze --user cannot run here: {res.stderr.strip()}")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr + res.stdout


def unit(name: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (EXAMPLES / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def local_clock(hh: int, mm: int) -> str:
    """A TZ value under which the local clock shows hh:mm now (POSIX offsets: west is +)."""
    now = datetime.now(timezone.utc)
    offset = (now - now.replace(hour=hh, minute=mm, second=0, microsecond=0)) % timedelta(days=1)
    secs = int(offset.total_seconds())
    if secs > 12 * 3600:
        secs -= 24 * 3600
    sign = "+" if secs >= 0 else "-"
    secs = abs(secs)
    return f"<NIGHT>{sign}{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


BIG = """\
# A stand-in for your big recipe: 8 tiny images in 4 batches.
name: big
prompt: [a red circle on a white background, a blue square on a black background]
sampler: Euler a
steps: 2
size: 32x32
seeds: {start: 1, count: 4}
batch_size: 2
"""


def two_nights(tmp_path: Path) -> None:
    """The crontab line and the systemd service, run as written against one folder: the first
    night is over before it starts (the deadline has passed: exit 4, the log says how to go on),
    the next night renders everything (exit 0)."""
    home = tmp_path / "home"
    (home / "sdbatch").mkdir(parents=True)
    (home / "sdbatch" / ".venv").symlink_to(VENV, target_is_directory=True)
    (home / "my_recipes").mkdir()
    (home / "my_recipes" / "big.yaml").write_text(BIG)
    # cron's environment: little more than HOME, a short PATH and /bin/sh
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": "me",
           "HF_HUB_OFFLINE": "1", "SDBATCH_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    (entry,) = cron_entries((EXAMPLES / "sdbatch-nightly.crontab").read_text())
    command = entry[1]
    assert "run.deadline=07:00" in command
    # night 1: a deadline that has already passed (07:00 is always ahead, so say 0s)
    night1 = subprocess.run(["sh", "-c", command.replace("run.deadline=07:00", "run.deadline=0s")],
                            env={**env, "TZ": local_clock(22, 0)}, timeout=300,
                            capture_output=True, text=True)  # fmt: skip
    assert night1.returncode == 0, night1.stderr  # the log line after sdbatch succeeds
    logs = list(home.glob("*.log"))
    assert len(logs) == 1, "the crontab line logs to one file"
    log = logs[0].read_text().splitlines()
    assert log[-2].endswith("0 of 8 done; run the same command to continue"), log
    assert log[-1] == "sdbatch exit code 4", log
    # night 2: the systemd service as written (%h is HOME), at 22:00 local time
    service = unit("sdbatch-nightly.service")
    (workdir,) = service["WorkingDirectory"]
    (start,) = service["ExecStart"]
    senv = dict(env, TZ=local_clock(22, 0))
    for value in service.get("Environment", []):
        k, v = value.split("=", 1)
        senv[k] = v.replace("%h", str(home))
    argv = start.replace("%h", str(home)).split()
    night2 = subprocess.run(argv, cwd=workdir.replace("%h", str(home)), env=senv, timeout=300,
                            capture_output=True, text=True)  # fmt: skip
    assert night2.returncode == 0, night2.stdout + night2.stderr
    assert "done: 8 written, 0 skipped, 0 failed" in night2.stdout
    assert len(list((home / "sdbatch" / "outputs" / "big" / "images").glob("*.png"))) == 8
    # both examples run the same command, and the service's exit codes say what a night means
    assert argv[1:] == command.split(".venv/bin/sdbatch ", 1)[1].split(" >>")[0].split()
    assert service["SuccessExitStatus"] == ["4"]


@pytest.fixture(scope="module")
def nights(request, tmp_path_factory, pool) -> Future | None:
    wanted = any(item.name == "test_the_nightly_example_stops_and_resumes" for item in
                 request.session.items)  # fmt: skip
    return pool.submit(two_nights, tmp_path_factory.mktemp("nights")) if wanted else None


@pytest.fixture(scope="module", autouse=True)
def _started(nights, ran) -> None:
    """Everything slow starts at once, side by side; each test then waits for its own part."""


@pytest.mark.slow
def test_the_nightly_example_stops_and_resumes(nights) -> None:
    nights.result()
