"""Recipe expansion: pure code, no torch, milliseconds."""

from __future__ import annotations

import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan.recipe import build_plan, job_id, make_batches, parse_seeds, parse_size
from tests.conftest import quick_cfg


def test_plan_is_the_cartesian_product_in_a_stable_order():
    plan = build_plan(quick_cfg(cfg=[5, 7, 9], seeds={"start": 10, "count": 4}))
    assert len(plan.jobs) == 2 * 3 * 4
    assert plan.describe() == "24 jobs = 2 prompts x 1 sampler x 3 cfg x 4 seeds"
    first = plan.jobs[:5]
    assert [(j.cfg, j.prompt, j.seed) for j in first] == [
        (5.0, "a red circle", 10),
        (5.0, "a red circle", 11),
        (5.0, "a red circle", 12),
        (5.0, "a red circle", 13),
        (5.0, "a blue square", 10),
    ]
    again = build_plan(quick_cfg(cfg=[5, 7, 9], seeds={"start": 10, "count": 4}))
    assert [j.job_id for j in again.jobs] == [j.job_id for j in plan.jobs]


def test_other_axes_show_in_the_plan_line_only_when_swept():
    plan = build_plan(quick_cfg(steps=[2, 4], size=["64x64", "64x128"]))
    assert (
        plan.describe() == "16 jobs = 2 prompts x 1 sampler x 2 steps x 1 cfg x 2 sizes x 2 seeds"
    )


def test_job_id_depends_on_the_image_not_on_the_recipe():
    a = build_plan(quick_cfg(name="one", batch_size=1))
    b = build_plan(quick_cfg(name="two", prompt=["x", "a red circle"], batch_size=8))
    ids_a = {(j.prompt, j.seed): j.job_id for j in a.jobs}
    ids_b = {(j.prompt, j.seed): j.job_id for j in b.jobs}
    assert ids_a[("a red circle", 1)] == ids_b[("a red circle", 1)]
    assert len({j.job_id for j in a.jobs}) == len(a.jobs)
    base = ("h", "p", "n", "Euler", "EulerDiscreteScheduler()", 20, 7.0, 1, 64, 64)
    assert job_id(*base) == job_id(*base)
    changes = ["h2", "p2", "n2", "Euler a", "DDIMScheduler()", 21, 7.5, 2, 72, 72]
    for i, changed in enumerate(changes):
        other = list(base)
        other[i] = changed
        assert job_id(*other) != job_id(*base), f"field {i} must change the id"


def test_image_file_is_named_by_seed_and_job_id():
    job = build_plan(quick_cfg()).jobs[0]
    assert job.image_name == f"1-{job.job_id}.png"


def test_batches_group_compatible_jobs_and_depend_only_on_the_plan():
    plan = build_plan(quick_cfg(cfg=[5, 7], seeds=[1, 2, 3], batch_size=4))
    # per cfg: 2 prompts x 3 seeds = 6 jobs -> batches of 4 + 2; never mixing cfg values
    assert [len(b.jobs) for b in plan.batches] == [4, 2, 4, 2]
    for b in plan.batches:
        assert len({j.cfg for j in b.jobs}) == 1
    assert [b.index for b in plan.batches] == [0, 1, 2, 3]
    again = make_batches(plan.jobs, 4)
    assert [[j.job_id for j in b.jobs] for b in again] == [
        [j.job_id for j in b.jobs] for b in plan.batches
    ]


def test_every_axis_accepts_a_scalar_or_a_list():
    plan = build_plan(
        quick_cfg(prompt="one", sampler=["Euler", "DDIM"], steps=3, cfg=[1, 0], seeds=5)
    )
    assert len(plan.jobs) == 4
    assert {j.sampler for j in plan.jobs} == {"Euler", "DDIM"}


@pytest.mark.parametrize(
    "value, expected",
    [("512x768", (512, 768)), (" 64X128 ", (64, 128)), (512, (512, 512)), ([64, 72], (64, 72))],
)
def test_size_forms(value, expected):
    assert parse_size(value) == expected


def test_seed_forms():
    assert parse_seeds({"start": 7, "count": 3}) == [7, 8, 9]
    assert parse_seeds(42) == [42]
    assert parse_seeds([0, 2**32 - 1]) == [0, 2**32 - 1]


@pytest.mark.parametrize(
    "override, field, fragment",
    [
        ({"sampler": "Euler b"}, "sampler", "closest match"),
        ({"size": "500x512"}, "size", "multiples of 8"),
        ({"size": "0x512"}, "size", "positive"),
        ({"size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"steps": 0}, "steps", "1..1000"),
        ({"steps": "abc"}, "steps", "1..1000"),
        ({"cfg": -1}, "cfg", ">= 0"),
        ({"seeds": -2}, "seeds", "0..4294967295, or -1 for a random seed"),
        ({"seeds": 2**32}, "seeds", "0..4294967295"),
        ({"seeds": {"start": 2**32 - 1, "count": 2}}, "seeds", "4294967295"),
        ({"prompt": [], "template": None}, "prompt", "at least one prompt"),
        ({"prompt": None, "template": "a {color} car"}, "template[0]", "{color}"),
        ({"model": {"path": "/no/such/model"}}, "model.path", "/no/such/model"),
        ({"batch_size": 0}, "batch_size", ">= 1"),
    ],
)
def test_bad_input_names_field_value_and_allowed(override, field, fragment):
    with pytest.raises(RecipeError) as err:
        build_plan(quick_cfg(**override))
    msg = str(err.value)
    assert msg.startswith(f"{field}: ")
    assert fragment in msg
    assert "\n" not in msg


def test_cfg_zero_and_one_are_allowed():
    assert {j.cfg for j in build_plan(quick_cfg(cfg=[0, 1])).jobs} == {0.0, 1.0}


def test_templates_multiply_like_axes_and_keep_their_variables():
    plan = build_plan(
        quick_cfg(prompt=None, template="black hair, {style}", vars={"style": ["bob", "braid"]})
    )
    assert [j.prompt for j in plan.jobs[::2]] == ["black hair, bob", "black hair, braid"]
    assert plan.jobs[0].template == "black hair, {style}"
    assert plan.jobs[0].vars == (("style", "bob"),)


def test_plan_ids_equal_job_id_of_each_jobs_fields():
    """build_plan builds ids from a shared JSON prefix for speed; it must match job_id()."""
    plan = build_plan(quick_cfg(cfg=[5, 7.5], hires={"scale": 2}, subseed=9, subseed_strength=0.2))
    for j in plan.jobs:
        assert j.job_id == job_id(j.model.key, j.prompt, j.negative_prompt, j.sampler,
                                  j.scheduler, j.steps, j.cfg, j.seed, j.width, j.height,
                                  j.extras.key())  # fmt: skip
    plain = build_plan(quick_cfg()).jobs[0]
    assert plain.job_id == job_id(plain.model.key, plain.prompt, plain.negative_prompt,
                                  plain.sampler, plain.scheduler, plain.steps, plain.cfg,
                                  plain.seed, plain.width, plain.height)  # fmt: skip
