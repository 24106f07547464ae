"""DP-SGD for one site's local training, around Opacus' ``PrivacyEngine``.

The mechanism lives here; accounting across rounds and runs lives in :mod:`lsemvae.privacy.ledger`.

How a site uses it, every round::

    sigma = plan_noise_multiplier(target_epsilon=..., delta=..., sample_rate=1 / len(loader),
                                  total_steps=rounds * local_epochs * len(loader))   # once per site plan
    ledger.check_can_train(noise_multiplier=sigma, sample_rate=q, steps=local_epochs * len(loader))
    model, opt, loader, dp = make_private(model, opt, loader, noise_multiplier=sigma,
                                          max_grad_norm=C, history=ledger.history)
    for batch in loader:                                    # Poisson batches from OS randomness
        opt.zero_grad()
        loss_per_sample = objective(model, batch)           # shape [B]
        dp.backward(loss_per_sample)                        # right for every grad_sample_mode
        dp.step()                                           # fresh OS-seeded noise; also on an empty batch
    ledger.record_round(round_number=r, run_id=run, history=dp.history)
    weights = plain_state_dict(model)

Why sigma is planned once: calling ``make_private_with_epsilon`` each round spends the whole
budget every round. Why ``history`` goes in: the engine is new every round and
its accountant must continue from everything this dataset has already spent.

**Empty Poisson batches.** With Poisson sampling a batch can be empty (probability (1-q)^N: about
1e-9 for q=1/13, N=260, but common in tests with a handful of records). Opacus' loader then yields
zero-length tensors. Preferred (``hooks``, ``ghost``): run the objective on them as usual;
``dp.backward`` sums a zero-length loss (a mean over nothing is NaN) and ``dp.step()`` adds pure
noise and counts the step, which is exactly the mechanism the accountant analyses. If the
objective cannot run on an empty batch (``functorch`` mode cannot; nor can code that indexes the
batch), test :func:`is_empty_batch` and skip the batch *entirely*: no backward, no ``opt.step()``
(Opacus raises "Per sample gradient is not initialized" on a step without backward). That step is
then neither noised nor counted, and whether a batch was empty is a tiny data-dependent signal the
accountant does not cover: acceptable only because P(empty) is negligible for real sites.

Opacus is imported lazily through :func:`import_opacus`: importing it runs ``logging.basicConfig``,
which adds a root handler and makes every Flower log line print twice.

**Randomness is the site's own** (:mod:`lsemvae.privacy.randomness`): Poisson batches and noise come
from the operating system's CSPRNG; :func:`make_private` takes no seed or generator.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lsemvae.errors import ConfigError, LSEMVAEError

log = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")
# Relative precision of the planned sigma's epsilon: the plan lands in [target*(1-tol), target].
PLAN_RELATIVE_TOLERANCE = 1e-3

History = list[tuple[float, float, int]]


class BudgetExhausted(LSEMVAEError):
    """Training would take a site past its (epsilon, delta) budget. The site must not train."""


def import_opacus():
    """Import ``opacus`` without keeping the root log handler its import installs.

    Only handlers added *by this import* are removed; nothing else about logging is touched and
    no warning filter is changed (Opacus' own warnings stay visible).
    """
    root = logging.getLogger()
    before = list(root.handlers)
    import opacus  # noqa: PLC0415 - lazy on purpose, see module docstring

    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
    return opacus


def check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"accountant: {accountant!r} is not supported; use one of {', '.join(ACCOUNTANTS)} "
            "(rdp is the default; gdp is only approximate)"
        )
    return accountant


def epsilon_of(history: History, *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of a whole accountant history, recomputed by Opacus' accountant (0.0 if empty)."""
    check_accountant(accountant)
    entries = tuple((float(s), float(q), int(n)) for s, q, n in history if int(n) > 0)
    return _epsilon(entries, float(delta), accountant) if entries else 0.0


@functools.lru_cache(maxsize=256)
def _epsilon(entries: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    # Cached: a pure function of its arguments, and one RDP evaluation costs ~0.1 s of CPU.
    import_opacus()
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.load_state_dict({"history": list(entries), "mechanism": acc.mechanism()})
    return float(acc.get_epsilon(delta=delta))


def _check_positive(name: str, value: float, *, upper: float | None = None) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: must be a positive finite number (got {value!r})")
    if upper is not None and value > upper:
        raise ConfigError(f"{name}: must be at most {upper} (got {value!r})")


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    total_steps: int,
    accountant: str = "rdp",
    already_spent_history: History | None = None,
) -> float:
    """Noise multiplier sigma so that ``total_steps`` more steps at ``sample_rate`` end at ``target_epsilon``.

    Call it once for the site's whole plan (rounds x local epochs x batches per epoch), not per
    round. With ``already_spent_history`` (the ledger's history), sigma is chosen so that history
    plus the planned steps ends at the target; raises :class:`BudgetExhausted` if the history
    alone already reaches it.
    """
    _check_positive("target_epsilon", target_epsilon)
    _check_positive("delta", delta, upper=0.1)
    _check_positive("sample_rate", sample_rate, upper=1.0)
    if not (isinstance(total_steps, int) and total_steps > 0):
        raise ConfigError(f"total_steps: must be a positive integer (got {total_steps!r})")
    check_accountant(accountant)
    tolerance = PLAN_RELATIVE_TOLERANCE * target_epsilon
    spent = list(already_spent_history or [])
    if not spent:
        import_opacus()
        from opacus.accountants.utils import get_noise_multiplier

        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=total_steps,
                accountant=accountant,
                epsilon_tolerance=tolerance,
            )
        )
    already = epsilon_of(spent, delta=delta, accountant=accountant)
    if already >= target_epsilon:
        raise BudgetExhausted(
            f"already spent epsilon {already:.3f} >= target {target_epsilon:g} (delta={delta:g}): "
            "no noise multiplier can keep further training within the target"
        )

    if accountant == "rdp":
        # RDP composes by addition: evaluate the spent part once, as RDPAccountant.get_epsilon would.
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as rdp_analysis

        orders = RDPAccountant.DEFAULT_ALPHAS
        spent_rdp = sum(
            rdp_analysis.compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders) for s, q, n in spent
        )

        def eps(sigma: float) -> float:
            rdp = spent_rdp + rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=total_steps, orders=orders)
            return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])

    else:

        def eps(sigma: float) -> float:
            return epsilon_of(spent + [(sigma, sample_rate, total_steps)], delta=delta, accountant=accountant)

    # Bisection on sigma: epsilon decreases monotonically as sigma grows.
    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise BudgetExhausted(f"target epsilon {target_epsilon:g} is unreachable after epsilon {already:.3f} spent")
    while True:
        mid = (low + high) / 2
        e = eps(mid)
        if e > target_epsilon:
            low = mid
        else:
            high = mid
            if target_epsilon - e <= tolerance:
                return high


