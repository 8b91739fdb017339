"""A1111's prompt editing, alternation and AND, rendered by the embedded shapes model.

Two kinds of checks. Which text reaches the UNet at each model call is read off the UNet's
input (a forward pre-hook compares every row of ``encoder_hidden_states`` with each text's
own embedding), for first-order, second-order and PLMS samplers and for the hires pass. What
it does to the picture is judged from pixels (``sdbatch.shapes.judge``) at 32x32, Euler, 20
steps, CFG 7, empty negative prompt. Every threshold below was measured with this model and
says what it was; the model decides a circle's colour in the first half of the steps
(``[red:blue:0.75]`` is red, ``[red:blue:0.25]`` blue, on every seed tried).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdbatch.plan.checkpoints import resolve_model
from sdbatch.plan.generation import Extras, Hires
from sdbatch.plan.prompt_schedule import prompt_schedule, text_at_step
from sdbatch.plan.recipe import Job
from sdbatch.render import conditioning
from sdbatch.render.pipeline import Renderer
from sdbatch.shapes.judge import judge

# diffusers 0.42 renamed from_pretrained's torch_dtype to dtype; older ones only know torch_dtype.
pytestmark = pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")

ON_WHITE = " circle on a white background"
RED, BLUE = "a red" + ON_WHITE, "a blue" + ON_WHITE
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def renderer():
    # One torch thread: the tiny model gains nothing from two, and two OpenMP threads on
    # cores busy with other tests wait for each other (measured: one test 1.4 s alone, 57 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Renderer.load(resolve_model({}), device="cpu")
    torch.set_num_threads(threads)


def job(renderer, prompt, seed=1, *, steps=20, sampler="Euler", cfg=7.0, negative="", **kw):
    return Job(
        job_id=f"t{seed}", index=0, model=renderer.model, prompt=prompt,
        negative_prompt=negative, template=None, vars=(), sampler=sampler, scheduler="",
        steps=steps, cfg=cfg, seed=seed, width=32, height=32, **kw,
    )  # fmt: skip


def render(renderer, prompts, seed=1, **kw) -> list[np.ndarray]:
    out = renderer.render([job(renderer, p, seed, **kw) for p in prompts])
    assert not any(nan for _, nan in out)
    return [pixels for pixels, _ in out]


def diff(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference of one colour channel, 0..255."""
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def unet_inputs(renderer, jobs) -> list[torch.Tensor]:
    """``encoder_hidden_states`` of every UNet call while rendering ``jobs``."""
    calls = []

    def hook(module, args, kwargs):
        hidden = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        calls.append(hidden.clone())

    handle = renderer.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        renderer.render(jobs)
    finally:
        handle.remove()
    return calls


def names(renderer, rows: torch.Tensor, texts: dict[str, str]) -> list[str]:
    """Which of ``texts`` (name -> text) each row of one call is, exactly."""
    out = []
    for row in rows:
        found = [
            name
            for name, text in texts.items()
            if torch.equal(renderer.text_embedding(text, False)[0][0], row)
        ]
        out.append(found[0] if found else "?")
    return out


TEXTS = {"red": RED, "blue": BLUE, "yellow": "yellow", "green": "green", "": ""}


# --------------------------------------------------------------------- which text, which call


@pytest.mark.parametrize(
    ("sampler", "steps", "prompt", "expected"),
    [
        # one model call a step: [a:b:3] is a for calls 0..3 (A1111 counts from 0)
        ("Euler", 6, "a [red:blue:3]" + ON_WHITE, "red red red red blue blue"),
        # alternation: one option per call from call 1 on (a, a, b, a, ...), as in A1111
        ("Euler", 5, "a [red|blue]" + ON_WHITE, "red red blue red blue"),
        # Heun: 2 calls a step but the last, 7 calls; A1111 plans 8, so 0.5 ends at call 4
        ("Heun", 4, "a [red:blue:0.5]" + ON_WHITE, "red red red red red blue blue"),
        # DPM2 (A1111's discarded sigma): 7 calls at 4 steps, planned as 8, like Heun
        ("DPM2", 4, "a [red:blue:0.5]" + ON_WHITE, "red red red red red blue blue"),
        # PLMS: its first step takes 2 calls (7 at 6 steps), planned as 6: 0.5 ends at call 3
        ("PLMS", 6, "a [red:blue:0.5]" + ON_WHITE, "red red red red blue blue blue"),
    ],
)
def test_each_call_gets_the_text_a1111_gives_it(renderer, sampler, steps, prompt, expected):
    jobs = [job(renderer, prompt, sampler=sampler, steps=steps, negative="[yellow:green:1]")]
    calls = unet_inputs(renderer, jobs)
    assert [names(renderer, rows, TEXTS)[1] for rows in calls] == expected.split()
    # the negative prompt has its own schedule: [yellow:green:1] switches after call 1
    negatives = [names(renderer, rows, TEXTS)[0] for rows in calls]
    assert negatives == ["yellow"] * 2 + ["green"] * (len(calls) - 2)


