"""Flow-matching schedulers vs diffusers, InfiniteTalk's fp32 timestep formula and analytic ODE solutions."""
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from wanfp4.wan.schedulers import (
    SCHEDULER_NAMES,
    add_noise,
    denoise_total_steps,
    infinitetalk_sigmas,
    make_scheduler,
    make_scheduler_from_sigmas,
    schedule_sigmas,
    shift_sigmas,
    wan_unipc_sigmas,
)

SHAPE = (2, 4, 3, 5)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers


# ----------------------------------------------------------------------------- toy problems

def gaussian_problem(seed=0):
    """Data x0 ~ N(mu, std^2) per element: the exact velocity field and the exact ODE end point are known.

    x_s = (1-s)x0 + s*eps has marginal N((1-s)mu, (1-s)^2 std^2 + s^2); the probability-flow ODE keeps
    the standardized coordinate, so the noise z at s = 1 ends at mu + std*z.
    """
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(SHAPE, generator=g)
    std = torch.rand(SHAPE, generator=g) * 1.7 + 0.3
    z = torch.randn(SHAPE, generator=g)

    def velocity(x, sigma):
        s = float(sigma)
        a = 1.0 - s
        x0_hat = mu + a * std**2 / (a * a * std**2 + s * s) * (x - a * mu)
        return (x - x0_hat) / s

    return velocity, z, mu + std * z


def delta_problem(seed=1):
    """A single data point x0: v(x, s) = (x - x0)/s; every exact flow solver must land on x0."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(SHAPE, generator=g)
    noise = torch.randn(SHAPE, generator=g)
    return (lambda x, s: (x - x0) / float(s)), x0, noise


def run_ours(sched, velocity, x):
    for i in range(sched.steps):
        x = sched.step(velocity(x, sched.sigmas[i]), i, x)
    return x


def run_diffusers(ref, velocity, x):
    ref.set_begin_index(0)   # integer timesteps may repeat; index by position, not by lookup
    for i, t in enumerate(ref.timesteps):
        x = ref.step(velocity(x, ref.sigmas[i]), t, x).prev_sample
    return x


def diffusers_unipc(shift):
    return UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=shift, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")


def diffusers_dpmpp_2m(shift=1.0):
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=shift, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero")


def infinitetalk_timesteps_fp32(n, shift):
    """The official loop's timesteps, written out independently in float32 numpy (reference doc §4.4)."""
    t = np.append(np.linspace(1000, 1, n, dtype=np.float32), np.float32(0.0))
    s = t / np.float32(1000.0)
    return np.float32(1000.0) * np.float32(shift) * s / (np.float32(1.0) + np.float32(shift - 1.0) * s)


# ----------------------------------------------------------------------------- Euler

@pytest.mark.parametrize("n", [4, 8, 40])
@pytest.mark.parametrize("shift", [1.0, 2.0, 7.0, 11.0])
def test_euler_timesteps_match_diffusers_and_official_formula(n, shift):
    ours = make_scheduler("euler", n, shift)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.001, n))
    assert ours.timesteps.dtype == torch.float32 and ours.timesteps.shape == (n,)
    assert len(ours.sigmas) == n + 1 and ours.sigmas[-1] == 0 and ours.sigmas[0] == 1
    assert (ours.timesteps - ref.timesteps).abs().max() <= 1e-3
    assert (ours.sigmas - ref.sigmas).abs().max() <= 1e-6
    official = torch.from_numpy(infinitetalk_timesteps_fp32(n, shift))
    assert (ours.sigmas * 1000 - official).abs().max() <= 1e-3


