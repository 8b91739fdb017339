"""Recipe -> validated plan of jobs and batches. Pure: no torch, no diffusers.

Data flows one way: the composed config becomes a `Recipe` (plain values), the recipe's
Cartesian product becomes `Job`s in a stable order, and jobs that can share a forward pass
become `Batch`es. Batch composition depends only on the plan, never on what is already done,
so an interrupted run and an uninterrupted one produce bit-identical images.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdbatch.errors import RecipeError
from sdbatch.plan.axes import expand_axis
from sdbatch.plan.checkpoints import Model, resolve_models
from sdbatch.plan.controlnet import Control, check_family, controls_for, parse_units
from sdbatch.plan.generation import Extras, parse_hires, parse_rng, parse_subseed_strength
from sdbatch.plan.image_inputs import ImageInput, image_entries, protect_captions
from sdbatch.plan.networks import Networks, resolve_networks
from sdbatch.plan.prompts import PromptSyntaxError, parse_attention
from sdbatch.plan.run_settings import MAX_JOBS
from sdbatch.plan.samplers import plan_samplers, scheduler_spec
from sdbatch.plan.schema import SdbatchConfig, as_config
from sdbatch.plan.templates import PromptItem, prompt_set, wildcard_files

SEED_MAX = 2**32 - 1
RANDOM_SEED = -1  # A1111's "random seed"; see random_seed()
# A1111's width/height sliders stop at 2048; SD 1.x and SDXL UNets are trained at 512-1024, and
# at 2048x2048 one image's attention already needs several GB. Hires targets may reach 4096.
SIZE_MAX = 2048
HIRES_SIZE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Job:
    """Everything that determines one image, plus where it sits in the plan."""

    job_id: str
    index: int
    model: Model
    prompt: str
    negative_prompt: str
    template: str | None
    vars: tuple[tuple[str, str], ...]
    sampler: str  # A1111 name
    scheduler: str  # diffusers class + options
    steps: int
    cfg: float
    seed: int
    width: int
    height: int
    extras: Extras = Extras()  # hires fix, variation seed, noise source
    networks: Networks = Networks()  # LoRA files and embeddings the prompts name
    image: ImageInput | None = None  # img2img / inpainting input (sdbatch.plan.image_inputs)
    control: Control | None = None  # ControlNet units (sdbatch.plan.controlnet)

    @property
    def image_name(self) -> str:
        return f"{self.seed}-{self.job_id}.png"


@dataclass(frozen=True, slots=True)
class Batch:
    index: int
    jobs: tuple[Job, ...]


@dataclass
class Plan:
    name: str
    jobs: list[Job]
    batches: list[Batch]
    axes: dict[str, int]  # axis -> number of values, for the plan line
    batch_size: int
    values: dict[str, list[str]] = field(default_factory=dict)  # swept axis -> shown values
    random_seeds: frozenset[str] = frozenset()  # ids of jobs whose seed was A1111's -1
    seeds_provisional: bool = False  # -1 seeds drawn without the folder's salt (dry run)

    def describe(self) -> str:
        """``60 jobs = 5 prompts x 1 sampler x 3 cfg x 4 seeds``."""
        always = ("prompts", "sampler", "cfg", "seeds", "images")
        parts = [f"{n} {axis}" for axis, n in self.axes.items() if axis in always or n > 1]
        return f"{len(self.jobs)} jobs = " + " x ".join(parts)


def as_list(value: Any) -> list:
    """A sweep axis: a scalar is a one-element list."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def parse_size(value: Any) -> tuple[int, int]:
    """``512x768`` (width x height), ``512`` (square) or ``[512, 768]``."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            w = h = value
        elif isinstance(value, list | tuple) and len(value) == 2:
            w, h = (int(v) for v in value)
        else:
            w, h = (int(v) for v in str(value).lower().replace(" ", "").split("x"))
    except (TypeError, ValueError):
        raise RecipeError("size", value, "WIDTHxHEIGHT like 512x768") from None
    if w <= 0 or h <= 0 or w % 8 or h % 8 or w > SIZE_MAX or h > SIZE_MAX:
        raise RecipeError(
            "size",
            value,
            f"width and height must be positive multiples of 8, at most {SIZE_MAX} (A1111's limit)",
        )
    return w, h


def _int(field: str, value: Any, lo: int, hi: int | None, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RecipeError(field, value, allowed)
    try:
        number = float(value)
    except ValueError:
        raise RecipeError(field, value, allowed) from None
    if not number.is_integer() or number < lo or (hi is not None and number > hi):
        raise RecipeError(field, value, allowed)
    return int(number)


class PlanTooLarge(RecipeError):
    """A plan past ``run.max_jobs``: refused from its count, before any job is built."""

    def __init__(self, count: int, limit: int):
        super().__init__(
            "run.max_jobs", limit, f"the plan has {count:,} jobs; raise run.max_jobs to at "
            f"least {count} to run it, or make the sweep smaller",
        )  # fmt: skip


def parse_seeds(value: Any, max_count: int | None = MAX_JOBS) -> list[int]:
    """A seed, a list of seeds, or ``{start: S, count: N}`` (counted before it is built)."""
    allowed = f"integers in 0..{SEED_MAX}"
    if isinstance(value, dict):
        if set(value) != {"start", "count"}:
            raise RecipeError("seeds", value, "a seed, a list, or {start: S, count: N}")
        start = _int("seeds.start", value["start"], 0, SEED_MAX, allowed)
        count = _int("seeds.count", value["count"], 1, None, "a count >= 1")
        if start + count - 1 > SEED_MAX:
            raise RecipeError("seeds", value, f"the range must end at or below {SEED_MAX}")
        if max_count is not None and count > max_count:
            raise PlanTooLarge(count, max_count)
        return list(range(start, start + count))
    allowed = f"integers in 0..{SEED_MAX}, or -1 for a random seed"
    seeds = [
        RANDOM_SEED if _is_random(s) else _int("seeds", s, 0, SEED_MAX, allowed)
        for s in expand_axis("seeds", value, True)
    ]
    if not seeds:
        raise RecipeError("seeds", value, "at least one seed")
    return seeds


def _is_random(value: Any) -> bool:
    return not isinstance(value, bool) and str(value).strip() in ("-1", "-1.0")


def random_seed(salt: str, k: int, job_key: str) -> int:
    """A1111's ``-1``: a random seed per job that stays the same for the output folder. It is
    drawn from the folder's salt (made on the first real run), the position ``k`` of the -1 in
    the seeds list and everything else that decides the job, so every job gets its own seed, a
    re-run resumes instead of drawing new ones, and every shard of the run draws the same."""
    digest = hashlib.sha256(f"{salt}\0{k}\0{job_key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def wants_random_seeds(cfg: dict) -> bool:
    """Does the recipe use A1111's -1 seed anywhere (cheap, before the plan is built)?"""
    value = cfg.get("seeds") if isinstance(cfg, dict) else cfg.seeds
    if isinstance(value, dict):
        return False
    return any(_is_random(s) for s in expand_axis("seeds", value, True))


