"""Flower ClientApp: a hospital's side of federated DP fine-tuning of LS-EMVAE.

train: load the global weights of the federated groups, check the privacy ledger, fine-tune with
Opacus DP-SGD (Poisson sampling, per-sample clipping, noise multiplier planned once per run for
the site's remaining budget), record the round in the ledger, reply with the trained groups and
aggregate metrics. evaluate: reply with loss, the mean HiME gate weight per lead group and binned
score histograms only.

A site that cannot or must not train (budget exhausted, data unreadable, non-DP refused, a
malformed server message) replies with an error naming the reason; the server logs it and the
round goes on. Every reply is summarised in ``<state_dir>/outgoing-messages.jsonl`` (names,
shapes, bytes and the metric values of what left the site) by :func:`client.audit.outgoing_log_mod`.
"""

from __future__ import annotations

import logging
import math
import time
import traceback

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit import outgoing_log_mod
from lsemvae.errors import LSEMVAEError
from lsemvae.federation import keys as K
from lsemvae.federation.codec import UPDATE_DTYPES, CodecError, decode, digest, encode
from lsemvae.federation.groups import is_federated

log = logging.getLogger("lsemvae.client")

app = ClientApp(mods=[outgoing_log_mod])


class SiteRefusal(LSEMVAEError):
    """The site will not do what the message asks; ``code`` tells the server why."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


def _error_reply(msg: Message, code: int, reason: str) -> Message:
    log.error("refusing %s: %s", msg.metadata.message_type, reason)
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _guard(handler):
    """Turn every failure into an error reply the server can log; never a traceback to the server."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except SiteRefusal as err:
            return _error_reply(msg, err.code, str(err))
        except LSEMVAEError as err:
            return _error_reply(msg, K.ERR_SITE_SETUP, str(err))
        except Exception as err:  # a bug: keep the traceback in the site's log, send only its type and message
            log.error("unexpected failure:\n%s", traceback.format_exc())
            return _error_reply(msg, K.ERR_INTERNAL, f"{type(err).__name__}: {err}")

    wrapped.__name__ = handler.__name__
    return wrapped


def _read_message(msg: Message, context: Context):
    """Site config, local data and a model holding the server's weights; refuses malformed messages."""
    from client.site_runtime import check_tasks_match, load_site_data, model_from_config, resolve_site

    site = resolve_site(dict(context.node_config), dict(context.run_config))
    import torch

    torch.set_num_threads(site.threads)
    if K.ARRAYS not in msg.content.array_records or K.CONFIG not in msg.content.config_records:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"message lacks '{K.ARRAYS}' or '{K.CONFIG}' records")
    cfg = msg.content[K.CONFIG]
    missing = [k for k in (K.MODEL_CONFIG, K.PREPROCESS_CONFIG, K.ROUND) if k not in cfg]
    if missing:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"server config lacks {missing}")
    try:
        model = model_from_config(str(cfg[K.MODEL_CONFIG]))
    except ValueError as err:  # not JSON (JSONDecodeError) or not a model config (pydantic ValidationError)
        first = str(err).splitlines()[0]
        raise SiteRefusal(K.ERR_BAD_MESSAGE,
                          f"server config '{K.MODEL_CONFIG}' is not a valid model config: {first}") from None
    wire = {k: a.numpy() for k, a in msg.content[K.ARRAYS].items()}
    if K.BASE_DIGEST in cfg:
        wire = _with_base(site, wire, str(cfg[K.BASE_DIGEST]))
    try:
        arrays = decode(wire, _update_dtype(cfg), sender="the server")
    except CodecError as err:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, str(err)) from None
    incoming = {k: torch.from_numpy(v) for k, v in arrays.items()}
    own = model.state_dict()
    wrong = [k for k in incoming if k not in own or not is_federated(k) or tuple(incoming[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"server sent parameters this model does not have or with other shapes: {wrong[:5]}")
    # every federated weight must come from the server: a part left as built here would be random, silently
    absent = [k for k in own if is_federated(k) and k not in incoming]
    if absent:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"server sent no weights for {len(absent)} federated parameter(s) of this "
                          f"model, e.g. {absent[:3]}: refusing to train or evaluate with untrained parts")
    model.load_state_dict(incoming, strict=False)
    data = load_site_data(site, str(cfg[K.PREPROCESS_CONFIG]))
    check_tasks_match(site, data, model)
    return site, cfg, model, data


def _with_base(site, wire: dict[str, np.ndarray], expected: str) -> dict[str, np.ndarray]:
    """The message's arrays plus the frozen encoders (the base) it was sent without.

    A message carrying the base is checked against its digest and the base kept in
    ``<state_dir>/base/<digest>.npz``; a message without it takes that copy. A site that has none
    (new state dir, other run's checkpoint) asks for it again with ERR_NO_BASE.
    """
    import os
    import tempfile
    import zipfile

    path = site.state_dir / "base" / f"{expected}.npz"
    base = {k: v for k, v in wire.items() if k.startswith("encoders.")}
    if base:
        if digest(base) != expected:
            raise SiteRefusal(K.ERR_BAD_MESSAGE, f"the encoders sent do not match their '{K.BASE_DIGEST}'")
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **base)
            os.replace(tmp, path)
        return wire
    try:
        with np.load(path) as stored:
            base = {k: stored[k] for k in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:   # missing, truncated or not an npz
        path.unlink(missing_ok=True)   # so that the next full message stores a good copy
        raise SiteRefusal(K.ERR_NO_BASE, f"no usable copy of the frozen encoders {expected[:12]} in the site's "
                          f"state dir ({type(err).__name__}): the server sends them again") from None
    if digest(base) != expected:
        path.unlink(missing_ok=True)
        raise SiteRefusal(K.ERR_NO_BASE, f"the site's copy of the frozen encoders {expected[:12]} does not match "
                          "its digest (removed): the server sends them again")
    return {**base, **wire}


def _update_dtype(cfg) -> str:
    """Wire dtype of the arrays (absent: float32, what servers before the key sent)."""
    value = cfg.get(K.UPDATE_DTYPE, "float32")
    if value not in UPDATE_DTYPES:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"server config '{K.UPDATE_DTYPE}' must be one of {', '.join(UPDATE_DTYPES)} "
                          f"(got {value!r})")
    return str(value)