def test_euler_one_step_and_trajectory_match_diffusers():
    velocity, z, _ = gaussian_problem()
    ours = make_scheduler("euler", 12, 7.0)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.001, 12))
    v = torch.randn(SHAPE)
    one = ours.step(v, 0, z)
    assert torch.allclose(one, ref.step(v, ref.timesteps[0], z).prev_sample, atol=1e-6)
    assert torch.allclose(one, z - v * (1.0 - float(ours.sigmas[1])), atol=1e-6)   # x - v·Δσ by hand
    ours.reset()
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.001, 12))
    assert (run_ours(ours, velocity, z) - run_diffusers(ref, velocity, z)).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- UniPC and DPM++ 2M vs diffusers

@pytest.mark.parametrize("n", [1, 2, 3, 8, 40])
@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
def test_unipc_trajectory_matches_diffusers(n, shift):
    velocity, z, _ = gaussian_problem()
    ours = make_scheduler("unipc", n, shift)
    ref = diffusers_unipc(shift)
    ref.set_timesteps(n)
    # same schedule (diffusers moves sigma = 1 down by 1e-6 to keep log-SNR finite; we do that inside the solver)
    assert (ours.sigmas - ref.sigmas).abs().max() <= 2e-6
    assert (ours.timesteps - ref.timesteps.float()).abs().max() <= 1.0         # diffusers truncates to int
    diff = (run_ours(ours, velocity, z) - run_diffusers(ref, velocity, z)).abs().max()
    assert diff <= 2e-5, f"UniPC differs from diffusers by {diff}"


@pytest.mark.parametrize("n", [1, 2, 3, 8, 40])
@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
def test_dpmpp_2m_trajectory_matches_diffusers_on_our_schedule(n, shift):
    velocity, z, _ = gaussian_problem()
    ours = make_scheduler("dpmpp_2m", n, shift)
    ref = diffusers_dpmpp_2m()
    ref.set_timesteps(n)
    sigmas = ours.sigmas.clone()
    sigmas[0] = min(float(sigmas[0]), 1.0 - 1e-6)       # diffusers' DPM has no guard for log(1 - 1) itself
    ref.sigmas, ref.timesteps = sigmas, ours.timesteps.clone()
    diff = (run_ours(ours, velocity, z) - run_diffusers(ref, velocity, z)).abs().max()
    assert diff <= 2e-5, f"DPM++ 2M differs from diffusers by {diff}"


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_explicit_sigmas_match_diffusers(name):
    """Custom sigmas (diffusers' own flow DPM schedule, starting at shift(0.999) < 1) via make_scheduler_from_sigmas."""
    velocity, z, _ = gaussian_problem(3)
    dpm = diffusers_dpmpp_2m(5.0)
    dpm.set_timesteps(10)
    sigmas = dpm.sigmas.clone()
    assert 0 < sigmas[0] < 1 and sigmas[-1] == 0
    if name == "dpmpp_2m":
        ref = dpm
    elif name == "unipc":
        ref = diffusers_unipc(1.0)                       # flow_shift 1: the given sigmas are used as they are
        ref.set_timesteps(sigmas=sigmas[:-1].numpy())
    else:
        ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        ref.set_timesteps(sigmas=sigmas[:-1].numpy())
    assert torch.allclose(ref.sigmas, sigmas)
    ours = make_scheduler_from_sigmas(name, sigmas)
    start = add_noise(torch.zeros(SHAPE), z, sigmas[0])
    diff = (run_ours(ours, velocity, start) - run_diffusers(ref, velocity, start)).abs().max()
    assert diff <= 2e-5, f"{name} differs from diffusers by {diff}"


# ----------------------------------------------------------------------------- convergence

@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 5, 40])
def test_all_solvers_recover_x0_on_the_linear_problem(name, steps):
    velocity, x0, noise = delta_problem()
    out = run_ours(make_scheduler(name, steps, 5.0), velocity, noise)
    assert (out - x0).abs().max() <= 1e-5