def parse_cfg(value: Any) -> float:
    try:
        cfg = float(value)
    except (TypeError, ValueError):
        raise RecipeError("cfg", value, "a number >= 0 (0 and 1 turn guidance off)") from None
    if isinstance(value, bool) or not math.isfinite(cfg) or cfg < 0:
        raise RecipeError("cfg", value, "a number >= 0 (0 and 1 turn guidance off)")
    return cfg


def job_id(
    model_key: str,
    prompt: str,
    negative: str,
    sampler: str,
    scheduler: str,
    steps: int,
    cfg: float,
    seed: int,
    width: int,
    height: int,
    extras: str = "",
) -> str:
    """Stable id of everything that determines the image: 16 hex chars of a sha256.

    The A1111 sampler name is included beside the scheduler spec: two names can map to one
    diffusers scheduler, and their PNGs differ in the infotext. ``extras`` (hires fix,
    variation seed, RNG) is only hashed when set, so plain jobs keep their ids.
    """
    prefix = _json_prefix(model_key, prompt, negative, sampler, scheduler, steps, cfg)
    return _id(f"{prefix}{seed},{width},{height}{_json_tail(extras)}]")


def _id(key: str) -> str:
    """The 16 hex chars of a job key's sha256 (build_plan assembles keys from the same parts)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _json_prefix(model_key, prompt, negative, sampler, scheduler, steps, cfg) -> str:
    """job_id's JSON up to the seed: ``[model,prompt,...,"cfg",`` (same bytes as job_id)."""
    head = [model_key, prompt, negative, sampler, scheduler, steps, repr(float(cfg))]
    return json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] + ","


def _json_tail(extras: str) -> str:
    return "," + json.dumps(extras, ensure_ascii=False) if extras else ""


