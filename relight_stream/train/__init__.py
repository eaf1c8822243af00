"""InstructPix2Pix training on relight-stream's triplet shards.

``data`` (shards -> batches, split by rank and worker) -> ``step`` (latents, noise, conditioning dropout, loss)
-> ``loop`` (accelerate, EMA, checkpoints, resume, NaN handling, SIGTERM; entry ``run_train``) -> ``final/``
pipeline folder (``card``) -> ``infer`` (``run_infer``). ``latents`` (``run_cache_latents``) encodes shards once
with the VAE and text encoder(s). ``model`` holds the conditioning conventions shared by all of them.
"""
