"""The private parts of diffusers that sdbatch/render/schedulers.py relies on. pyproject pins
diffusers to the minor version tested; this test fails loudly, naming the attribute, when a
diffusers release renames or drops one, instead of images silently changing."""

from __future__ import annotations

import inspect

import diffusers
import pytest

# class -> (attributes set_timesteps must leave, names the class's own step() must read)
CONTRACT = {
    "KDPM2DiscreteScheduler": (
        ["log_sigmas", "sigmas", "sigmas_interpol", "timesteps", "sample", "_step_index",
         "_begin_index"],
        ["self.sigmas_interpol", "self.sample", "self.sigmas", "self.step_index"],
    ),
    "KDPM2AncestralDiscreteScheduler": (
        ["log_sigmas", "sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down", "timesteps",
         "sample", "_step_index", "_begin_index"],
        ["self.sigmas_interpol", "self.sigmas_up", "self.sigmas_down", "self.sample"],
    ),
    "PNDMScheduler": (["timesteps", "plms_timesteps"], ["self.timesteps"]),
    "DDIMScheduler": (["timesteps"], ["self.config.num_train_timesteps"]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_the_scheduler_attributes_sdbatch_sets_still_exist(name):
    from sdbatch.models import EMBEDDED_MODEL_PATH

    cls = getattr(diffusers, name)
    sched = cls.from_pretrained(EMBEDDED_MODEL_PATH, subfolder="scheduler")
    if name == "PNDMScheduler":
        sched = cls.from_config(sched.config, skip_prk_steps=True)
    sched.set_timesteps(20)
    attributes, read_by_step = CONTRACT[name]
    missing = [a for a in attributes if not hasattr(sched, a)]
    assert not missing, f"diffusers {diffusers.__version__} {name} lacks {missing}"
    source = inspect.getsource(cls)
    unread = [n for n in read_by_step if n not in source]
    assert not unread, f"diffusers {diffusers.__version__} {name} no longer reads {unread}"
    if "KDPM2" in name:
        assert callable(getattr(sched, "_sigma_to_t", None)), f"{name}._sigma_to_t is gone"


def test_diffusers_is_the_pinned_minor_version():
    import tomllib

    from tests.conftest import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("diffusers")]
    minor = ".".join(diffusers.__version__.split(".")[:2])
    assert f">={minor}" in pin and "<" in pin, (pin, diffusers.__version__)