@pytest.mark.parametrize("name,min_ratio", [("euler", 1.7), ("unipc", 3.0), ("dpmpp_2m", 2.5)])
def test_error_shrinks_at_the_solver_order(name, min_ratio):
    """Doubling the steps cuts the error to the exact Gaussian ODE end point ~2x (Euler), ~4x (2nd order)."""
    velocity, z, exact = gaussian_problem()
    errs = [(run_ours(make_scheduler(name, n, 1.0), velocity, z) - exact).abs().max().item() for n in (20, 40, 80)]
    assert errs[0] / errs[1] >= min_ratio and errs[1] / errs[2] >= min_ratio, errs
    assert errs[2] < 0.08


def test_second_order_solvers_beat_euler():
    velocity, z, exact = gaussian_problem(5)
    err = {n: (run_ours(make_scheduler(n, 20, 3.0), velocity, z) - exact).abs().max().item() for n in SCHEDULER_NAMES}
    assert err["unipc"] < err["euler"] / 3 and err["dpmpp_2m"] < err["euler"] / 3, err


# ----------------------------------------------------------------------------- denoise, shift, noise

def test_denoise_keeps_the_tail_of_a_longer_schedule():
    assert denoise_total_steps(10, 1.0) == 10
    assert denoise_total_steps(10, 0.99995) == 10
    assert denoise_total_steps(10, 0.6) == 16            # int(16.67), as ComfyUI's KSampler (not round -> 17)
    assert denoise_total_steps(10, 0.3) == 33
    for name, base in (("euler", infinitetalk_sigmas), ("unipc", wan_unipc_sigmas), ("dpmpp_2m", wan_unipc_sigmas)):
        s = make_scheduler(name, 10, 5.0, denoise=0.6)
        assert len(s.sigmas) == 11 and len(s.timesteps) == 10 and len(s) == 10
        assert torch.equal(s.sigmas, base(16, 5.0)[-11:])
        assert 0 < s.sigmas[0] < 1 and s.sigmas[-1] == 0
        assert torch.equal(s.sigmas, schedule_sigmas(name, 10, 5.0, 0.6))
        assert torch.equal(make_scheduler(name, 10, 5.0, denoise=1.0).sigmas, base(10, 5.0))
    # less denoise -> starts at less noise
    starts = [float(make_scheduler("euler", 8, 7.0, denoise=d).sigmas[0]) for d in (1.0, 0.8, 0.5, 0.2)]
    assert starts == sorted(starts, reverse=True) and starts[0] == 1.0


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_partial_denoise_from_scale_noise_recovers_x0(name):
    velocity, x0, noise = delta_problem(7)
    s = make_scheduler(name, 6, 3.0, denoise=0.5)
    start = s.scale_noise(x0, noise)
    s0 = float(s.sigmas[0])
    assert torch.allclose(start, (1 - s0) * x0 + s0 * noise, atol=1e-6)
    assert (run_ours(s, velocity, start) - x0).abs().max() <= 1e-5
    full = make_scheduler(name, 6, 3.0)
    assert torch.equal(full.scale_noise(x0, noise), noise)


def test_add_noise_matches_diffusers_scale_noise():
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.001, 10))
    k = 4
    expected = ref.scale_noise(x0, ref.timesteps[k:k + 1], noise)
    assert torch.allclose(add_noise(x0, noise, ref.sigmas[k]), expected, atol=1e-6)
    assert torch.equal(add_noise(x0, noise, 0.0), x0)
    assert add_noise(x0.bfloat16(), noise.bfloat16(), 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="shape"):
        add_noise(x0, noise[:1], 0.5)


def test_shift_one_is_identity_and_shift_moves_sigmas_up():
    s = torch.linspace(1, 0.001, 17, dtype=torch.float64)
    assert torch.equal(shift_sigmas(s, 1.0), s)
    assert torch.allclose(infinitetalk_sigmas(17, 1.0)[:-1].double(), s, atol=1e-7)
    assert (shift_sigmas(s[1:-1], 7.0) > s[1:-1]).all()
    assert shift_sigmas(torch.tensor([0.0, 1.0]), 7.0).tolist() == [0.0, 1.0]
    assert math.isclose(float(shift_sigmas(torch.tensor(0.5), 3.0)), 0.75)