def test_images_of_one_batch_keep_their_own_schedules(renderer):
    prompts = ["a [red:blue:1]" + ON_WHITE, "a [blue:red:2]" + ON_WHITE, RED]
    jobs = [job(renderer, p, seed, steps=4) for seed, p in enumerate(prompts)]
    calls = unet_inputs(renderer, jobs)
    # the plain prompt renders in a pass of its own, first; then the two scheduled ones
    assert len(calls) == 2 * 4 and all(rows.shape[0] == 2 for rows in calls[:4])
    cond = [names(renderer, rows[2:], TEXTS) for rows in calls[4:]]
    assert cond == [["red", "blue"]] * 2 + [["blue", "blue"]] + [["blue", "red"]]


def test_hires_pass_follows_its_own_schedule(renderer):
    """[red:blue:1.25] with 4 + 8 hires steps: the first pass is all red (1.25 of 4 steps is
    past its end), the hires pass switches after its call 2 (a quarter of its 8 steps). The
    hires pass runs all its 8 steps, as A1111 does (the last 8 of a 16-step schedule)."""
    extras = Extras(hires=Hires(scale=2.0, upscaler="latent", steps=8, denoise=0.5))
    jobs = [job(renderer, "a [red:blue:1.25]" + ON_WHITE, steps=4, extras=extras)]
    calls = unet_inputs(renderer, jobs)
    assert [names(renderer, rows, TEXTS) for rows in calls] == [["", "red"]] * 7 + [
        ["", "blue"]
    ] * 5


def test_and_runs_each_part_beside_the_uncond(renderer):
    """One UNet batch per call: the negative, then each part with its own schedule."""
    prompt = "a [red:blue:2]" + ON_WHITE + " AND " + BLUE + " :0.5"
    for cfg in (7.0, 1.0):  # with and without diffusers' guidance
        jobs = [job(renderer, prompt, steps=4, cfg=cfg, negative="[yellow:green:1]")]
        calls = unet_inputs(renderer, jobs)
        assert [names(renderer, rows, TEXTS) for rows in calls] == [
            ["yellow", "red", "blue"],
            ["yellow", "red", "blue"],
            ["green", "red", "blue"],
            ["green", "blue", "blue"],
        ]


def test_long_texts_are_padded_as_a1111_pads_them(renderer):
    """A part that is shorter than another repeats its last token vector; an uncond shorter
    than the cond gets empty-prompt chunks (154 tokens: 2 chunks)."""
    long = ", ".join(["a red circle"] * 30)
    jobs = [job(renderer, f"{RED} AND {long}", steps=2)]
    calls = unet_inputs(renderer, jobs)
    short = renderer.text_embedding(RED, False)[0][0]
    empty = renderer.text_embedding("", True)[0][0]
    for rows in calls:
        assert rows.shape == (3, 154, 64)
        assert torch.equal(rows[0], torch.cat([empty, empty]))
        assert torch.equal(rows[1], torch.cat([short, short[-1:].expand(77, -1)]))
        assert torch.equal(rows[2], renderer.text_embedding(long, False)[0][0])


def test_planned_calls_double_for_second_order_samplers():
    assert conditioning.total_steps(20, 1) == 20
    assert conditioning.total_steps(20, 2) == 40
    prompts = conditioning.job_prompts("a [b:c:0.5]", "", 20, None, 2)
    assert prompts.first.parts[0][0] == tuple(prompt_schedule("a [b:c:0.5]", 40))
    assert text_at_step(prompts.first.parts[0][0], 20) == "a b"


# ------------------------------------------------------------------------------- pixels


