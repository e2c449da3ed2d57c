"""Worlds with known answers, used by tests and benchmarks only (never by a command a user runs).

- `tiny_wan`: random-weight Wan folders in the real diffusers layout (T2V, I2V with/without CLIP, two experts).
- `gmm_flow`: the closed-form velocity of a Gaussian mixture under the linear flow-matching path.
- `toy_video`: a trained toy flow over bouncing-ball videos, scored with the physics residual.
- `motion_fields`: synthetic attention q/k whose AMF is a known displacement field.
- `toy_backend`: a second FlowBackend in pure torch (tiny attention velocity net, linear latent codec).
"""