def _number(cfg, key: str, kind: type, *, minimum: float, strict: bool = False):
    """A numeric server instruction; a missing or invalid one is a malformed message, refused."""
    if key not in cfg:
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"server config lacks '{key}'")
    value = cfg[key]
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > minimum if strict else value >= minimum) and (kind is float or float(value).is_integer()))
    if not ok:
        what = "a whole number" if kind is int else "a number"
        raise SiteRefusal(K.ERR_BAD_MESSAGE, f"server config '{key}' must be {what} {'>' if strict else '>='} {minimum} "
                          f"(got {value!r})")
    return kind(value)


def _plan_sigma(context: Context, site, ledger, *, run_id: int, server_round: int, num_rounds: int,
                sample_rate: float, steps_per_round: int) -> float:
    """Noise multiplier planned ONCE per run (kept in Context.state) for the rounds left in it.

    A restarted SuperNode loses Context.state; it then plans again for the rounds still to come
    from the ledger's history, which keeps the run within the budget.
    """
    from lsemvae.privacy.dp import plan_noise_multiplier

    state = context.state.config_records.get("dp-plan")
    if state is not None and int(state["run-id"]) == run_id:
        return float(state["noise-multiplier"])
    rounds_left = num_rounds - server_round + 1
    target = site.privacy.epsilon
    if site.privacy.run_epsilon is not None:  # leave budget for later runs
        target = min(target, ledger.epsilon() + site.privacy.run_epsilon)
    sigma = plan_noise_multiplier(
        target_epsilon=target, delta=site.privacy.delta, sample_rate=sample_rate,
        total_steps=rounds_left * steps_per_round, accountant=site.privacy.accountant,
        already_spent_history=ledger.history)
    context.state.config_records["dp-plan"] = ConfigRecord({"run-id": run_id, "noise-multiplier": sigma})
    log.info("site %s: noise multiplier %.4f planned for %d rounds x %d steps (q=%.4f), budget epsilon %g",
             site.name, sigma, rounds_left, steps_per_round, sample_rate, site.privacy.epsilon)
    return sigma