def test_prompts_without_scheduling_render_as_before(renderer, monkeypatch):
    """Plain prompts (emphasis, ``[de-emphasis]``, ``AND`` in a negative prompt, which A1111
    reads as text) never reach the per-step code, and their pixels equal one diffusers call
    with their embeddings, as the renderer made them before schedules existed, also beside a
    scheduled batch-mate."""
    prompts = [RED, "a (blue:1.2) circle on a [white] background"]
    negatives = ["", "blurry AND ugly"]
    pairs = enumerate(zip(prompts, negatives, strict=True))
    jobs = [job(renderer, p, seed, negative=n) for seed, (p, n) in pairs]
    embeds = [renderer.embeddings(j.prompt, j.negative_prompt) for j in jobs]
    renderer.pipe.scheduler = renderer._scheduler(jobs)
    with torch.inference_mode():
        before = renderer.pipe(
            prompt_embeds=torch.cat([e[0] for e in embeds]),
            negative_prompt_embeds=torch.cat([e[1] for e in embeds]),
            num_inference_steps=20, guidance_scale=7.0, width=32, height=32,
            generator=renderer._generators(jobs), output_type="np",
        ).images  # fmt: skip
    before = [(np.nan_to_num(img) * 255).round().clip(0, 255).astype(np.uint8) for img in before]
    with monkeypatch.context() as mp:
        mp.setattr("sdbatch.render.pipeline.conditioned_call", None)  # calling it would fail
        now = [pixels for pixels, _ in renderer.render(jobs)]
    assert all(np.array_equal(a, b) for a, b in zip(before, now, strict=True))
    alone = renderer.render(jobs[:1])[0][0]
    beside = renderer.render([jobs[0], job(renderer, "a [red|blue]" + ON_WHITE, 5)])[0][0]
    assert np.array_equal(beside, alone)


def test_edit_halfway_is_a_new_picture_in_one_of_the_two_colours(renderer):
    """``a [red:blue:0.5] circle``: measured on seeds 1-8, at least 82 levels from both pure
    prompts somewhere (mean 102), judged red on 7 and green on 1 (seeds 1-3: red)."""
    for seed in SEEDS:
        red, blue, edited = render(renderer, [RED, BLUE, "a [red:blue:0.5]" + ON_WHITE], seed)
        assert diff(edited, red) >= 40 and diff(edited, blue) >= 40, seed
        assert judge(edited)["colour"] in ("red", "blue"), seed


def test_when_the_edit_happens_decides_the_colour(renderer):
    """The model settles the colour early: switching at a quarter gives blue, at three
    quarters red (measured: 4 of 4 seeds each; 7 of 8 and 8 of 8 on seeds 1-8)."""
    for seed in SEEDS:
        early, late = render(renderer, [f"a [red:blue:{w}]{ON_WHITE}" for w in (0.25, 0.75)], seed)
        assert judge(early)["colour"] == "blue", seed
        assert judge(late)["colour"] == "red", seed


def test_an_edit_after_the_last_call_changes_nothing(renderer):
    """At 20 Euler steps the calls are 0..19. ``[red:blue:0.99]`` ends red at 19 (int(19.8)):
    every call is red, so the pixels are exactly the plain prompt's. ``[red:blue:18]`` gives
    the last call blue: measured 6 to 8 levels off red on seeds 1-4, a counter off by one
    would make it equal."""
    red, late, last = render(
        renderer, [RED, "a [red:blue:0.99]" + ON_WHITE, "a [red:blue:18]" + ON_WHITE]
    )
    assert np.array_equal(late, red)
    assert diff(last, red) >= 2


def test_alternation_differs_from_both_colours(renderer):
    """``[red|blue]``: measured at least 84 levels from each pure prompt on seeds 1-8."""
    for seed in SEEDS:
        red, blue, alternating = render(renderer, [RED, BLUE, "a [red|blue]" + ON_WHITE], seed)
        assert diff(alternating, red) >= 40 and diff(alternating, blue) >= 40, seed


def test_negative_prompt_editing_changes_the_picture(renderer):
    """Negative ``[yellow:green:0.5]`` against ``yellow`` and ``green``: measured 41 to 187
    levels apart on seeds 1-4."""
    for seed in SEEDS:
        yellow, green, edited = (
            render(renderer, [RED], seed, negative=n)[0]
            for n in ("yellow", "green", "[yellow:green:0.5]")
        )
        assert diff(edited, yellow) >= 20 and diff(edited, green) >= 20, seed


def test_and_differs_from_each_part_and_is_symmetric(renderer):
    """``red AND blue``: measured at least 81 levels from each part on seeds 1-8 (the model
    draws it blue); the sum does not depend on the parts' order (measured 0 levels apart)."""
    for seed in SEEDS:
        red, blue, both, swapped = render(
            renderer, [RED, BLUE, f"{RED} AND {BLUE}", f"{BLUE} AND {RED}"], seed
        )
        assert diff(both, red) >= 40 and diff(both, blue) >= 40, seed
        assert diff(both, swapped) <= 1, seed


