"""A site's side of a federated round: answer a query, train, evaluate. Plain functions, no network.

The ClientApp (``client/client_app.py``) only adapts: Flower message -> :class:`Instruction` and arrays
-> these functions -> typed reply (or :class:`SiteRefusal`) -> Flower message. Benchmarks, the
membership-inference audit and the tests call the same functions (``lsemvae.federation.inprocess``).

**Train** (under DP): open the privacy ledger (tied to the dataset's patients), plan the noise
multiplier once per job for the rounds the job announces, capped by the site's per-job share
(``privacy.run_epsilon``) and refused above the site's noise ceiling, check that the round fits the
budget, train with Opacus DP-SGD on the site's own OS randomness, record the round, reply with the
trained groups. One training at a time per site (a lock from the budget check to the ledger record).

**Evaluate**: only k-anonymous aggregates leave (:mod:`lsemvae.federation.private_eval`), on the
site's own bins, and only over at least ``evaluation.min_records`` records.

Every value in an instruction is untrusted: bounded by :class:`~lsemvae.site.SiteLimits`, never a
path, never a source of DP randomness.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from lsemvae.errors import ConfigError, LSEMVAEError
from lsemvae.federation import keys as K
from lsemvae.federation.groups import is_federated
from lsemvae.federation.messages import Evaluation, EvaluateReply, Instruction, SiteInfo, TrainReply
from lsemvae.federation.runtime import (
    OutOfBounds,
    check_tasks_match,
    keep_base,
    ledger_key,
    load_site_data,
    model_from_config,
    site_info,
    site_training_lock,
    stored_base,
)
from lsemvae.fileio import atomic_write_json
from lsemvae.site import SiteConfig

log = logging.getLogger("lsemvae.site")


class SiteRefusal(LSEMVAEError):
    """The site will not do what the message asks.

    ``code`` (lsemvae.federation.keys) and its category go to the server; ``str(err)`` (which may name
    records or local paths) stays in the site's log. ``public`` adds a detail safe to send: only the
    server's own values and the site's limits, never anything about its data.
    """

    def __init__(self, code: int, message: str, *, public: str | None = None):
        self.code = code
        self.public = public
        super().__init__(message)

    @property
    def reason(self) -> str:
        return K.CATEGORIES[self.code] + (f": {self.public}" if self.public else "")


def handle(kind: str, site: SiteConfig, content):
    """Answer one message's content (a Flower RecordDict) with the reply's content; :class:`SiteRefusal` if not.

    The one decoding of a server message and encoding of a site reply: the ClientApp and the in-process
    transport both call it.
    """
    from lsemvae.federation.codec import CodecError
    from lsemvae.federation.messages import from_content, to_content

    if kind == K.QUERY:
        return to_content(query(site))
    if kind not in (K.TRAIN, K.EVALUATE):
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"unknown message type {kind!r}", public=f"message type {kind!r}")
    try:
        ins, arrays = from_content(content, Instruction, sender="the server")
    except CodecError as err:   # malformed body, arrays or layout (MessageError is one)
        raise SiteRefusal(K.ERR_BAD_MESSAGE, str(err), public=str(err)) from None
    if kind == K.TRAIN:
        reply, trained = train(site, ins, arrays)
        return to_content(reply, trained, dtype=ins.update_dtype)
    return to_content(evaluate(site, ins, arrays))


def query(site: SiteConfig) -> SiteInfo:
    """Who this site is (name, leads, heads and their classes): what the server checks before anyone trains."""
    return site_info(site, dp=not site.privacy.allow_non_dp)


# ----------------------------------------------------------------------------- train

def train(site: SiteConfig, ins: Instruction, arrays: dict[str, np.ndarray]) -> tuple[TrainReply, dict[str, np.ndarray]]:
    """One round of local training; returns the reply and the trained groups' arrays."""
    from lsemvae.federation.training import train_round

    started = time.perf_counter()
    _check_limits(site, ins)
    model, data = _prepare(site, ins, arrays)
    evaluation, refused = None, None
    if ins.evaluate:   # the received (previous round's) model, before it is trained: no extra message
        try:
            evaluation = _evaluation(site, ins, model, data)
        except SiteRefusal as err:
            refused = err.code
    n_train = len(data.train_idx)
    if n_train == 0:
        raise SiteRefusal(K.ERR_SITE_SETUP, f"site {site.name}: no training records after the evaluation split")
    batch = min(ins.batch_size, n_train)
    # Opacus' Poisson loader samples each record with probability 1 / len(loader) = 1 / ceil(n / batch), the rate
    # its accountant and the ledger record; planning with batch / n would leave part of the budget unspent.
    steps_per_epoch = math.ceil(n_train / batch)
    sample_rate, steps = 1 / steps_per_epoch, ins.local_epochs * steps_per_epoch
    with site_training_lock(site):
        sigma, ledger, before = None, None, 0.0
        if ins.dp:
            ledger = _ledger(site, data)
            before = ledger.epsilon()
            sigma = _noise_multiplier(site, ledger, ins, sample_rate=sample_rate, steps=steps)
        else:
            _allow_non_dp(site)
        result = train_round(model, data, site, lr=ins.lr, batch_size=batch, local_epochs=ins.local_epochs,
                             proximal_mu=ins.proximal_mu, dp=ins.dp, noise_multiplier=sigma,
                             train_encoders=ins.train_encoders, history=ledger.history if ledger else None,
                             seed=None if ins.dp else ins.seed * 1000 + ins.server_round)
        # without DP nothing is charged, but the dataset's cumulative epsilon from earlier DP jobs still stands
        epsilon = (ledger.record_round(round_number=ins.server_round, run_id=ins.job_id, history=result.history)
                   if ledger else current_epsilon(site))
    _console(site, ins, data, steps=steps, sigma=sigma, before=before, after=epsilon)
    reply = TrainReply(site=site_info(site, dp=ins.dp), layout=[], group_weights=result.group_weights,
                       num_examples=result.num_examples, train_loss=None if ins.dp else result.train_loss,
                       epsilon=epsilon, delta=site.privacy.delta, noise_multiplier=sigma or 0.0,
                       train_seconds=result.seconds, site_seconds=time.perf_counter() - started,
                       evaluation=evaluation, evaluation_refused=refused)
    return reply, result.arrays