def _prompt_items(cfg: SdbatchConfig, recipe_dirs: list[Path]) -> list[PromptItem]:
    prompts = [str(p) for p in as_list(cfg.prompt)]
    templates = [str(t) for t in as_list(cfg.template)]
    if cfg.init_images not in (None, "", []):  # {caption}: each picture's, filled in later
        prompts, templates = protect_captions(prompts), protect_captions(templates)
    items = prompt_set(prompts, templates, cfg.vars or {}, wildcard_files(recipe_dirs))
    if not items:
        raise RecipeError("prompt", cfg.prompt, "at least one prompt or template")
    _check_syntax("prompt", {item.text for item in items})
    _check_syntax("negative_prompt", {str(cfg.negative_prompt or "")})
    return items


def _check_syntax(field: str, texts: set[str]) -> None:
    """Emphasis A1111 itself cannot read (``(x:1.2.3)``) fails here, before any model loads."""
    for text in sorted(texts):
        try:
            parse_attention(text)
        except PromptSyntaxError as exc:
            detail = str(exc).split(": ", 1)[-1]
            raise RecipeError(field, text, detail) from None


def build_plan(
    cfg: SdbatchConfig | dict,
    recipe_dirs: list[Path] | None = None,
    dtype: str = "fp32",
    max_jobs: int = MAX_JOBS,
    seed_salt: str | None = None,
) -> Plan:
    """Validate a composed recipe (plain dict) and expand it into jobs and batches.

    Axis order, outermost first: model, size, sampler (with schedule type inside it), steps,
    cfg, prompt, seed. The costly switches (model, size, scheduler) change least often, and
    consecutive jobs share a batch. The sampler axis counts job samplers: ``sampler: [DPM++ 2M,
    DPM++ 2M Karras]`` is one (A1111 1.9+ runs Karras for both), ``schedule_type: [Karras,
    Exponential]`` makes two of each sampler that takes them.
    ``dtype`` is the resolved ``run.dtype`` (it decides pixels, so it joins the job id when it
    is not fp32). The plan's size is the product of its axes' lengths: past ``max_jobs`` it is
    refused from that count, before one job is built. ``seed_salt`` is the output folder's
    salt for ``-1`` seeds (without it they are provisional: ``Plan.seeds_provisional``).
    """
    cfg = as_config(cfg)
    if recipe_dirs is None:
        from sdbatch.plan.recipe_files import recipe_dirs as default_dirs

        recipe_dirs = default_dirs()
    items = _prompt_items(cfg, recipe_dirs)
    entries, image_axis = image_entries(cfg, items, recipe_dirs)  # (picture or None, item)
    if image_axis is not None:
        _check_syntax("prompt", {item.text for _, item in entries})
    denoises = image_axis.denoise if image_axis else (None,)
    models = resolve_models(asdict(cfg.model), asdict(cfg.folders))
    units = parse_units(cfg, recipe_dirs, bool(cfg.model.allow_pickle))
    if units:
        for m in models:
            check_family(m.family, units)
    combos = {f: _control_combos(units, f) for f in dict.fromkeys(f for f, _ in entries)}
    sizes = list(dict.fromkeys(parse_size(s) for s in expand_axis("size", cfg.size)))
    # sampler x schedule type, A1111 1.9+'s reading (sdbatch.plan.samplers.plan_sampler): one
    # entry per job sampler ("DPM++ 2M" and "DPM++ 2M Karras" are the same job)
    schedule_types = expand_axis("schedule_type", cfg.schedule_type)
    if not schedule_types:
        raise RecipeError("schedule_type", cfg.schedule_type, "at least one value (Automatic)")
    samplers = plan_samplers(expand_axis("sampler", cfg.sampler), schedule_types)
    steps = [
        _int("steps", s, 1, 1000, "an integer in 1..1000")
        for s in expand_axis("steps", cfg.steps, integer=True)
    ]
    cfgs = [parse_cfg(c) for c in expand_axis("cfg", cfg.cfg)]
    seeds = parse_seeds(cfg.seeds, max_jobs)
    for axis, values in (("size", sizes), ("sampler", samplers), ("steps", steps), ("cfg", cfgs)):
        if not values:
            raise RecipeError(axis, getattr(cfg, axis), "at least one value")
    axes_ = (models, sizes, samplers, steps, cfgs, entries, denoises, seeds)
    count = math.prod(len(a) for a in axes_) * max(len(c) for c in combos.values())
    if count > max_jobs:
        raise PlanTooLarge(count, max_jobs)
    batch_size = _int("batch_size", cfg.batch_size, 1, 4096, "an integer >= 1")
    negative = str(cfg.negative_prompt or "")
    variations = _variations(cfg, seeds, dtype)
    _check_hires_size(variations, sizes)

    jobs: list[Job] = []
    # Per-job work is only what varies per job: everything else is hoisted to its loop level,
    # and the id's JSON is built once per (model, size, sampler, steps, cfg, prompt) as a prefix.
    var_keys = [(seed, extras, _json_tail(extras.key())) for seed, extras in variations]
    salt = seed_salt or ""
    randoms: set[str] = set()
    k_of = {}  # position of each -1 among the seeds, for per-job draws
    for i, (seed, _, _) in enumerate(var_keys):
        if seed == RANDOM_SEED:
            k_of[i] = len(k_of)
    folders = asdict(cfg.folders)
    for model in models:
        mkey = model.key
        nets = {
            item.text: resolve_networks(
                item.text, negative, model.family, folders, model.allow_pickle, model=model
            )
            for _, item in entries
        }
        net_tails = {text: _json_tail(n.key()) for text, n in nets.items()}
        # all jobs of one LoRA set together (one set of adapters per stretch of batches);
        # a plan without LoRA is one group, in the order it always had
        for group in _lora_groups(entries, nets):
            for w, h in sizes:
                size_tail = f",{w},{h}"
                for sampler in samplers:
                    spec = scheduler_spec(sampler)
                    for n_steps in steps:
                        for scale in cfgs:
                            for denoise, (file, item) in itertools.product(denoises, group):
                                prefix = _json_prefix(
                                    mkey, item.text, negative, sampler.name, spec, n_steps, scale
                                )
                                ntail = net_tails[item.text]
                                image = None
                                if file is not None:
                                    image = ImageInput(file, denoise, image_axis.options)
                                    ntail += _json_tail(image.key())
                                for (ctail, control), (
                                    i,
                                    (seed, extras, tail),
                                ) in itertools.product(combos[file], enumerate(var_keys)):
                                    if seed == RANDOM_SEED:
                                        draw = f"{prefix}{size_tail}{tail}{ntail}{ctail}"
                                        seed = random_seed(salt, k_of[i], draw)
                                    key = f"{prefix}{seed}{size_tail}{tail}{ntail}{ctail}]"
                                    jid = _id(key)
                                    if i in k_of:
                                        randoms.add(jid)
                                    jobs.append(
                                        Job(
                                            jid,
                                            len(jobs),
                                            model,
                                            item.text,
                                            negative,
                                            item.template,
                                            item.vars,
                                            sampler.name,
                                            spec,
                                            n_steps,
                                            scale,
                                            seed,
                                            w,
                                            h,
                                            extras,
                                            nets[item.text],
                                            image,
                                            control,
                                        )
                                    )
    axes = {
        "models": len(models),
        "prompts": len(items),
        **({"images": len(image_axis.files), "denoise": len(denoises)} if image_axis else {}),
        **({"controls": max(len(c) for c in combos.values())} if units else {}),
        "sampler": len(samplers),
        "steps": len(steps),
        "cfg": len(cfgs),
        "sizes": len(sizes),
        "seeds": len(seeds),
    }
    values = {
        "model": [m.name for m in models],
        "size": [f"{w}x{h}" for w, h in sizes],
        "sampler": [s.name for s in samplers],
        "steps": [str(n) for n in steps],
        "cfg": [f"{c:g}" for c in cfgs],
        "seeds": ["random" if x == RANDOM_SEED else str(x) for x in seeds],
    }
    if image_axis:
        values["init_images"] = [f.name for f in image_axis.files]
        values["denoise"] = [f"{d:g}" for d in denoises]
    swept = {k: v for k, v in values.items() if len(v) > 1}
    batches = make_batches(jobs, batch_size)
    provisional = bool(randoms) and seed_salt is None
    name = str(cfg.name)
    return Plan(name, jobs, batches, axes, batch_size, swept, frozenset(randoms), provisional)