def test_and_weights_follow_a1111s_formula(renderer):
    """uncond + cfg * sum(w * (cond - uncond)): one part of weight 2 or the same part twice
    at CFG 3.5 is the plain prompt at CFG 7; weight 2 at CFG 1 (diffusers' unguided path,
    where the wrapper applies the formula itself) is the plain prompt at CFG 2. Measured at
    most 1 level apart (rounding) on seeds 1-4."""
    for seed in SEEDS[:2]:
        plain7 = render(renderer, [RED], seed, cfg=7.0)[0]
        weighted, twice = render(renderer, [RED + " :2", f"{RED} AND {RED}"], seed, cfg=3.5)
        assert diff(weighted, plain7) <= 2 and diff(twice, plain7) <= 2, seed
        plain2 = render(renderer, [RED], seed, cfg=2.0)[0]
        unguided = render(renderer, [RED + " :2"], seed, cfg=1.0)[0]
        assert diff(unguided, plain2) <= 2, seed


def test_and_with_editing_and_hires_fix_renders(renderer):
    extras = Extras(hires=Hires(scale=2.0, upscaler="latent", steps=4, denoise=0.5))
    prompts = [f"a [red|blue]{ON_WHITE} AND a [green:red:0.5]{ON_WHITE} :0.7", RED]
    jobs = [job(renderer, p, seed, steps=4, extras=extras) for seed, p in enumerate(prompts)]
    out = renderer.render(jobs)
    assert [pixels.shape for pixels, _ in out] == [(64, 64, 3)] * 2
    assert not any(nan for _, nan in out)


def test_tools_prompt_prints_the_schedule_and_each_text():
    import subprocess

    from tests.conftest import BIN, sdbatch_env

    res = subprocess.run(
        [str(BIN / "sdbatch-tools"), "prompt", "a [red:(blue:1.2):0.5] car AND sky :0.5",
         "--steps", "4"],
        capture_output=True, text=True, env=sdbatch_env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:7] == [
        "schedule (4 steps):",
        "  part 1 of 2, weight 1:",
        "    steps 1-3: a red car",
        "    step 4: a (blue:1.2) car",
        "  part 2 of 2, weight 0.5:",
        "    steps 1-4:  sky",
        "text 1 of 3: 'a red car'",
    ]
    assert "text 2 of 3: 'a (blue:1.2) car'" in lines and "    a blue:1.2 car" in lines


# --------------------------------------------------------------------------------- SDXL


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory, renderer):  # after `renderer`: one torch thread here too
    from tests.integration.test_single_file import build_tiny_sdxl

    folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    return Renderer.load(resolve_model({"path": str(folder)}), device="cpu")


def test_sdxl_edits_and_ands_its_embeddings_and_pooled_texts(sdxl):
    """SDXL's per-step conditioning has two parts, the hidden states and the pooled text
    embedding (``add_text_embeds``): both follow the schedule, row by row."""
    texts = {"red": "a red circle", "blue": "a blue circle", "yellow": "yellow", "green": "green"}
    seen = []

    def hook(module, args, kwargs):
        hidden = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        rows = zip(hidden, kwargs["added_cond_kwargs"]["text_embeds"], strict=True)
        call = []
        for i, (row, vector) in enumerate(rows):
            negative = i == 0
            found = [
                name
                for name, text in texts.items()
                if torch.equal(sdxl.text_embedding(text, negative)[0][0], row)
                and torch.equal(sdxl.text_embedding(text, negative)[1][0], vector)
            ]
            call.append(found[0] if found else "?")
        seen.append(call)

    edit = [["yellow", "red"]] * 2 + [["green", "red"], ["green", "blue"]]
    composed = [["yellow", "red", "blue"]] * 2 + [["green", "red", "blue"]]
    composed += [["green", "blue", "blue"]]
    cases = [
        ("a [red:blue:0.5] circle", edit),
        ("a [red:blue:2] circle AND a blue circle :0.5", composed),
    ]
    handle = sdxl.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for prompt, expected in cases:
            seen.clear()
            sdxl.render([job(sdxl, prompt, steps=4, cfg=5.0, negative="[yellow:green:1]")])
            assert seen == expected, prompt
    finally:
        handle.remove()


def test_sdxl_and_weights_and_hires_fix(sdxl):
    """Weight 2 at CFG 2.5 is the plain prompt at CFG 5 (measured 0 levels apart), and AND
    with editing runs through SDXL's img2img hires pass."""
    plain = sdxl.render([job(sdxl, "a red circle", steps=4, cfg=5.0)])[0][0]
    weighted = sdxl.render([job(sdxl, "a red circle :2", steps=4, cfg=2.5)])[0][0]
    assert diff(weighted, plain) <= 2
    extras = Extras(hires=Hires(scale=1.5, upscaler="latent", steps=4, denoise=0.5))
    out = sdxl.render([job(sdxl, "a [red:blue:1.5] circle AND a blue circle", steps=4,
                           extras=extras)])  # fmt: skip
    assert out[0][0].shape == (48, 48, 3) and not out[0][1]