def _ledger(site: SiteConfig, data):
    from lsemvae.privacy.ledger import DatasetSpentElsewhere, PrivacyLedger

    try:
        return PrivacyLedger.open_or_create(site.ledger_path, site=site.name, delta=site.privacy.delta,
                                            max_epsilon=site.privacy.epsilon, accountant=site.privacy.accountant,
                                            anchor_dir=site.anchor_dir, patients=data.patient_hashes(ledger_key(site)))
    except DatasetSpentElsewhere as err:
        raise SiteRefusal(K.ERR_BUDGET, str(err)) from None


def _noise_multiplier(site: SiteConfig, ledger, ins: Instruction, *, sample_rate: float, steps: int) -> float:
    """The job's planned noise multiplier, refused above the site's ceiling or past its budget."""
    from lsemvae.privacy.dp import BudgetExhausted

    try:
        sigma = plan_noise_multiplier(site, ledger, ins, sample_rate=sample_rate, steps=steps)
        if sigma > site.privacy.max_noise_multiplier:
            raise SiteRefusal(K.ERR_NOISE_CEILING,
                              f"site {site.name}: the budget left for this job (epsilon {ledger.epsilon():.3f} spent of "
                              f"{ledger.max_epsilon:g}, {site.privacy.job_epsilon:g} per job) needs noise multiplier "
                              f"{sigma:.2f} > the site's ceiling {site.privacy.max_noise_multiplier:g}: the update would "
                              "be mostly noise, so the site does not spend budget on it")
        ledger.check_can_train(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
    except BudgetExhausted as err:
        raise SiteRefusal(K.ERR_BUDGET, str(err)) from None
    return sigma


def plan_noise_multiplier(site: SiteConfig, ledger, ins: Instruction, *, sample_rate: float, steps: int) -> float:
    """Noise multiplier planned ONCE per job for the rounds the job has left, kept on the site's disk.

    The job's target is fixed when the site first trains in it: the site's budget, capped at what it
    had spent plus its per-job share. The plan is made again (for the same target) only if the round's
    sampling or the job's length changes, or the site's disk lost it; the ledger check before every
    round keeps the site within its budget either way.
    """
    from lsemvae.privacy.dp import plan_noise_multiplier as plan

    path = site.state_dir / "plans" / f"job-{ins.job_id}.json"
    try:
        saved = json.loads(path.read_text())
        target = float(saved["target_epsilon"])
        if (saved["sample_rate"], saved["steps_per_round"], saved["num_server_rounds"]) == (
                sample_rate, steps, ins.num_server_rounds):
            return float(saved["noise_multiplier"])
    except (OSError, ValueError, KeyError, TypeError):
        target = min(site.privacy.epsilon, ledger.epsilon() + site.privacy.job_epsilon)
    rounds_left = ins.num_server_rounds - ins.server_round + 1
    sigma = plan(target_epsilon=target, delta=site.privacy.delta, sample_rate=sample_rate,
                 total_steps=rounds_left * steps, accountant=site.privacy.accountant,
                 already_spent_history=ledger.history)
    atomic_write_json(path, {"noise_multiplier": sigma, "sample_rate": sample_rate, "steps_per_round": steps,
                             "num_server_rounds": ins.num_server_rounds, "target_epsilon": target})
    log.info("site %s: noise multiplier %.4f planned for %d round(s) x %d steps (q=%.4f) to reach epsilon %.3f "
             "(budget %g, per job %g)", site.name, sigma, rounds_left, steps, sample_rate, target,
             site.privacy.epsilon, site.privacy.job_epsilon)
    return sigma


def _allow_non_dp(site: SiteConfig) -> None:
    from lsemvae.privacy.dp import warn_no_privacy

    if not site.privacy.allow_non_dp:
        raise SiteRefusal(K.ERR_NON_DP_REFUSED,
                          f"site {site.name}: the server asked for training WITHOUT differential privacy and this "
                          "site does not allow it (privacy.allow_non_dp = false)")
    warn_no_privacy(site.name, logger=log)


def _console(site: SiteConfig, ins: Instruction, data, *, steps: int, sigma: float | None,
             before: float, after: float) -> None:
    """One line per round for the site's operator: what was trained, what it cost, what is left."""
    skipped = data.cohort.skipped_by_reason()
    skipped_text = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"
    privacy = (f"noise multiplier {sigma:.3f}, epsilon {before:.3f} -> {after:.3f} of {site.privacy.epsilon:g} "
               f"({max(site.privacy.epsilon - after, 0):.3f} left, delta {site.privacy.delta:g})"
               if sigma is not None else "NO differential privacy")
    log.info("site %s | job %s round %d/%d | trained on %d records (%d steps) | %s | records skipped: %s",
             site.name, ins.job_id, ins.server_round, ins.num_server_rounds, len(data.train_idx), steps, privacy,
             skipped_text)


# ----------------------------------------------------------------------------- evaluate

def evaluate(site: SiteConfig, ins: Instruction, arrays: dict[str, np.ndarray]) -> EvaluateReply:
    """Aggregates of the evaluation split under the site's own :class:`~lsemvae.site.EvaluationPolicy`."""
    started = time.perf_counter()
    _refuse_evaluation_if_disabled(site)
    model, data = _prepare(site, ins, arrays)
    return EvaluateReply(site=site_info(site, dp=ins.dp), epsilon=current_epsilon(site),
                         evaluation=_evaluation(site, ins, model, data), site_seconds=time.perf_counter() - started)


def _refuse_evaluation_if_disabled(site: SiteConfig) -> None:
    if not site.evaluation.enabled:
        raise SiteRefusal(K.ERR_EVAL_REFUSED, f"site {site.name}: evaluation is disabled (evaluation.enabled = false)",
                          public="evaluation disabled")


def _evaluation(site: SiteConfig, ins: Instruction, model, data) -> Evaluation:
    """The model's evaluation on the site's evaluation split, as the site's policy lets it out."""
    from lsemvae.federation.private_eval import task_histogram
    from lsemvae.federation.training import evaluate as evaluate_local

    policy = site.evaluation
    _refuse_evaluation_if_disabled(site)
    if len(data.eval_idx) < policy.min_records:
        raise SiteRefusal(K.ERR_EVAL_REFUSED, f"site {site.name}: {len(data.eval_idx)} evaluation records, fewer than "
                          f"evaluation.min_records = {policy.min_records}", public="too few evaluation records")
    res = evaluate_local(model, data, site)
    try:
        histograms = {t: task_histogram(res.targets[t], res.scores[t], list(task.classes), bins=policy.bins,
                                        min_cell=policy.min_cell) for t, task in data.tasks.items()}
    except ValueError as err:   # the server's model scored NaN or inf
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"site {site.name}: {err}", public=str(err)) from None
    log.info("site %s | job %s round %d | evaluated %d records: loss %.4f", site.name, ins.job_id, ins.server_round,
             res.n, res.loss)
    return Evaluation(num_examples=res.n, eval_loss=res.loss, gates=res.gates, histograms=histograms)


