"""EncGAN3 / REncGAN3: a content/movement video VAE-GAN with a G3AN-style generator, and the recall chain
that makes long videos as a Markov chain of short clips at constant memory.

Modules: config (sizes, presets), generator / attention / encoders / discriminators (networks), model (the
VAE and its fitted sampling priors), gaussians (the Gaussian fits behind them), motion_prior (the chain's
learned motion prior), losses, train (one step, recall training), recall (long sampling), data (clip sources,
moving digits), checkpoint (run folders: safetensors + JSON).
"""
