"""Flow-matching samplers for Wan2.1 / InfiniteTalk: shifted Euler, UniPC (bh2) and DPM++ 2M.

Conventions (reference doc §4.4):
- Flow matching: x_s = (1 - s)·x0 + s·noise, the DiT predicts the velocity v = noise - x0, so the
  clean estimate at noise level s is x0 = x - s·v.
- `sigmas` are noise levels in [0, 1], decreasing, steps + 1 long and ending with a terminal 0.
  The model is fed `timesteps` = 1000·sigma (float32), one per step.
- `shift` warps every sigma as shift·s / (1 + (shift - 1)·s); shift = 1 keeps it unchanged.

Base schedules (each solver uses the schedule of the reference it follows):
- "euler": InfiniteTalk's own loop, t = linspace(1000, 1, N) shifted, then a terminal 0.
- "unipc", "dpmpp_2m": Wan2.1's FlowUniPC schedule, s = linspace(1, 1/1000, N + 1)[:-1] shifted,
  then a terminal 0 (identical to diffusers' `use_flow_sigmas=True` UniPC schedule).

denoise < 1 follows ComfyUI's KSampler: build the schedule for int(steps / denoise) steps and keep
its last steps + 1 sigmas, so exactly `steps` model calls run, starting part-way down the noise
levels; the start latent is `scale_noise(x0, noise)` = add_noise at sigmas[0].
"""
from __future__ import annotations

import math

import torch

SCHEDULER_NAMES = ("euler", "unipc", "dpmpp_2m")
NUM_TRAIN_TIMESTEPS = 1000

# log-SNR is -inf at sigma = 1; the multistep solvers (like Wan's FlowUniPC and diffusers) use a
# sigma just below 1 there so that step ratios stay finite. Rounded to float32 like the schedule.
_SIGMA_CEIL = float(torch.tensor(1.0 - 1e-6, dtype=torch.float32))


# ----------------------------------------------------------------------------- schedules

def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift s' = shift·s / (1 + (shift - 1)·s): spends more steps at high noise for shift > 1."""
    _check_shift(shift)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def infinitetalk_sigmas(steps: int, shift: float) -> torch.Tensor:
    """InfiniteTalk's Euler schedule: linspace(1000, 1, steps)/1000 shifted, plus a terminal 0."""
    _check_steps(steps)
    t = torch.linspace(float(NUM_TRAIN_TIMESTEPS), 1.0, steps, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
    return torch.cat([shift_sigmas(t, shift), t.new_zeros(1)]).to(torch.float32)


def wan_unipc_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Wan2.1's FlowUniPC schedule: linspace(1, 1/1000, steps + 1)[:-1] shifted, plus a terminal 0."""
    _check_steps(steps)
    s = torch.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigmas(s, shift), s.new_zeros(1)]).to(torch.float32)


_BASE_SCHEDULES = {"euler": infinitetalk_sigmas, "unipc": wan_unipc_sigmas, "dpmpp_2m": wan_unipc_sigmas}


def denoise_total_steps(steps: int, denoise: float) -> int:
    """Length of the full schedule whose tail is run for a partial denoise (ComfyUI: int(steps/denoise))."""
    _check_steps(steps)
    _check_denoise(denoise)
    if denoise > 0.9999:
        return steps
    return int(steps / denoise)