def current_epsilon(site: SiteConfig) -> float:
    """The site's cumulative epsilon from its ledger; 0 if this dataset never trained under DP."""
    from lsemvae.privacy.ledger import LedgerError, LedgerMissing, PrivacyLedger

    try:
        return PrivacyLedger.open(site.ledger_path, site=site.name, anchor_dir=site.anchor_dir).epsilon()
    except LedgerMissing:
        raise  # deleted ledger with an anchor: fail closed, never report 0
    except LedgerError:
        if site.ledger_path.exists():
            raise  # corrupt: fail closed
        return 0.0


# ----------------------------------------------------------------------------- shared

def _check_limits(site: SiteConfig, ins: Instruction) -> None:
    lim = site.limits
    for name, value, cap in (("local-epochs", ins.local_epochs, lim.max_local_epochs),
                             ("num-server-rounds", ins.num_server_rounds, lim.max_rounds),
                             ("batch-size", ins.batch_size, lim.max_batch_size)):
        if value > cap:
            detail = f"{name} {value} is above this site's limit {cap}"
            raise SiteRefusal(K.ERR_BAD_MESSAGE, f"site {site.name}: {detail}", public=detail)


def _prepare(site: SiteConfig, ins: Instruction, arrays: dict[str, np.ndarray]):
    """A model holding the server's weights and the site's data preprocessed as the server's config says."""
    import torch

    torch.set_num_threads(site.threads)
    try:
        model = model_from_config(ins.model_config_json, max_parameters=site.limits.max_model_parameters)
        arrays = _with_base(site, ins, arrays)
        _load_weights(model, arrays)
        data = load_site_data(site, ins.preprocess_config_json)
    except OutOfBounds as err:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"site {site.name}: {err}", public=str(err)) from None
    except ConfigError as err:
        raise SiteRefusal(K.ERR_SITE_SETUP, str(err)) from None
    try:
        check_tasks_match(site, data, model)
    except ConfigError as err:
        raise SiteRefusal(K.ERR_SITE_SETUP, str(err)) from None
    return model, data