def _control_combos(units: list, file) -> list[tuple[str, Control | None]]:
    """(id tail, Control) per unit combination for one picture; [("", None)] without units,
    so plans without ControlNet keep their ids."""
    if not units:
        return [("", None)]
    return [(_json_tail(c.key()), c) for c in controls_for(units, file.path if file else None)]


def _lora_groups(entries: list[tuple], nets: dict[str, Networks]) -> list[list[tuple]]:
    """The (picture, prompt item) entries grouped by the LoRA files and weights their tags
    name, groups in order of first appearance, entries in their order inside each group."""
    groups: dict[tuple, list[tuple]] = {}
    for entry in entries:
        groups.setdefault(nets[entry[1].text].batch_key(), []).append(entry)
    return list(groups.values())


def _check_hires_size(variations: list[tuple[int, Extras]], sizes: list[tuple[int, int]]) -> None:
    hires = variations[0][1].hires if variations else None
    if hires is None:
        return
    for w, h in sizes:
        tw, th = hires.target(w, h)
        if max(tw, th) > HIRES_SIZE_MAX:
            raise RecipeError(
                "hires.scale", hires.scale, f"a hires target of at most {HIRES_SIZE_MAX} a side "
                f"(size {w}x{h} x {hires.scale:g} = {tw}x{th})",
            )  # fmt: skip