@dataclass
class DPSession:
    """What ``make_private`` set up for one round: read ``history`` after training."""

    privacy_engine: Any
    grad_sample_mode: str
    model: nn.Module
    optimizer: Any
    loss_reduction: str = "mean"

    @property
    def accountant(self):
        return self.privacy_engine.accountant

    @property
    def history(self) -> History:
        """The accountant's full history (restored part plus this round), as plain tuples."""
        return [(float(s), float(q), int(n)) for s, q, n in self.privacy_engine.accountant.history]

    def get_epsilon(self, delta: float) -> float:
        return float(self.privacy_engine.get_epsilon(delta))

    def step(self) -> None:
        """One DP-SGD step (clip, noise, update) with noise from a fresh OS-seeded generator."""
        from lsemvae.privacy.randomness import os_generator

        self.optimizer.generator = os_generator()
        self.optimizer.step()

    def backward(self, loss_per_sample: torch.Tensor) -> None:
        """Backward pass of a per-sample loss ``[B]``, correct for the session's grad_sample_mode.

        Ghost clipping needs the per-sample losses (it runs two backward passes); the other modes
        take the mean (``loss_reduction="mean"``). An empty batch does nothing; still call
        ``optimizer.step()`` (see module docstring).
        """
        if loss_per_sample.ndim != 1:
            raise ValueError(f"loss_per_sample must have shape [B], got {tuple(loss_per_sample.shape)}")
        if loss_per_sample.numel() == 0:
            # Zero-size per-sample gradients: opt.step() then adds pure noise and counts the step.
            loss_per_sample.sum().backward()
            return
        if self.grad_sample_mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            DPTensorFastGradientClipping(self.model, self.optimizer, loss_per_sample, self.loss_reduction).backward()
        else:
            loss_per_sample.mean().backward()