def _load_weights(model, arrays: dict[str, np.ndarray]) -> None:
    """Every federated weight must come from the server, with this model's shapes: a part left as
    built here would be random, silently."""
    import torch

    own = model.state_dict()
    wrong = [k for k, v in arrays.items() if k not in own or not is_federated(k) or tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise OutOfBounds(f"server sent parameters this model does not have or with other shapes: {wrong[:5]}")
    absent = [k for k in own if is_federated(k) and k not in arrays]
    if absent:
        raise OutOfBounds(f"server sent no weights for {len(absent)} federated parameter(s) of this model, "
                          f"e.g. {absent[:3]}: refusing to train or evaluate with untrained parts")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=False)


def _with_base(site: SiteConfig, ins: Instruction, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The message's arrays plus the frozen encoders (the base) it was sent without (federated probe).

    A message carrying the base is checked against its digest and the base kept on the site's disk; a
    message without it takes that copy. A site that has none asks for it again with ERR_NO_BASE.
    """
    if ins.base_digest is None:
        return arrays
    base = {k: v for k, v in arrays.items() if k.startswith("encoders.")}
    if base:
        try:
            keep_base(site, base, ins.base_digest, ins.update_dtype)
        except ValueError as err:
            raise OutOfBounds(str(err)) from None
        return arrays
    stored = stored_base(site, ins.base_digest, ins.update_dtype)
    if stored is None:
        raise SiteRefusal(K.ERR_NO_BASE, f"site {site.name}: no usable copy of the frozen encoders "
                          f"{ins.base_digest[:12]} in {Path(site.state_dir) / 'base'}")
    return {**stored, **arrays}