@app.train()
@_guard
def train(msg: Message, context: Context) -> Message:
    from client.local_training import train_round
    from client.site_runtime import site_info, site_training_lock
    from lsemvae.privacy.dp import BudgetExhausted, warn_no_privacy
    from lsemvae.privacy.ledger import PrivacyLedger

    started = time.perf_counter()
    site, cfg, model, data = _read_message(msg, context)
    server_round = _number(cfg, K.ROUND, int, minimum=1)
    num_rounds = _number(cfg, K.NUM_ROUNDS, int, minimum=1)
    dp = bool(cfg.get(K.DP, True))
    batch = _number(cfg, K.BATCH_SIZE, int, minimum=1)
    epochs = _number(cfg, K.LOCAL_EPOCHS, int, minimum=1)
    lr = _number(cfg, K.LR, float, minimum=0.0, strict=True)
    n_train = len(data.train_idx)
    if n_train == 0:
        raise SiteRefusal(K.ERR_SITE_SETUP, f"site {site.name}: no training records after the evaluation split")
    batch = min(batch, n_train)
    # Opacus' Poisson loader samples each record with probability 1 / len(loader) = 1 / ceil(n / batch), the rate
    # its accountant and the ledger record; planning with batch / n would leave part of the budget unspent.
    steps_per_epoch = math.ceil(n_train / batch)
    sample_rate = 1 / steps_per_epoch
    steps_per_round = epochs * steps_per_epoch
    # One training at a time per site: a ClientApp still running a round the server gave up on must not
    # pass the budget check next to the next round's (both would spend; the ledger would then overshoot).
    with site_training_lock(site):
        sigma, history, ledger = None, None, None
        if dp:
            ledger = PrivacyLedger.open_or_create(site.ledger_path, site=site.name, delta=site.privacy.delta,
                                                  max_epsilon=site.privacy.epsilon, accountant=site.privacy.accountant,
                                                  anchor_dir=site.anchor_dir)
            try:
                sigma = _plan_sigma(context, site, ledger, run_id=int(context.run_id), server_round=server_round,
                                    num_rounds=num_rounds, sample_rate=sample_rate, steps_per_round=steps_per_round)
                ledger.check_can_train(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps_per_round)
            except BudgetExhausted as err:
                raise SiteRefusal(K.ERR_BUDGET, str(err)) from None
            history = ledger.history
        else:
            if not site.privacy.allow_non_dp:
                raise SiteRefusal(K.ERR_NON_DP_REFUSED,
                                  f"site {site.name}: the server asked for training WITHOUT differential privacy and this "
                                  "site does not allow it (privacy.allow_non_dp = false)")
            warn_no_privacy(site.name, logger=log)
        result = train_round(model, data, site, lr=lr, batch_size=batch, local_epochs=epochs,
                             proximal_mu=float(cfg.get(K.PROXIMAL_MU, 0.0)), dp=dp, noise_multiplier=sigma,
                             train_encoders=bool(cfg.get(K.TRAIN_ENCODERS, True)),
                             history=history, seed=int(cfg.get(K.RUN_SEED, 0)) * 1000 + server_round)
        epsilon = 0.0
        if dp:
            epsilon = ledger.record_round(round_number=server_round, run_id=context.run_id, history=result.history)
    metrics = MetricRecord({
        K.NUM_EXAMPLES: int(result.num_examples),
        K.TRAIN_LOSS: float(result.train_loss),
        K.EPSILON: float(epsilon),
        K.DELTA: float(site.privacy.delta),
        K.NOISE_MULTIPLIER: float(sigma or 0.0),
        K.TRAIN_SECONDS: float(result.seconds),
        K.SITE_SECONDS: time.perf_counter() - started,
    })
    content = RecordDict({
        K.ARRAYS: ArrayRecord({k: Array(v) for k, v in encode(result.arrays, _update_dtype(cfg)).items()}),
        K.GROUP_WEIGHTS: MetricRecord({g: float(w) for g, w in result.group_weights.items()}),
        K.METRICS: metrics,
        K.SITE: ConfigRecord(site_info(site, dp=dp)),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
@_guard
def evaluate(msg: Message, context: Context) -> Message:
    from client.local_training import evaluate as evaluate_local
    from client.site_runtime import site_info
    from lsemvae.privacy.ledger import LedgerError, LedgerMissing, PrivacyLedger

    started = time.perf_counter()
    site, cfg, model, data = _read_message(msg, context)
    bins = int(cfg.get(K.HIST_BINS, 20))
    summary, hists = evaluate_local(model, data, site, bins=bins)
    try:
        epsilon = PrivacyLedger.open(site.ledger_path, site=site.name, anchor_dir=site.anchor_dir).epsilon()
    except LedgerMissing:
        raise  # deleted ledger with an anchor: fail closed, never report 0
    except LedgerError:
        if site.ledger_path.exists():
            raise  # corrupt: fail closed
        epsilon = 0.0  # no ledger and no anchor: this dataset has never trained under DP
    flat: dict[str, list] = {}
    for task, h in hists.items():
        flat[f"{task}/{K.HIST_CLASSES}"] = [str(c) for c in h["classes"]]
        parts = [p for p in h if p not in ("edges", "classes")]   # per-class binned counts and sums
        flat[f"{task}/{K.HIST_PARTS}"] = parts
        for part in parts:
            flat[f"{task}/{part}"] = list(np.asarray(h[part], dtype=np.float64).ravel().tolist())
    content = RecordDict({
        K.METRICS: MetricRecord({K.NUM_EXAMPLES: int(summary["n"]), K.EVAL_LOSS: float(summary["loss"]),
                                 K.EPSILON: float(epsilon), K.SITE_SECONDS: time.perf_counter() - started}),
        K.HISTOGRAMS: ConfigRecord(flat),
        K.GATES: MetricRecord(summary["gates"]),
        K.SITE: ConfigRecord(site_info(site, dp=bool(cfg.get(K.DP, True)))),
    })
    return Message(content, reply_to=msg)
