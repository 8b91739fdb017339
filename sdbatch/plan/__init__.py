"""Stage 1, config -> jobs -> batches: recipes, axes, prompt syntax, samplers. Pure: no torch."""