def _variations(cfg: SdbatchConfig, seeds, dtype: str = "fp32") -> list[tuple[int, Extras]]:
    """(seed, extras) per seed of the axis. With a variation strength, A1111's rule: every
    image keeps the first seed and the variation seed steps instead (subseed, subseed+1, ...)."""
    hires = parse_hires(asdict(cfg.hires), asdict(cfg.folders), bool(cfg.model.allow_pickle))
    rng = parse_rng(cfg.rng)
    strength = parse_subseed_strength(cfg.subseed_strength)
    if strength == 0:
        return [(seed, Extras(rng=rng, hires=hires, dtype=dtype)) for seed in seeds]
    if cfg.subseed in (None, ""):
        raise RecipeError(
            "subseed", None, "a variation seed in 0..4294967295 when subseed_strength > 0"
        )
    if seeds[0] == RANDOM_SEED:
        raise RecipeError(
            "seeds", RANDOM_SEED, "a fixed first seed when subseed_strength > 0 (every image "
            "keeps it and the variation seed steps instead)",
        )  # fmt: skip
    sub = _int("subseed", cfg.subseed, 0, SEED_MAX, f"an integer in 0..{SEED_MAX}")
    if sub + len(seeds) - 1 > SEED_MAX:
        raise RecipeError("subseed", sub, f"subseed + number of seeds - 1 <= {SEED_MAX}")
    return [(seeds[0], Extras(sub + i, strength, rng, hires, dtype)) for i in range(len(seeds))]


def make_batches(jobs: list[Job], batch_size: int) -> list[Batch]:
    """Consecutive jobs sharing model, size, sampler, steps and cfg, up to batch_size each."""
    batches: list[Batch] = []
    model_keys: dict[int, str] = {}

    def batch_key(job: Job) -> tuple:
        mkey = model_keys.get(id(job.model))
        if mkey is None:
            mkey = model_keys[id(job.model)] = job.model.key
        return (
            mkey,
            job.width,
            job.height,
            job.scheduler,
            job.steps,
            job.cfg,
            job.extras.batch_key(),
            job.networks.batch_key(),
            job.image.batch_key() if job.image else None,
            job.control.batch_key() if job.control else None,
        )

    for _, group in itertools.groupby(jobs, key=batch_key):
        group_jobs = list(group)
        for start in range(0, len(group_jobs), batch_size):
            chunk = tuple(group_jobs[start : start + batch_size])
            batches.append(Batch(len(batches), chunk))
    return batches


def select_shard(plan: Plan, index: int, count: int) -> list[Batch]:
    """Shard ``index`` of ``count``: every count-th batch of the plan, starting at ``index``.

    Whole batches, so a shard renders exactly the pixels the unsharded run would; round-robin,
    so shards get similar work even when the plan's axes change cost along the way.
    """
    count = _int("shard.count", count, 1, None, "an integer >= 1")
    index = _int("shard.index", index, 0, count - 1, f"an integer in 0..{count - 1}")
    return [b for b in plan.batches if b.index % count == index]


def iter_preview(jobs: list[Job], n: int, random: frozenset[str] = frozenset()) -> Iterator[str]:
    """The first ``n`` jobs, one line each, for dry runs; ``random``: ids of jobs whose -1 seed
    is not drawn yet (no salt in the folder), shown as ``seed random``."""
    for job in jobs[:n]:
        seed = "random" if job.job_id in random else job.seed
        yield (
            f"  {job.job_id}  seed {seed}  {job.width}x{job.height}  {job.sampler}, "
            f"{job.steps} steps, cfg {job.cfg:g}  {job.prompt!r}"
            + (f"  from {job.image.file.name}, denoise {job.image.denoise:g}" if job.image else "")
            + (f"  {job.control.describe()}" if job.control else "")
        )
