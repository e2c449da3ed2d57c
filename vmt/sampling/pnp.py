"""Predict-and-Perturb (P&P) self-refinement as an intervention in the one Euler loop.

At an outer step from sigma `s` to `s_next` with K inner iterations (K from the plan), the sampler refines
its own latent at the fixed noise level `s` with forward passes only:

    ii = 0  (Predict)            v = v(z, s);   x0 = z - s v;   zn = z + (s_next - s) v
    ii >= 1 (Perturb, Predict)   zt = (1 - s) x0_prev + s eps,  eps ~ N(0, I) fresh
                                 v = v(zt, s);  x0 = zt - s v;  zn = zt + (s_next - s) v

and takes `z <- zn` of the last iteration. The uncertainty gate (ii >= 1) measures per latent voxel
(frame, h, w) the change of the clean estimate over the channels, `U = ||x0 - x0_prev||_p / C`; voxels with
U < tau become certain (the union over the inner loop) and keep the previous iteration's `zn` and `x0`, so a
voxel certain at ii = 1 keeps the plain Euler update. When the certain fraction exceeds `certain_fraction`
the inner loop stops early. By Tweedie, one iteration is `z' = z + s^2 score(z) + s eps`: a Langevin-like
step with too little noise, which contracts samples toward the modes of the model's distribution at level s.

Plans map 0-based outer step indices to K: "2-5:3,6-14:1" (inclusive ranges), "none" (plain sampling) or
"default": DEFAULT_PLAN, the published 50-step plan "2-5:3,6-14:1" (K = 3 at steps 2-5, K = 1 at steps 6-14:
71 NFE at 50 steps), in step indices (the CLI clips it to shorter schedules). Items with decimal bounds are
sigma ranges: "0.99-0.80:1" refines every outer step whose sigma s has 0.80 <= s <= 0.99, so one plan
carries over to any schedule (e.g. the 4-8 steps of a step-distilled model); on the 50-step shift-3 grid of
Wan 480p the default plan refines the same steps as "0.99-0.961:3,0.96-0.88:1". Index and sigma items may
be mixed; a step both cover is an error.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import dataclass, field

import torch

from vmt.errors import VmtUsageError, param
from vmt.sampling.euler import Intervention, StepState, VelocityFn, euler_step

DEFAULT_PLAN = "2-5:3,6-14:1"
DEFAULT_TAU = 0.25
DEFAULT_CERTAIN_FRACTION = 0.999
DEFAULT_P_NORM = 1.0

_ITEM = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?\s*:\s*(\d+)$")
_SIGMA_ITEM = re.compile(r"^(\d*\.\d+)(?:\s*-\s*(\d*\.\d+))?\s*:\s*(\d+)$")
_SIGMA_TOL = 1e-6  # a bound written with 4 decimals still matches the float32 sigma it was read from


@dataclass(frozen=True)
class Plan:
    """Inner iterations per outer step: `ranges` of (first, last, K), 0-based and inclusive, disjoint; and
    `sigma_ranges` of (high, low, K): the steps whose sigma lies in [low, high], disjoint."""

    ranges: tuple[tuple[int, int, int], ...] = ()
    sigma_ranges: tuple[tuple[float, float, int], ...] = ()

    def k(self, index: int, sigma: float | None = None) -> int:
        """K at outer step `index` starting at `sigma` (0 when the step is not refined). Sigma ranges need the
        sigma; a step matched by an index range and a sigma range is an error (the plan is ambiguous)."""
        by_index = next(((a, b, k) for a, b, k in self.ranges if a <= index <= b), None)
        by_sigma = None
        if sigma is not None:
            by_sigma = next(((hi, lo, k) for hi, lo, k in self.sigma_ranges
                             if lo - _SIGMA_TOL <= sigma <= hi + _SIGMA_TOL), None)
        if by_index is not None and by_sigma is not None:
            raise VmtUsageError(f"{param('plan')} items {by_index[0]}-{by_index[1]} and {by_sigma[0]:g}-{by_sigma[1]:g} "
                                f"both cover outer step {index} (sigma {sigma:.4f}); each step may appear once")
        if by_index is not None:
            return by_index[2]
        return by_sigma[2] if by_sigma is not None else 0

    def on_grid(self, sigmas) -> Plan:
        """The plan as step indices on a schedule whose outer steps start at sigmas[0..n-1] (n = len - 1)."""
        ks = [self.k(i, float(sigmas[i])) for i in range(len(sigmas) - 1)]
        out = []
        for i, k in enumerate(ks):
            if k and out and out[-1][1] == i - 1 and out[-1][2] == k:
                out[-1] = (out[-1][0], i, k)
            elif k:
                out.append((i, i, k))
        return Plan(tuple(out))

    @property
    def empty(self) -> bool:
        return not self.ranges and not self.sigma_ranges

    @property
    def last_step(self) -> int:
        return max((b for _, b, _ in self.ranges), default=-1)

    def nfe(self, steps: int) -> int:
        """Model evaluations of a `steps`-step run with this plan and no early exit: steps + sum of K."""
        return steps + sum(self.k(i) for i in range(steps))

    def validate(self, steps: int) -> Plan:
        """Raise VmtUsageError when the plan refers to outer steps the schedule does not have."""
        if self.last_step >= steps:
            a, b, _ = next(r for r in self.ranges if r[1] >= steps)
            raise VmtUsageError(
                f"{param('plan')} range {a}-{b} goes beyond the {steps}-step schedule (outer steps 0-{steps - 1}); "
                f"shorten the range or raise {param('steps')}"
            )
        return self

    def clipped(self, steps: int) -> Plan:
        """The plan restricted to the outer steps 0..steps-1 (sigma ranges are kept: they fit any grid)."""
        out = tuple((a, min(b, steps - 1), k) for a, b, k in self.ranges if a < steps)
        return Plan(out, self.sigma_ranges)

    def __str__(self) -> str:
        if self.empty:
            return "none"
        items = [(f"{a}:{k}" if a == b else f"{a}-{b}:{k}") for a, b, k in self.ranges]
        items += [(f"{hi:g}:{k}" if hi == lo else f"{hi:g}-{lo:g}:{k}") for hi, lo, k in self.sigma_ranges]
        return ",".join(items)


def parse_plan(text: str) -> Plan:
    """Parse "2-5:3,6-14:1" (also "none" and "default"). Ranges are 0-based, inclusive and must not overlap."""
    s = text.strip().lower()
    if s in ("none", "off", ""):
        return Plan()
    if s == "default":
        s = DEFAULT_PLAN
    ranges = []
    sigma_ranges = []
    for item in s.split(","):
        m = _ITEM.match(item.strip())
        ms = _SIGMA_ITEM.match(item.strip()) if m is None else None
        if ms is not None:
            hi = float(ms.group(1))
            lo = float(ms.group(2)) if ms.group(2) is not None else hi
            hi, lo = max(hi, lo), min(hi, lo)
            k = int(ms.group(3))
            if hi > 1:
                raise VmtUsageError(f"{param('plan')} sigma range {item.strip()!r} goes above 1 (sigmas are in [0, 1])")
            if k < 1:
                raise VmtUsageError(f"{param('plan')} range {item.strip()!r} has K = 0; leave those sigmas out of the plan")
            sigma_ranges.append((hi, lo, k))
            continue
        if m is None:
            raise VmtUsageError(
                f"{param('plan')} item {item.strip()!r} is not STEP:K or FIRST-LAST:K with integers, nor HIGH-LOW:K with "
                f"sigmas (e.g. {param('plan')} \"2-5:3,6-14:1\", {param('plan')} \"0.99-0.8:1\", or {param('plan')} none)"
            )
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        k = int(m.group(3))
        if b < a:
            raise VmtUsageError(f"{param('plan')} range {a}-{b} runs backwards; write it as {b}-{a}:{k}")
        if k < 1:
            raise VmtUsageError(f"{param('plan')} range {item.strip()!r} has K = 0; leave those steps out of the plan")
        ranges.append((a, b, k))
    ranges.sort()
    for (a1, b1, _), (a2, b2, _) in itertools.pairwise(ranges):
        if a2 <= b1:
            raise VmtUsageError(f"{param('plan')} ranges {a1}-{b1} and {a2}-{b2} overlap; each outer step may appear once")
    sigma_ranges.sort(reverse=True)
    for (h1, l1, _), (h2, l2, _) in itertools.pairwise(sigma_ranges):
        if h2 >= l1:
            raise VmtUsageError(f"{param('plan')} sigma ranges {h1:g}-{l1:g} and {h2:g}-{l2:g} overlap; each sigma may "
                                "appear once")
    return Plan(tuple(ranges), tuple(sigma_ranges))


def check_gate(tau: float, certain_fraction: float, p_norm: float) -> None:
    """Validate the gate parameters (tau >= 0, may be inf; certain fraction in (0, 1]; p >= 1)."""
    if math.isnan(tau) or tau < 0:
        raise VmtUsageError(f"{param('tau')} must be >= 0 (0 refines every voxel, inf none), got {tau}")
    if math.isnan(certain_fraction) or not 0 < certain_fraction <= 1:
        raise VmtUsageError(
            f"{param('certain_fraction')} must be in (0, 1] (1 turns early exit off), got {certain_fraction}"
        )
    if math.isnan(p_norm) or p_norm < 1:
        raise VmtUsageError(f"{param('p_norm')} must be >= 1, got {p_norm}")


def uncertainty(x0: torch.Tensor, x0_prev: torch.Tensor, p_norm: float = 1.0) -> torch.Tensor:
    """Per-voxel change of the clean estimate: ||x0 - x0_prev||_p over channels / C. (B, C, ...) -> (B, 1, ...)."""
    d = (x0 - x0_prev).abs()
    c = d.shape[1]
    if p_norm == 1.0:
        return d.sum(dim=1, keepdim=True) / c
    return torch.linalg.vector_norm(d, ord=p_norm, dim=1, keepdim=True) / c


@dataclass
class PnPStepInfo:
    """What one refined outer step did: evaluations, inner iterations run, certain fraction after each."""

    k: int
    nfe: int = 0
    iterations: int = 0
    certain_fraction: list[float] = field(default_factory=list)
    early_exit: bool = False

    def as_record(self) -> dict:
        return {"k": self.k, "nfe": self.nfe, "iterations": self.iterations,
                "certain_fraction": [round(f, 6) for f in self.certain_fraction], "early_exit": self.early_exit}


def pnp_step(
    velocity: VelocityFn,
    z: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    k: int,
    tau: float = DEFAULT_TAU,
    certain_fraction: float = DEFAULT_CERTAIN_FRACTION,
    p_norm: float = DEFAULT_P_NORM,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, PnPStepInfo]:
    """One outer step with K >= 1 P&P iterations at level `sigma`; returns (latent at sigma_next, info).

    z: (B, C, F, h, w) (any trailing voxel layout works; channels are dim 1). Fresh noise is drawn from
    `generator` on its device (CPU when None) in z's dtype and moved to z's device if needed.
    """
    info = PnPStepInfo(k)
    s = sigma.to(z.dtype) if torch.is_tensor(sigma) else torch.tensor(sigma, dtype=z.dtype)
    v = velocity(z, sigma)
    info.nfe += 1
    x0 = z - s * v
    zn = euler_step(z, v, sigma, sigma_next)
    certain = torch.zeros((z.shape[0], 1, *z.shape[2:]), dtype=torch.bool, device=z.device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    for _ in range(k):
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=gen_device).to(z.device)
        zt = (1 - s) * x0 + s * eps
        v = velocity(zt, sigma)
        info.nfe += 1
        info.iterations += 1
        x0_new = zt - s * v
        zn_new = euler_step(zt, v, sigma, sigma_next)
        certain |= uncertainty(x0_new, x0, p_norm) < tau
        x0_new = torch.where(certain, x0, x0_new)
        zn_new = torch.where(certain, zn, zn_new)
        info.certain_fraction.append(float(certain.float().mean()))
        x0, zn = x0_new, zn_new
        if info.certain_fraction[-1] > certain_fraction:
            info.early_exit = info.iterations < k
            break
    return zn, info


class PredictPerturb(Intervention):
    """The P&P intervention: replaces the Euler update of the outer steps in `plan` by `pnp_step`.

    Composes with `before_step` interventions (e.g. motion guidance): it refines whatever latent the step
    starts from. Per-step records (K, NFE, certain fraction per inner iteration, time) go to
    `state.record["pnp"]` and `steps`; `summary` is the out.json block of a run.
    """

    name = "pnp"

    def __init__(self, plan: Plan, tau: float = DEFAULT_TAU, certain_fraction: float = DEFAULT_CERTAIN_FRACTION,
                 p_norm: float = DEFAULT_P_NORM, seed: int = 0, sync_cuda: bool = False):
        check_gate(tau, certain_fraction, p_norm)
        self.plan = plan
        self.tau = float(tau)
        self.certain_fraction = float(certain_fraction)
        self.p_norm = float(p_norm)
        # A generator of its own, so the start noise (drawn from the seed by generate()) is unchanged. It lives
        # on the latent's device: drawing a 480x832x81 latent's noise on the CPU and copying it costs tens of
        # ms per inner iteration, measurable next to a DiT pass. Results are thus reproducible per device.
        self.seed = (int(seed) + 0x5EED) % 2**64  # a 64-bit seed; wraps only for seeds within 0x5EED of the top
        self.sync_cuda = sync_cuda
        self._shared: torch.Generator | None = None
        self.reset()

    def reset(self) -> None:
        """A fresh run: no records, and this intervention's generators start again from the seed."""
        self._generators: dict[str, torch.Generator] = {}
        self.steps: list[dict] = []
        self.sigmas_seen: dict[int, float] = {}  # outer step -> its sigma (resolves sigma ranges in summary)

    def bind_noise(self, generator: torch.Generator | None) -> None:
        """Draw the perturbations from the run's own generator (continuing the start latent's stream, the
        release's order); None: from this intervention's seed + 0x5EED generators."""
        self._shared = generator

    def generator(self, device: torch.device) -> torch.Generator:
        if self._shared is not None:
            return self._shared
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[key]

    def step(self, state: StepState, velocity: VelocityFn) -> torch.Tensor | None:
        self.sigmas_seen[state.index] = float(state.sigma)
        k = self.plan.k(state.index, float(state.sigma))
        if k == 0:
            return None
        t0 = time.perf_counter()
        z_next, info = pnp_step(velocity, state.z, state.sigma, state.sigma_next, k, self.tau,
                                self.certain_fraction, self.p_norm, self.generator(state.z.device))
        if self.sync_cuda:
            torch.cuda.synchronize()
        rec = {**info.as_record(), "time_s": round(time.perf_counter() - t0, 4)}
        state.record["pnp"] = rec
        self.steps.append({"step": state.index, **rec})
        return z_next

    def step_summary(self, state: StepState) -> dict[str, str]:
        """Display field "pnp" on refined steps: inner iterations run / planned, the final certain fraction."""
        rec = state.record.get("pnp")
        if rec is None:
            return {}
        return {"pnp": f"K={rec['iterations']}/{rec['k']} certain={rec['certain_fraction'][-1]:.3f}"}

    def summary(self, steps: int, total_nfe: int | None = None) -> dict:
        """The out.json block: plan, gate, NFE planned/used, certain fractions and time of refined steps."""
        extra = sum(r["nfe"] - 1 for r in self.steps)
        if self.plan.sigma_ranges:
            planned = steps + sum(self.plan.k(i, self.sigmas_seen.get(i)) for i in range(steps))
            resolved = self.plan.on_grid([self.sigmas_seen[i] for i in sorted(self.sigmas_seen)] + [0.0])
        else:
            planned, resolved = self.plan.nfe(steps), self.plan
        return {
            "plan": str(self.plan),
            "plan_steps": str(resolved),
            "tau": self.tau,
            "certain_fraction_threshold": self.certain_fraction,
            "p_norm": self.p_norm,
            "nfe_planned": planned,
            "nfe_sampler": steps + extra,
            "nfe_saved_by_early_exit": planned - (steps + extra),
            "refined_steps": len(self.steps),
            "final_certain_fraction": {str(r["step"]): r["certain_fraction"][-1] for r in self.steps},
            "time_refined_steps_s": round(sum(r["time_s"] for r in self.steps), 4),
        }
