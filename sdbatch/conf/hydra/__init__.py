"""Hydra config groups that sdbatch ships for Hydra itself (hydra/launcher=...)."""