# ----------------------------------------------------------------------------- state, dtype, errors

@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_rerun_and_reset_give_identical_results(name):
    velocity, z, _ = gaussian_problem()
    s = make_scheduler(name, 7, 5.0)
    first = run_ours(s, velocity, z)
    assert torch.equal(run_ours(s, velocity, z), first)       # step 0 starts a fresh history
    x = z
    for i in range(3):                                           # abandon a run half-way, then reset
        x = s.step(velocity(x, s.sigmas[i]), i, x)
    s.reset()
    assert torch.equal(run_ours(s, velocity, z), first)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_editing_the_latent_in_place_after_a_step_does_not_touch_the_history(name):
    """The sampler overwrites motion latents in place; the solver's stored state must not alias its inputs."""
    velocity, z, _ = gaussian_problem()
    clean = run_ours(make_scheduler(name, 5, 3.0), velocity, z)
    s = make_scheduler(name, 5, 3.0)
    x = z.clone()
    for i in range(s.steps):
        v = velocity(x, s.sigmas[i])
        nxt = s.step(v, i, x)
        x.mul_(0.0).add_(123.0)           # scribble over the tensor that was passed in
        v.zero_()
        x = nxt
    assert torch.equal(x, clean)


def test_history_matters_for_multistep_solvers():
    """Feeding the same step with a different history must change UniPC / DPM++ output (they are multistep)."""
    velocity, z, _ = gaussian_problem()
    for name in ("unipc", "dpmpp_2m"):
        a, b = make_scheduler(name, 6, 3.0), make_scheduler(name, 6, 3.0)
        xa = a.step(velocity(z, a.sigmas[0]), 0, z)
        b.step(velocity(z, 1.0) * 1.5, 0, z)
        v1 = velocity(xa, a.sigmas[1])
        assert not torch.allclose(a.step(v1, 1, xa), b.step(v1, 1, xa))


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_low_precision_samples_keep_their_dtype(name):
    velocity, z, exact = gaussian_problem()
    s = make_scheduler(name, 20, 3.0)
    x = z.bfloat16()
    for i in range(s.steps):
        x = s.step(velocity(x.float(), s.sigmas[i]).bfloat16(), i, x)
    assert x.dtype == torch.bfloat16
    ref = run_ours(make_scheduler(name, 20, 3.0), velocity, z)
    assert (x.float() - ref).abs().max() < 0.1


def test_predict_x0():
    s = make_scheduler("euler", 5, 3.0)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    assert torch.allclose(s.predict_x0(v, 2, x), x - float(s.sigmas[2]) * v)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="euler, unipc, dpmpp_2m"):
        make_scheduler("ddim", 10, 5.0)
    assert make_scheduler(" UniPC ", 3, 5.0).name == "unipc"
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            make_scheduler("euler", steps, 5.0)
    for shift in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="shift"):
            make_scheduler("euler", 10, shift)
    for denoise in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="denoise"):
            make_scheduler("unipc", 10, 5.0, denoise=denoise)
    s = make_scheduler("unipc", 4, 5.0)
    x = torch.randn(SHAPE)
    s.step(x, 0, x)
    with pytest.raises(ValueError, match="out of order"):
        s.step(x, 2, x)
    with pytest.raises(IndexError, match="0..3"):
        s.step(x, 4, x)
    with pytest.raises(ValueError, match="shape"):
        s.step(x[:1], 1, x)
    with pytest.raises(ValueError, match="terminal 0"):
        make_scheduler_from_sigmas("euler", [1.0, 0.5, 0.1])
    with pytest.raises(ValueError, match=r"sigmas\[1\]"):
        make_scheduler_from_sigmas("euler", [1.0, 0.5, 0.7, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_scheduler_from_sigmas("dpmpp_2m", [14.6, 1.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        make_scheduler_from_sigmas("unipc", [0.0])
