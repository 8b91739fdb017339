"""Launcher configs: hydra/launcher=local | submitit_local | slurm | ray (see docs/launchers.md)."""
