"""A static ``index.html`` gallery of every image under an output folder.

One self-contained file that works from file:// (no server, no network, no external JS/CSS):
the rows are embedded as JSON, filters are built from the data, and cards are rendered a page at
a time so 10,000 images stay responsive. Prompts are untrusted: the script inserts every value
with ``textContent``, the JSON block escapes ``<``, and a Content-Security-Policy that allows
only this page's own script (by hash) blocks inline handlers even if markup slipped through.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from sdbatch.errors import UserError
from sdbatch.outputs.atomic import atomic_file
from sdbatch.outputs.reading import axis_name, distinct, load_rows, show, value

PAGE_SIZE = 200
MAX_OPTIONS = 300  # more distinct values than this: a "contains" box instead of a dropdown
MAX_CAPTION_VARS = 4  # variables that differ between images, shown under each thumbnail
META = ["recipe", "model", "sampler", "steps", "cfg", "seed", "size", "status", "template"]
META += ["overrides"]

CSS = """
body{font:14px system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#fff;padding:8px 12px;border-bottom:1px solid #ccc}
header label{margin-right:10px;white-space:nowrap}
#q{width:20em}
nav{margin-top:6px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px;padding:12px}
.card{position:relative;background:#fff;border:1px solid #ccc;cursor:pointer;padding:4px}
.card:focus{outline:2px solid #36c}
.card img,.ph{width:100%;aspect-ratio:1;object-fit:contain;display:block;background:#ddd}
.ph{display:flex;align-items:center;justify-content:center;color:#fff;font-weight:bold}
.ph.failed,.badge.failed{background:#c82828}.ph.nan,.badge.nan{background:#808080}
.ph.missing,.badge.missing{background:#5a5a5a}
.badge{position:absolute;top:6px;left:6px;color:#fff;padding:1px 6px;border:1px solid #fff}
.cap{font-size:12px;overflow-wrap:anywhere}
.cap.seed{font-weight:600}
.cap.prompt{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;color:#555}
img.px{image-rendering:pixelated}
#detail{position:fixed;inset:0;background:rgba(0,0,0,.75);display:flex;z-index:2}
#detail[hidden]{display:none}
.panel{margin:auto;background:#fff;padding:12px;max-width:95vw;max-height:95vh;overflow:auto}
#full{max-width:90vw;max-height:60vh;min-width:min(256px,90vw);display:block;margin:auto}
#dname{margin:6px 0;overflow-wrap:anywhere}
#infotext{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:8px}
#error{color:#c82828}
"""

JS = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const C = Object.fromEntries(D.cols.map((c, i) => [c, i]));
const FI = Object.fromEntries(D.filters.map((f) => [f.col, f]));
const PH = {failed: "failed", nan: "NaN", missing: "missing"};
const state = {f: {}, q: "", page: 0, shown: [], current: -1};
const $ = (id) => document.getElementById(id);
const get = (r, c) => r[C[c]];
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function kind(r) {
  const st = get(r, "status");
  return st === "ok" && !get(r, "src") ? "missing" : st;
}
function fit(img) {
  // pixelated when the browser draws the image larger than it is (the embedded model's 32x32),
  // smooth when it is shown at its size or smaller
  if (!img.naturalWidth || !img.clientWidth) return;
  const scale = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  img.classList.toggle("px", scale * (window.devicePixelRatio || 1) > 1);
}
function fitAll() { for (const img of document.querySelectorAll("#grid img, #full")) fit(img); }
function buildFilters() {
  const box = $("filters");
  for (const f of D.filters) {
    const lab = el("label", null, f.label + " ");
    let input;
    if (f.options) {
      input = el("select");
      input.append(new Option("all", ""));
      for (const o of f.options) input.append(new Option(o, o));
    } else {
      input = el("input");
      input.type = "search";
      input.placeholder = "contains";
    }
    input.dataset.col = f.col;
    const update = () => {
      if (input.value === "") delete state.f[f.col];
      else state.f[f.col] = input.value;
      state.page = 0;
      apply();
    };
    input.addEventListener("input", update);
    input.addEventListener("change", update);
    lab.append(input);
    box.append(lab);
  }
  $("q").addEventListener("input", () => { state.q = $("q").value; state.page = 0; apply(); });
  $("prev").addEventListener("click", () => { state.page--; render(); });
  $("next").addEventListener("click", () => { state.page++; render(); });
}
function matches(r) {
  for (const col in state.f) {
    const v = String(get(r, col)), want = state.f[col];
    if (FI[col].options ? v !== want : !v.toLowerCase().includes(want.toLowerCase())) return false;
  }
  return !state.q || get(r, "prompt").toLowerCase().includes(state.q.toLowerCase());
}
function apply() {
  state.shown = [];
  D.rows.forEach((r, i) => { if (matches(r)) state.shown.push(i); });
  render();
}
function card(i) {
  const r = D.rows[i], k = kind(r);
  const c = el("div", "card " + k);
  c.tabIndex = 0;
  c.dataset.job = get(r, "job_id");
  c.dataset.status = k;
  c.title = get(r, "prompt");
  if (k === "ok") {
    const img = el("img");
    img.loading = "lazy";
    img.alt = `seed ${get(r, "seed")}, ${get(r, "caption")}`;
    img.addEventListener("load", () => fit(img));
    img.src = get(r, "thumb") || get(r, "src");
    c.append(img);
  } else {
    c.append(el("div", "ph " + k, PH[k] || k));
    c.append(el("span", "badge " + k, PH[k] || k));
  }
  // the seed on its own line and the key values wrapped, never cut; only the prompt is ellipsized
  c.append(el("div", "cap seed", `seed ${get(r, "seed")}`));
  c.append(el("div", "cap keys", get(r, "caption")), el("div", "cap prompt", get(r, "prompt")));
  c.addEventListener("click", () => openDetail(i));
  c.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(i); });
  return c;
}
function render() {
  const n = state.shown.length, pages = Math.max(1, Math.ceil(n / D.page_size));
  state.page = Math.max(0, Math.min(state.page, pages - 1));
  const start = state.page * D.page_size;
  $("grid").replaceChildren(...state.shown.slice(start, start + D.page_size).map(card));
  $("count").textContent = `${n} of ${D.rows.length} images, page ${state.page + 1} of ${pages}`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
}
function openDetail(i) {
  const r = D.rows[i], k = kind(r);
  state.current = i;
  const full = $("full");
  full.hidden = k !== "ok";
  if (k === "ok") full.src = get(r, "src"); else full.removeAttribute("src");
  $("djob").textContent = get(r, "job_id");
  const file = $("dfile");
  file.textContent = get(r, "file") || "(none)";
  if (get(r, "src")) file.href = get(r, "src"); else file.removeAttribute("href");
  $("dstatus").textContent = k === "ok" ? "" : PH[k] || k;
  $("dstatus").className = "badge " + k;
  $("dstatus").hidden = k === "ok";
  $("infotext").textContent = get(r, "infotext") || "";
  $("error").textContent = [get(r, "error"), get(r, "note")].filter(Boolean).join("; ");
  const meta = $("meta");
  meta.replaceChildren();
  for (const f of D.meta) meta.append(el("div", null, `${f.label}: ${get(r, f.col)}`));
  $("copied").textContent = "";
  $("detail").hidden = false;
  $("close").focus();
  if (k === "ok" && full.complete) fit(full);
}
function closeDetail() { $("detail").hidden = true; state.current = -1; }
async function copyInfotext() {
  const text = $("infotext").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    const ta = el("textarea");
    ta.value = text;
    document.body.append(ta);
    ta.select();
    document.execCommand("copy");
    ta.remove();
  }
  $("copied").textContent = "copied";
}
function step(d) {
  const at = state.shown.indexOf(state.current) + d;
  if (at >= 0 && at < state.shown.length) openDetail(state.shown[at]);
}
$("full").addEventListener("load", () => fit($("full")));
window.addEventListener("resize", fitAll);
$("close").addEventListener("click", closeDetail);
$("copy").addEventListener("click", copyInfotext);
$("detail").addEventListener("click", (e) => { if (e.target === $("detail")) closeDetail(); });
document.addEventListener("keydown", (e) => {
  if ($("detail").hidden) return;
  if (e.key === "Escape") closeDetail();
  if (e.key === "ArrowRight") step(1);
  if (e.key === "ArrowLeft") step(-1);
});
buildFilters();
apply();
"""

BODY = """<header><strong>{title}</strong> <span id="stats">{stats}</span>
<div><input id="q" type="search" placeholder="search prompts"> <span id="filters"></span></div>
<nav><button id="prev" type="button">&lsaquo; prev</button> <span id="count"></span>
<button id="next" type="button">next &rsaquo;</button></nav></header>
<main id="grid"></main>
<div id="detail" hidden><div class="panel" role="dialog" aria-modal="true">
<button id="close" type="button">close</button> <span id="dstatus" class="badge" hidden></span>
<div id="dname"><div>Job id: <code id="djob"></code></div>
<div>File: <a id="dfile" target="_blank" rel="noopener"></a></div></div>
<img id="full" alt="full image"><p id="error"></p><pre id="infotext"></pre>
<button id="copy" type="button">copy infotext</button> <span id="copied"></span>
<div id="meta"></div></div></div>"""


def script_json(data: object) -> str:
    """JSON safe inside ``<script>``: no ``<`` (so no ``</script>`` or ``<!--``), ``>``, ``&``."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _url(path: Path, base: Path) -> str:
    return quote(os.path.relpath(os.path.abspath(path), base).replace(os.sep, "/"))


def thumb_name(job_id: str) -> str:
    """``JOB_ID.jpg``; a job id that is not a plain name (a crafted manifest) is hashed, so a
    thumbnail is never written outside ``gallery/``."""
    if re.fullmatch(r"[0-9A-Za-z_-]{1,64}", job_id or ""):
        return f"{job_id}.jpg"
    return f"x{hashlib.sha256(str(job_id).encode()).hexdigest()[:16]}.jpg"


def make_thumbnail(src: Path, dest: Path, size: int) -> bool:
    """A small JPEG beside the gallery; redone only when the image is newer. False when the
    file is not an image Pillow can read (the card then shows the file as it is)."""
    from PIL import Image

    if dest.is_file() and dest.stat().st_mtime >= src.stat().st_mtime:
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            with atomic_file(dest, sync_dir=False) as f:
                im.save(f, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):  # UnidentifiedImageError too
        return False
    return True


def caption(row: dict, varying: list[str]) -> str:
    """The key values under a thumbnail (the seed gets its own line): sampler, CFG, steps and
    the variables that differ between images (``style: bob``)."""
    keys = [show(row["sampler"]), f"CFG {show(row['cfg'])}", f"{show(row['steps'])} steps"]
    return ", ".join(keys + [f"{axis_name(c)}: {show(value(row, c))}" for c in varying])


def gallery_data(rows: list[dict], base: Path, thumbs: int = 0, folder: Path | None = None) -> dict:
    """The JSON the page embeds: columns, rows as lists, filter definitions. ``file`` is each
    image's path relative to ``folder`` (the folder the gallery is of; default ``base``)."""
    var_cols = sorted({f"vars.{k}" for r in rows for k in r["vars"]})
    varying = [c for c in var_cols if len(distinct(rows, c)) > 1][:MAX_CAPTION_VARS]
    meta_cols = META + var_cols
    cols = ["job_id", "src", "thumb", "status", "error", "note", "prompt", "infotext", "caption"]
    cols += ["file"] + meta_cols
    folder = Path(os.path.abspath(folder if folder is not None else base))
    out_rows = []
    for r in rows:
        src = thumb = file = None
        path = Path(r["_root"]) / r["image"] if r.get("image") else None
        if path is not None:
            file = os.path.relpath(os.path.abspath(path), folder).replace(os.sep, "/")
        if r["status"] == "ok" and path is not None and path.is_file():
            src = _url(path, base)
            if thumbs:
                dest = base / "gallery" / thumb_name(r["job_id"])
                thumb = _url(dest, base) if make_thumbnail(path, dest, thumbs) else None
        fixed = [r["job_id"], src, thumb, r["status"], r["error"], r.get("note")]
        fixed += [r["prompt"] or ""]
        fixed += [r["infotext"], caption(r, varying), file]
        out_rows.append(fixed + [show(value(r, c)) for c in meta_cols])
    filters = []
    for c in meta_cols:
        vals = [show(v) for v in distinct(rows, c)]
        if len(vals) > 1 or c == "status":
            options = vals if len(vals) <= MAX_OPTIONS else None
            filters.append({"col": c, "label": axis_name(c), "options": options})
    meta = [{"col": c, "label": axis_name(c)} for c in meta_cols]
    return {
        "cols": cols,
        "rows": out_rows,
        "filters": filters,
        "meta": meta,
        "page_size": PAGE_SIZE,
    }


def render_html(data: dict, title: str) -> str:
    """The whole page; the CSP allows only this page's own script, by its sha256."""
    digest = base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
    csp = (
        "default-src 'none'; img-src file: data: 'self'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    counts: dict[str, int] = {}
    at = data["cols"].index("status")
    for r in data["rows"]:
        counts[r[at]] = counts.get(r[at], 0) + 1
    stats = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    body = BODY.format(title=html.escape(title), stats=html.escape(stats))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
        f'<script type="application/json" id="data">{script_json(data)}</script>\n'
        f"<script>{JS}</script>\n</body></html>\n"
    )


def build_gallery(folder: str | os.PathLike, out: str | os.PathLike | None = None, thumbs=0):
    """Write the gallery page (default ``DIR/index.html``); returns its path and row count."""
    folder = Path(folder)
    out = Path(out) if out else folder / "index.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"-o: {out.name!r} must end in .html")
    if thumbs < 0:
        raise UserError(f"--thumbs: {thumbs} is not allowed; give a size in pixels, or 0 for none")
    rows = load_rows(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = gallery_data(rows, Path(os.path.abspath(out.parent)), thumbs, folder)
    title = f"sdbatch gallery: {folder.resolve().name}"
    with atomic_file(out, "w", encoding="utf-8") as f:
        f.write(render_html(data, title))
    return out, len(rows)
