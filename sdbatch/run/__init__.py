"""Stage 3, running a plan: the runner, resume, the output lock and clean stops, GPU choice."""