def conv1d_grad_sample(layer: nn.Conv1d, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Per-sample gradients of a Conv1d, from a strided *view* of the input instead of Opacus' im2col copy.

    grad_w[b, o, i, k] = sum_t g[b, o, t] * x_padded[b, i, t*stride + k*dilation]: one einsum over a view.
    Same numbers as Opacus' sampler (tested); layers it does not cover (groups, string padding,
    non-zero padding modes, empty batches) go to Opacus' own sampler.
    """
    from opacus.grad_sample.conv import compute_conv_grad_sample

    x = activations[0]
    simple = layer.groups == 1 and not isinstance(layer.padding, str) and layer.padding_mode == "zeros"
    if not simple or x.shape[0] == 0:
        return compute_conv_grad_sample(layer, activations, backprops)
    x = x.to(backprops.dtype)
    out = {}
    if layer.weight.requires_grad:
        pad = layer.padding[0]
        x = nn.functional.pad(x, (pad, pad))
        n, c_in, _ = x.shape
        step = x.stride(2)
        windows = x.as_strided(
            (n, c_in, backprops.shape[-1], layer.kernel_size[0]),
            (x.stride(0), x.stride(1), step * layer.stride[0], step * layer.dilation[0]),
        )
        out[layer.weight] = torch.einsum("not,nitk->noik", backprops, windows)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=2)
    return out


def use_fast_conv1d_grad_sampler(enabled: bool = True) -> None:
    """Register :func:`conv1d_grad_sample` (or Opacus' own back) for nn.Conv1d, process-wide.

    Opacus keeps one grad-sampler registry per process; this swaps one entry, nothing else.
    """
    import_opacus()
    from opacus.grad_sample.conv import compute_conv_grad_sample
    from opacus.grad_sample.utils import register_grad_sampler

    register_grad_sampler(nn.Conv1d)(conv1d_grad_sample if enabled else compute_conv_grad_sample)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    history: History | None = None,
    accountant: str = "rdp",
    poisson: bool = True,
    grad_sample_mode: str = "hooks",
    fast_conv1d: bool = True,
):
    """Wrap model, optimizer and loader for DP-SGD; returns ``(model, optimizer, loader, session)``.

    ``history`` (the ledger's) is loaded into the new engine's accountant *before* ``make_private``
    so ``session.history`` after training is the dataset's whole history. Load the round's
    weights into ``model`` before calling this. Batches are Poisson samples at rate
    ``1 / len(data_loader)`` drawn from OS randomness, and the noise generator is OS-seeded
    (:mod:`lsemvae.privacy.randomness`); call ``session.step()`` (not ``optimizer.step()``) to re-seed
    it every step. ``poisson=False`` keeps ``data_loader`` as it is, which breaks the sampling
    assumption of the accountant: use it for benchmarks only. ``fast_conv1d`` uses
    :func:`conv1d_grad_sample` for Conv1d layers (same gradients, less time: see
    benchmarks/dp_throughput.py). The client should use ``grad_sample_mode="hooks"`` (fastest here,
    and it runs empty Poisson batches); ``functorch`` cannot run an empty batch.
    """
    _check_positive("noise_multiplier", noise_multiplier)
    _check_positive("max_grad_norm", max_grad_norm)
    check_accountant(accountant)
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode: {grad_sample_mode!r} is not one of {', '.join(GRAD_SAMPLE_MODES)}")
    use_fast_conv1d_grad_sampler(fast_conv1d)
    import warnings

    from opacus import PrivacyEngine

    from lsemvae.privacy.randomness import os_generator, poisson_loader

    with warnings.catch_warnings():
        # "Secure RNG turned off": secure_mode needs torchcsprng; the site's own OS randomness replaces it
        # below (lsemvae.privacy.randomness). Only this one message is silenced, only here.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=accountant, secure_mode=False)
    if poisson:
        data_loader = poisson_loader(data_loader.dataset, steps=len(data_loader))
    if history:
        engine.accountant.load_state_dict(
            {"history": [(float(s), float(q), int(n)) for s, q, n in history], "mechanism": engine.accountant.mechanism()}
        )
    wrapped = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        poisson_sampling=False,   # the loader is already Poisson, from OS randomness
        grad_sample_mode=grad_sample_mode,
        # Ghost clipping's criterion wrapper is not used: DPSession.backward takes per-sample losses.
        criterion=nn.MSELoss(),
    )
    if grad_sample_mode == "ghost":
        private_model, private_opt, _criterion, private_loader = wrapped
    else:
        private_model, private_opt, private_loader = wrapped
    private_opt.generator = os_generator()
    private_opt.secure_mode = True   # Opacus' floating-point-safe noise draw (needs no torchcsprng)
    session = DPSession(privacy_engine=engine, grad_sample_mode=grad_sample_mode, model=private_model,
                        optimizer=private_opt)
    return private_model, private_opt, private_loader, session


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus wrapper (the model itself if not wrapped)."""
    while hasattr(model, "_module") and isinstance(model._module, nn.Module):
        model = model._module
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the keys of the unwrapped model (no ``_module.`` prefix), detached copies."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def is_empty_batch(batch: Any) -> bool:
    """True when a (possibly nested) batch holds zero samples, as Poisson sampling can produce."""
    if isinstance(batch, torch.Tensor):
        return batch.ndim > 0 and batch.shape[0] == 0
    if isinstance(batch, dict):
        return any(is_empty_batch(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return any(is_empty_batch(v) for v in batch)
    return False


def warn_no_privacy(site: str, *, logger: logging.Logger | None = None) -> str:
    """Log, loudly, that a site trains without DP. Returns the message (for replies and reports)."""
    message = (
        f"NON-DP MODE for site '{site}': training WITHOUT differential privacy. The model updates this site "
        "sends carry NO privacy guarantee for its patients and its privacy ledger is NOT charged. "
        "Use only for comparison experiments on data cleared for it."
    )
    banner = "!" * 100
    (logger or log).warning("\n%s\n%s\n%s", banner, message, banner)
    return message
