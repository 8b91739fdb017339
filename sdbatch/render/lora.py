"""LoRA / LyCORIS files on a loaded pipeline: each file loaded once per model, switched per batch.

diffusers' LoRA loaders (``load_lora_weights``, which converts kohya / A1111 key layouts and
reads diffusers' own) wrap the UNet's and text encoders' layers with peft adapters, one adapter
per file, named by the file's hash. Between batches only the adapters' weights and which ones
are active change (``set_weights_and_activate_adapters``, ``set_adapter_layers``): no file and
no base model is read again. The text encoders take the tag's ``te`` multiplier, the UNet its
``unet`` multiplier, each component only the adapters its file has weights for.

A batch without LoRA runs with every adapter layer disabled, which is the base layer's own
forward: its pixels are those of a model that never loaded a LoRA. An adapter at weight 0
adds ``0 * delta`` to each layer's output, which leaves every float as it was, so
``<lora:X:0>`` draws what the prompt without the tag draws (tested).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from sdbatch.errors import RecipeError
from sdbatch.plan.networks import LoraUse, Networks

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def adapter_name(use: LoraUse) -> str:
    """The adapter of a file: its hash (a module-name-safe key; one file, one adapter)."""
    return f"lora_{use.hash}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors; a pickle only with ``weights_only`` (the plan refused it unless
    ``model.allow_pickle``, and checked it is one weights_only reads)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_into(pipe, state: dict[str, torch.Tensor], name: str) -> set[str]:
    """Add one file's adapter ``name`` to ``pipe``; the components it changes.

    diffusers converts the key layout (kohya / A1111, diffusers' old and peft layouts) and
    loads the UNet part. The text encoders' parts are injected with peft directly, as diffusers
    would (same conversion, same LoraConfig): transformers 5 refuses its own adapter loading
    below peft 0.22, which is not released for this platform yet.
    """
    converted, alphas = pipe.lora_state_dict(state, unet_config=pipe.unet.config)[:2]
    parts: set[str] = set()
    if any(k.startswith("unet.") for k in converted):
        pipe.load_lora_into_unet(converted, alphas, pipe.unet, adapter_name=name, _pipeline=pipe)
        parts.add("unet")
    for component in TEXT_ENCODERS:
        encoder = getattr(pipe, component, None)
        if encoder is not None and _into_text_encoder(converted, alphas, encoder, component, name):
            parts.add(component)
    unknown = {k.split(".", 1)[0] for k in converted} - set(COMPONENTS)
    if unknown or not parts:
        raise ValueError(f"no UNet or text-encoder weights this model has ({sorted(unknown)})")
    return parts


def _as_peft(state: dict) -> dict:
    """Text-encoder LoRA keys in peft's layout (``q_proj.lora_A.weight``). The layout is named
    here: diffusers' own guess looks for ``to_out_lora`` and fails on files without it."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType

    keys = list(state)
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return state
    if any("_lora.down." in k or "_lora.up." in k for k in keys):
        state = convert_state_dict_to_diffusers(state, original_type=StateDictType.DIFFUSERS_OLD)
    return convert_state_dict_to_peft(state, original_type=StateDictType.DIFFUSERS)


def _into_text_encoder(converted: dict, alphas, encoder, prefix: str, name: str) -> bool:
    """diffusers' ``_load_lora_into_text_encoder`` without transformers' ``load_adapter``."""
    from diffusers.utils.peft_utils import _create_lora_config
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    lead = f"{prefix}."
    state = {k.removeprefix(lead): v for k, v in converted.items() if k.startswith(lead)}
    if not state:
        return False
    state = _as_peft(state)
    if not hasattr(encoder, "text_model"):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    rank = {k: v.shape[1] for k, v in state.items() if k.endswith("lora_B.weight")}
    if alphas is not None:
        alphas = {k.removeprefix(lead): v for k, v in alphas.items() if k.startswith(lead)}
    config = _create_lora_config(state, alphas, None, rank, is_unet=False)
    inject_adapter_in_model(config, encoder, adapter_name=name)
    result = set_peft_model_state_dict(encoder, state, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"{prefix} has no layer for {unexpected[0]}")
    encoder.to(device=encoder.device, dtype=encoder.dtype)
    return True


class LoraSwitch:
    """The LoRA files loaded on one pipeline, and the set of them active now."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.loaded: dict[str, str] = {}  # adapter name -> file
        self.parts: dict[str, set[str]] = {}  # adapter name -> the components it changes
        self.active: tuple = ()  # Networks.batch_key() of the set active now
        self.loads = 0  # files read (tests: once per file per model)

    def _load(self, use: LoraUse) -> None:
        name = adapter_name(use)
        if name in self.loaded:
            return
        tag = f"<lora:{use.name}>"
        try:
            state = read_state_dict(Path(use.path))
            with warnings.catch_warnings():  # diffusers' notes on converted key layouts
                warnings.simplefilter("ignore")
                parts = load_into(self.pipe, state, name)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            text = str(exc).strip()
            detail = text.splitlines()[0][:200] if text else type(exc).__name__
            raise RecipeError(
                "prompt", tag, f"a LoRA file that fits this model ({Path(use.path).name}: {detail})"
            ) from None
        self.loaded[name] = use.path
        self.parts[name] = parts
        self.loads += 1

    def apply(self, networks: Networks) -> bool:
        """Make ``networks``' LoRA set active at its weights; False when it already was."""
        key = networks.batch_key()
        if key == self.active:
            return False
        for use in networks.loras:
            self._load(use)
        from diffusers.utils.peft_utils import (
            set_adapter_layers,
            set_weights_and_activate_adapters,
        )

        for component in COMPONENTS:
            model = getattr(self.pipe, component, None)
            if model is None or not any(component in p for p in self.parts.values()):
                continue
            uses = [u for u in networks.loras if component in self.parts[adapter_name(u)]]
            if not uses:
                set_adapter_layers(model, enabled=False)
                continue
            te = component in TEXT_ENCODERS
            weights = [u.te_weight if te else u.unet_weight for u in uses]
            set_adapter_layers(model, enabled=True)
            set_weights_and_activate_adapters(model, [adapter_name(u) for u in uses], weights)
        self.active = key
        return True