def schedule_sigmas(name: str, steps: int, shift: float, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas (steps + 1, float32, ending at 0) that `make_scheduler` would use."""
    name = _check_name(name)
    total = denoise_total_steps(steps, denoise)
    return _BASE_SCHEDULES[name](total, shift)[-(steps + 1):].clone()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Flow-matching interpolation (1 - sigma)·x0 + sigma·noise (a point on the straight noising path)."""
    if x0.shape != noise.shape:
        raise ValueError(f"add_noise: x0 shape {tuple(x0.shape)} and noise shape {tuple(noise.shape)} differ")
    work = torch.promote_types(x0.dtype, torch.float32)
    sigma = torch.as_tensor(sigma, dtype=work, device=x0.device)
    out = (1.0 - sigma) * x0.to(work) + sigma * noise.to(work)
    return out.to(x0.dtype)


# ----------------------------------------------------------------------------- solvers

class FlowScheduler:
    """Shared schedule handling; subclasses implement `_update` (one solver step in float32).

    Call `step(velocity, i, sample)` for i = 0, 1, ..., steps - 1 in order; multistep solvers keep a
    short history of x0 estimates, which `reset()` (or a new run starting at i = 0) clears.
    """

    name = "base"

    def __init__(self, sigmas: torch.Tensor, shift: float | None = None, denoise: float = 1.0):
        self.sigmas = _check_sigmas(sigmas)
        self.timesteps = (self.sigmas[:-1].double() * NUM_TRAIN_TIMESTEPS).to(torch.float32)
        self.shift = shift
        self.denoise = denoise
        # Python floats for the coefficient math: exact copies of the float32 schedule.
        self._s = [float(s) for s in self.sigmas]
        self.reset()

    @property
    def steps(self) -> int:
        return len(self._s) - 1

    def __len__(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, steps={self.steps}, shift={self.shift}, "
                f"denoise={self.denoise}, sigma_start={self._s[0]:.4f})")

    def reset(self) -> None:
        """Forget the multistep history (call before re-using the schedule for a new sample/window)."""
        self._next_index = 0
        self._x0_hist: list[torch.Tensor] = []

    def scale_noise(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Start latent for this schedule: noise at sigmas[0] (pure noise when denoise = 1)."""
        if self._s[0] >= 1.0:
            return noise.clone()
        return add_noise(x0, noise, self._s[0])

    def predict_x0(self, velocity: torch.Tensor, step_index: int, sample: torch.Tensor) -> torch.Tensor:
        """Clean-latent estimate x0 = x - sigma·v at this step (for previews and metrics)."""
        self._check_index_range(step_index)
        work = torch.promote_types(sample.dtype, torch.float32)
        return (sample.to(work) - self._s[step_index] * velocity.to(work)).to(sample.dtype)

    def step(self, velocity: torch.Tensor, step_index: int, sample: torch.Tensor) -> torch.Tensor:
        """Advance `sample` from sigmas[step_index] to sigmas[step_index + 1] given the model velocity."""
        self._check_index_range(step_index)
        if step_index == 0:
            self.reset()
        elif step_index != self._next_index:
            raise ValueError(
                f"{self.name} scheduler: step_index {step_index} out of order (expected {self._next_index}); "
                "steps must run 0, 1, 2, ...; call reset() to start over")
        if velocity.shape != sample.shape:
            raise ValueError(f"{self.name} scheduler: velocity shape {tuple(velocity.shape)} does not match "
                             f"sample shape {tuple(sample.shape)}")
        work = torch.promote_types(sample.dtype, torch.float32)   # bf16/fp16 latents step in fp32
        # copy: UniPC keeps this sample for its corrector, and callers edit latents in place
        out = self._update(velocity.to(work), step_index, sample.to(work, copy=True))
        self._next_index = step_index + 1
        return out.to(sample.dtype)

    def _update(self, v: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_index_range(self, step_index: int) -> None:
        if not 0 <= int(step_index) < self.steps:
            raise IndexError(f"{self.name} scheduler: step_index {step_index} outside 0..{self.steps - 1}")

    # log-SNR helpers shared by the multistep solvers
    def _solver_sigma(self, i: int) -> float:
        return min(self._s[i], _SIGMA_CEIL)

    def _lam(self, i: int) -> float:
        """Half log-SNR log(alpha/sigma) with alpha = 1 - sigma, the solvers' time variable."""
        s = self._solver_sigma(i)
        return math.log(1.0 - s) - math.log(s)


class EulerFlowScheduler(FlowScheduler):
    """First-order Euler on the flow ODE: x ← x + v·(sigma_next - sigma), InfiniteTalk's own sampler."""

    name = "euler"

    def _update(self, v, i, x):
        return x + v * (self._s[i + 1] - self._s[i])


class UniPCFlowScheduler(FlowScheduler):
    """UniPC multistep (bh2, order 2, data prediction) as in Wan2.1's FlowUniPCMultistepScheduler.

    Each call first corrects the sample it receives (UniC, using the fresh model output) and then
    predicts the next one (UniP). The first step is order 1 (warm-up) and so is the last one
    (lower_order_final), which lands exactly on the x0 estimate at sigma = 0.
    """

    name = "unipc"
    order = 2

    def reset(self) -> None:
        super().reset()
        self._last_sample: torch.Tensor | None = None
        self._last_order = 1

    def _coeffs(self, s_idx: int, t_idx: int) -> tuple[float, float, float, float, float]:
        """Step s -> t: (sigma_t/sigma_s, alpha_t, h, h·phi_1 = B(h) for bh2, hh = -h)."""
        s, t = self._solver_sigma(s_idx), self._s[t_idx]
        h = self._lam(t_idx) - self._lam(s_idx)
        hh = -h
        em1 = math.expm1(hh)
        return t / s, 1.0 - t, h, em1, hh

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        m0 = self._x0_hist[-1]
        if self._s[i + 1] == 0.0:            # h = inf: the exponential integrator returns x0 exactly
            return m0.clone()
        ratio, alpha_t, h, em1, _ = self._coeffs(i, i + 1)
        x_t = ratio * x - (alpha_t * em1) * m0
        if order == 2:
            rk = (self._lam(i - 1) - self._lam(i)) / h
            d1 = (self._x0_hist[-2] - m0) / rk
            x_t = x_t - (alpha_t * em1 * 0.5) * d1   # bh2 order 2 uses the fixed weight 1/2
        return x_t

    def _correct(self, x_prev: torch.Tensor, i: int, x0_new: torch.Tensor, order: int) -> torch.Tensor:
        """UniC: redo the step (i-1) -> i with the model output at i included (order + 1 accurate)."""
        m0 = self._x0_hist[-1]
        ratio, alpha_t, h, em1, hh = self._coeffs(i - 1, i)
        b_h = em1                                  # bh2
        d1_t = x0_new - m0
        base = ratio * x_prev - (alpha_t * em1) * m0
        if order == 1:
            return base - (alpha_t * b_h * 0.5) * d1_t
        # order 2: solve [[1, 1], [rk, 1]]·rho = b for the weights of the history and new differences
        rk = (self._lam(i - 2) - self._lam(i - 1)) / h
        g1 = em1 / hh - 1.0
        g2 = g1 / hh - 0.5
        b1, b2 = g1 / b_h, 2.0 * g2 / b_h
        rho_hist = (b1 - b2) / (1.0 - rk)
        rho_new = b1 - rho_hist
        d1 = (self._x0_hist[-2] - m0) / rk
        return base - (alpha_t * b_h) * (rho_hist * d1 + rho_new * d1_t)

    def _update(self, v, i, x):
        x0 = x - self._solver_sigma(i) * v
        if i > 0 and self._last_sample is not None:
            x = self._correct(self._last_sample, i, x0, self._last_order)
        self._x0_hist = (self._x0_hist + [x0])[-self.order:]
        order = min(self.order, self.steps - i, len(self._x0_hist))
        self._last_sample, self._last_order = x, order
        return self._predict(x, i, order)


class DPMPP2MFlowScheduler(FlowScheduler):
    """DPM-Solver++ 2M (midpoint form, data prediction) on the flow log-SNR.

    Same update as diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_type="midpoint") and k-diffusion's dpmpp_2m; first step and the final step to sigma = 0
    are first order.
    """

    name = "dpmpp_2m"

    def _update(self, v, i, x):
        x0 = x - self._solver_sigma(i) * v
        self._x0_hist = (self._x0_hist + [x0])[-2:]
        if self._s[i + 1] == 0.0:
            return x0.clone()
        s, t = self._solver_sigma(i), self._s[i + 1]
        h = self._lam(i + 1) - self._lam(i)
        coef = (1.0 - t) * math.expm1(-h)
        if len(self._x0_hist) < 2:
            return (t / s) * x - coef * x0
        r = (self._lam(i) - self._lam(i - 1)) / h
        d = x0 + (0.5 / r) * (x0 - self._x0_hist[0])
        return (t / s) * x - coef * d


_CLASSES = {"euler": EulerFlowScheduler, "unipc": UniPCFlowScheduler, "dpmpp_2m": DPMPP2MFlowScheduler}


def make_scheduler(name: str, steps: int, shift: float, denoise: float = 1.0) -> FlowScheduler:
    """Build a fresh scheduler ("euler", "unipc" or "dpmpp_2m") for `steps` model calls."""
    name = _check_name(name)
    return _CLASSES[name](schedule_sigmas(name, steps, shift, denoise), shift=float(shift), denoise=float(denoise))


def make_scheduler_from_sigmas(name: str, sigmas) -> FlowScheduler:
    """Build a scheduler on explicit sigmas (decreasing, in [0, 1], ending at 0), e.g. a ComfyUI SIGMAS input."""
    name = _check_name(name)
    return _CLASSES[name](torch.as_tensor(sigmas, dtype=torch.float32))


# ----------------------------------------------------------------------------- input checks

def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _CLASSES:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULER_NAMES)}")
    return key


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _check_shift(shift) -> None:
    if not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0 (InfiniteTalk uses 7 at 480p, 11 at 720p), got {shift!r}")


def _check_denoise(denoise) -> None:
    if not isinstance(denoise, (int, float)) or not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1] (1 = start from pure noise), got {denoise!r}")


def _check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float32).flatten()
    if sigmas.numel() < 2:
        raise ValueError(f"sigmas need at least 2 entries (one step), got {sigmas.numel()}")
    if not torch.isfinite(sigmas).all() or sigmas.min() < 0 or sigmas.max() > 1:
        raise ValueError(f"sigmas must lie in [0, 1], got range [{float(sigmas.min())}, {float(sigmas.max())}]")
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must end with a terminal 0, got last value {float(sigmas[-1])}")
    diffs = sigmas[1:] - sigmas[:-1]
    if (diffs >= 0).any():
        k = int(torch.nonzero(diffs >= 0)[0])
        raise ValueError(f"sigmas must be strictly decreasing; sigmas[{k}]={float(sigmas[k])} "
                         f"<= sigmas[{k + 1}]={float(sigmas[k + 1])}")
    return sigmas
