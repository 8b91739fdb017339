"""Stage 2, batches -> pixels: the diffusers pipeline, loading, prompt encoding, noise and
schedulers. The only stage that imports torch."""
