"""The server's side of federated fine-tuning, as plain functions over typed messages; no network.

A job: :func:`initial_state` from the pretrained checkpoint, then :func:`run_round` per round until
done (:func:`run_rounds`). A round:

1. **Check** every node not yet known with a ``query``: its task heads must mean what the job's heads
   mean (kind and classes), before anyone spends budget (:func:`check_sites`).
2. **Configure**: one :class:`Instruction` for all; under the federated probe the frozen encoders go
   only to nodes that do not hold them yet (:func:`broadcast`).
3. **Train**: the replies are checked, weighted per parameter group and aggregated with the strategy's
   server step (:mod:`lsemvae.federation.aggregation`).
4. **Evaluate** each global model on the next round's train exchange: a site evaluates the model it
   receives before training it, in the same reply (one message per site per round instead of two:
   Flower starts a process for every message). The last model is evaluated by one ``evaluate``
   message after the last round (:func:`final_evaluation`). The sites' k-anonymous histograms are
   pooled (:mod:`lsemvae.federation.private_eval`) into the row of the round that made the model.
5. **Summarise** in one metrics row: failures by site and reason, losses, pooled AUROC, each site's
   cumulative epsilon (the federation's is the max), and a flag for any site whose epsilon went down.

Messages travel through a :class:`Transport`: Flower's Grid in the ServerApp (``server/server_app.py``),
or direct calls in-process (:mod:`lsemvae.federation.inprocess`) for benchmarks and tests. The round
itself exists once, here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from lsemvae.federation import keys as K
from lsemvae.federation.aggregation import (
    AggregationError,
    Contribution,
    ServerOptimizer,
    ServerOptimizerState,
    aggregate_round,
    check_contribution,
    weighted_mean,
)
from lsemvae.federation.codec import digest, encode
from lsemvae.federation.groups import federated, group_of
from lsemvae.federation.messages import EvaluateReply, Evaluation, Instruction, SiteInfo, TrainReply
from lsemvae.federation.state import ServerState
from lsemvae.site import FederationConfig

log = logging.getLogger("flwr.lsemvae.server")

EPSILON_SLACK = 1e-6   # reported epsilons are recomputed floats: ignore differences below this


@dataclass
class Outgoing:
    """One node's message: the instruction (None for a query) and the arrays it needs."""

    instruction: Instruction | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Received:
    """One node's reply, decoded and validated: the typed body, its arrays and their size on the wire."""

    body: TrainReply | EvaluateReply | SiteInfo
    arrays: dict[str, np.ndarray]
    nbytes: int


def outgoing_content(out: Outgoing):
    """The Flower RecordDict of one outgoing message (empty for a query)."""
    from flwr.app import RecordDict

    from lsemvae.federation.messages import to_content

    if out.instruction is None:
        return RecordDict()
    return to_content(out.instruction, out.arrays, dtype=out.instruction.update_dtype)


class Transport(Protocol):
    """How messages reach sites: Flower's Grid, or direct calls in one process."""

    def nodes(self, *, at_least: int, timeout: float) -> list[int]:
        """The connected nodes, waiting up to ``timeout`` for ``at_least`` of them."""

    def send(self, kind: str, messages: dict[int, Outgoing], *, server_round: int,
             timeout: float) -> tuple[dict[int, Received], list[dict]]:
        """Replies by node, and failures ``{"node", "stage", "code", "reason"}`` (errors, late, undecodable)."""


# ----------------------------------------------------------------------------- setup

def initial_state(fed: FederationConfig) -> ServerState:
    """Global model from the pretrained checkpoint, with fresh heads for the federation's tasks."""
    import torch

    from lsemvae.data.tasks import get_task
    from lsemvae.model.config import TaskHeadSpec
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_config

    if not fed.checkpoint:
        raise ValueError("run config `checkpoint` is empty: give the pretrained LS-EMVAE checkpoint "
                         "(flwr run . <connection> --run-config \"checkpoint='/abs/path/best.pt'\")")
    ckpt = load_checkpoint(fed.checkpoint)  # a shipped name, a checkpoint folder (sha256 checked) or a .pt
    src = ckpt["source"]
    log.info("starting from checkpoint %s (sha256 %s), pretrained on %s", src.get("name", fed.checkpoint),
             src["sha256"], src["pretrained_on"])
    heads = {name: TaskHeadSpec(kind=get_task(name).kind, n_outputs=get_task(name).n_outputs) for name in fed.task_names}
    torch.manual_seed(fed.seed)  # head initialisation
    model = model_from_checkpoint(ckpt, tasks={k: v.model_dump() for k, v in heads.items()},
                                  head_input=fed.head_input, head_dropout=fed.head_dropout)
    return ServerState(
        round=0, model={k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
        opt=ServerOptimizerState(), rng=np.random.default_rng(fed.seed).bit_generator.state,
        model_config=model.config.model_dump_json(),
        preprocess_config=preprocess_config(ckpt, model.config).model_dump_json(),
        run_config={**fed.as_run_config(), "checkpoint_source": src},  # the report and final model name it
    )


def instruction(fed: FederationConfig, state: ServerState, server_round: int, seed: int, *,
                evaluate: bool = False) -> Instruction:
    return Instruction(
        job_id=state.job_id, server_round=server_round, num_server_rounds=fed.num_server_rounds, local_epochs=fed.local_epochs,
        lr=fed.lr, batch_size=fed.batch_size, proximal_mu=fed.proximal_mu if fed.strategy == "fedprox" else 0.0,
        dp=fed.dp, train_encoders=fed.encoders_train, evaluate=evaluate, update_dtype=fed.update_dtype, seed=seed,
        model_config_json=state.model_config, preprocess_config_json=state.preprocess_config)


def broadcast(fed: FederationConfig, model: dict[str, np.ndarray], ins: Instruction, nodes: list[int],
              holders: set[int]) -> dict[int, Outgoing]:
    """The message for each node. Under the federated probe the encoders are frozen for the whole run:
    they go (with their digest) only to nodes not in ``holders``; the others get the trained groups alone."""
    arrays = federated(model)
    base = [] if fed.encoders_train else [k for k in arrays if k.startswith("encoders.")]
    if base:
        ins = ins.model_copy(update={"base_digest": digest(encode({k: arrays[k] for k in base}, fed.update_dtype))})
    slim = {k: v for k, v in arrays.items() if k not in base}
    return {n: Outgoing(ins, slim if n in holders else arrays) for n in nodes}


def update_holders(holders: set[int], replies: dict[int, Received], failures: list[dict]) -> None:
    """Nodes that answered hold the frozen encoders now; one that says it lacks them gets them again."""
    holders |= set(replies)
    holders -= {f["node"] for f in failures if f["code"] == K.ERR_NO_BASE}


def round_seed(state: ServerState) -> int:
    """This round's seed for non-DP site training (DP sites use their own OS randomness)."""
    gen = state.generator()
    seed = int(gen.integers(0, 2**31 - 1))
    state.rng = gen.bit_generator.state
    return seed


# ----------------------------------------------------------------------------- site check

def task_mismatch(fed: FederationConfig, info: SiteInfo) -> str | None:
    """Why a site's heads do not fit the job's (None: they do)."""
    from lsemvae.data.tasks import get_task

    known = {}
    for name in fed.task_names:
        task = get_task(name)
        known[name] = (task.kind, list(task.classes))
    problems = []
    for t in info.tasks:
        if t.name not in known:
            problems.append(f"head {t.name!r} is not one of this job's tasks ({', '.join(known)})")
        elif (t.kind, t.classes) != known[t.name]:
            problems.append(f"head {t.name!r} is {t.kind} with classes {t.classes} at the site, "
                            f"{known[t.name][0]} with classes {known[t.name][1]} in this job")
    if not [t for t in info.tasks if t.name in known]:
        problems.append("the site trains none of this job's tasks")
    return "; ".join(problems) or None


def check_sites(transport: Transport, fed: FederationConfig, state: ServerState, nodes: list[int],
                server_round: int) -> tuple[list[int], list[dict]]:
    """Query nodes not yet checked; return the nodes whose heads fit the job and failures for the rest."""
    new = [n for n in nodes if str(n) not in state.checked_nodes]
    failures: list[dict] = []
    if new:
        replies, failures = transport.send(K.QUERY, {n: Outgoing(None) for n in new}, server_round=server_round,
                                           timeout=fed.round_timeout)
        for node, rec in sorted(replies.items()):
            state.node_sites[str(node)] = rec.body.name
            problem = task_mismatch(fed, rec.body)
            if problem:
                failures.append({"node": node, "stage": K.QUERY, "code": None,
                                 "reason": f"incompatible site, not trained: {problem}"})
            else:
                state.checked_nodes[str(node)] = rec.body.name
    return [n for n in nodes if str(n) in state.checked_nodes], failures


# ----------------------------------------------------------------------------- one round

def run_round(transport: Transport, fed: FederationConfig, state: ServerState, server_round: int,
              holders: set[int] | None = None) -> tuple[dict, bool]:
    """Check, train (evaluating the previous round's model on the way), aggregate. Returns the metrics row
    and whether the run may continue; the row's evaluation comes with the next round or the final one.

    ``holders``: nodes known to hold the frozen encoders (updated here); None sends them to all.
    """
    holders = set() if holders is None else holders
    started = time.monotonic()
    row: dict[str, Any] = {"round": server_round, "strategy": fed.strategy, "dp": fed.dp, "failures": []}
    stages: dict[str, float] = {}
    nodes = transport.nodes(at_least=fed.min_sites, timeout=fed.round_timeout)
    nodes, row["failures"] = check_sites(transport, fed, state, nodes, server_round)
    _log_failures(row["failures"], server_round, state)
    stages["wait_nodes"] = time.monotonic() - started
    if len(nodes) < fed.min_sites:
        return _stop(row, f"round {server_round}: only {len(nodes)} compatible site(s) connected after "
                          f"{fed.round_timeout:g} s, min-sites is {fed.min_sites}: stopping the run"), False
    previous = _unevaluated(state)
    ins = instruction(fed, state, server_round, round_seed(state), evaluate=previous is not None)
    outgoing = broadcast(fed, state.model, ins, nodes, holders)
    log.info("round %d/%d: sending %s to %d site(s)", server_round, fed.num_server_rounds,
             " / ".join(f"{b / 1e6:.2f} MB" for b in sorted({_nbytes(o.arrays) for o in outgoing.values()}, reverse=True)),
             len(nodes))
    mark = time.monotonic()
    replies, failures = transport.send(K.TRAIN, outgoing, server_round=server_round, timeout=fed.round_timeout)
    update_holders(holders, replies, failures)
    stages["train"] = time.monotonic() - mark
    mark = time.monotonic()
    if previous is not None:
        summarise_evaluation(state, previous, *piggybacked_evaluations(replies))
    contributions = collect_train(fed, state, row, replies, failures, outgoing)
    _log_failures(failures, server_round, state)
    row["sites_sampled"] = len(nodes)
    row["sites_trained"] = len(contributions)
    track_epsilon(state, row)
    if len(contributions) < fed.min_sites:
        return _stop(row, f"round {server_round}: {len(contributions)} site(s) trained, min-sites is {fed.min_sites}: "
                          "stopping the run (the global model is left as it was)"), False
    opt = ServerOptimizer(fed.strategy, lr=fed.server_lr, beta1=fed.server_beta1, beta2=fed.server_beta2, tau=fed.server_tau)
    state.model, state.opt, row["groups"] = aggregate_round(state.model, contributions, opt, state.opt)
    trained = row["train"].values()
    row["train_loss"] = weighted_mean([t["loss"] for t in trained if t["loss"] is not None],
                                      [t["num_examples"] for t in trained if t["loss"] is not None])
    stages["aggregate"] = time.monotonic() - mark
    row["stage_seconds"] = stages
    row["seconds"] = row["train_seconds"] = time.monotonic() - started
    return row, True


def final_evaluation(transport: Transport, fed: FederationConfig, state: ServerState, holders: set[int]) -> None:
    """Evaluate the last global model (no later round carries it) into the last round's row."""
    row = _unevaluated(state)
    if row is None:
        return
    started = time.monotonic()
    nodes = [n for n in transport.nodes(at_least=1, timeout=fed.round_timeout) if str(n) in state.checked_nodes]
    outgoing = broadcast(fed, state.model, instruction(fed, state, row["round"], 0), nodes, holders)
    replies, failures = transport.send(K.EVALUATE, outgoing, server_round=row["round"], timeout=fed.round_timeout)
    update_holders(holders, replies, failures)
    evals = {node: rec.body.evaluation for node, rec in replies.items()}
    sites = {node: rec.body.site for node, rec in replies.items()}
    summarise_evaluation(state, row, evals, sites, failures)
    for node, rec in replies.items():
        row["eval"][rec.body.site.name]["epsilon"] = rec.body.epsilon
        row.setdefault("bytes", {}).setdefault(rec.body.site.name, {})["down_evaluate"] = _nbytes(outgoing[node].arrays)
    track_epsilon(state, row)
    row.setdefault("stage_seconds", {})["evaluate"] = time.monotonic() - started


def _unevaluated(state: ServerState) -> dict | None:
    """The last round's row if its model has not been evaluated yet."""
    return state.metrics[-1] if state.metrics and "eval" not in state.metrics[-1] else None


def piggybacked_evaluations(replies: dict[int, Received]):
    """The evaluations sites sent with their train replies, their sites, and their policies' refusals."""
    evals = {n: r.body.evaluation for n, r in replies.items() if r.body.evaluation is not None}
    refused = [{"node": n, "stage": K.EVALUATE, "code": r.body.evaluation_refused,
                "reason": K.CATEGORIES.get(r.body.evaluation_refused, "evaluation refused")}
               for n, r in sorted(replies.items()) if r.body.evaluation_refused is not None]
    return evals, {n: r.body.site for n, r in replies.items()}, refused


def collect_train(fed: FederationConfig, state: ServerState, row: dict, replies: dict[int, Received],
                  failures: list[dict], outgoing: dict[int, Outgoing]) -> list[Contribution]:
    """Usable train replies as contributions; the rest become failures. Fills ``row["train"]``, bytes."""
    contributions, rows = [], {}
    for node, rec in sorted(replies.items()):
        body: TrainReply = rec.body
        site = body.site.name
        state.node_sites[str(node)] = site
        c = Contribution(site, rec.arrays, body.group_weights)
        try:
            check_contribution(c, state.model)
        except AggregationError as err:
            failures.append({"node": node, "stage": K.TRAIN, "code": None, "reason": f"unusable reply: {err}"})
            continue
        contributions.append(c)
        rows[site] = {"loss": body.train_loss, "num_examples": body.num_examples, "epsilon": body.epsilon,
                      "epsilon_budget": body.site.epsilon_budget,
                      "delta": body.delta, "noise_multiplier": body.noise_multiplier,
                      "train_seconds": body.train_seconds, "site_seconds": body.site_seconds, "dp": body.site.dp,
                      "groups": sorted({group_of(k) for k in c.arrays})}
        row.setdefault("bytes", {})[site] = {"down": _nbytes(outgoing[node].arrays), "up": rec.nbytes}
    row["failures"] += failures
    row["train"] = rows
    row["non_dp_sites"] = sorted(s for s, t in rows.items() if not t["dp"])
    return contributions


def summarise_evaluation(state: ServerState, row: dict, evaluations: dict[int, Evaluation], sites: dict[int, Any],
                         failures: list[dict]) -> None:
    """Per-site and pooled evaluation of the row's model from the sites' aggregates; a failure never loses the row."""
    from lsemvae.federation.private_eval import pooled
    from lsemvae.train.metrics import auroc_from_histograms

    evals, by_task = {}, {}
    for node, ev in sorted(evaluations.items()):
        site = sites[node].name
        state.node_sites[str(node)] = site
        evals[site] = {"loss": ev.eval_loss, "num_examples": ev.num_examples, "gates": ev.gates,
                       "leads": len(sites[node].leads),
                       "auroc": {t: auroc_from_histograms(pooled([h]))["macro"]["auroc"] for t, h in ev.histograms.items()}}
        for t, h in ev.histograms.items():
            by_task.setdefault(t, {})[site] = h
    _log_failures(failures, row["round"], state)
    row["failures"] += failures
    row["eval"] = evals
    row["eval_loss"] = weighted_mean([e["loss"] for e in evals.values()], [e["num_examples"] for e in evals.values()])
    gated = [e for e in evals.values() if e["gates"]]
    row["gates"] = {g: weighted_mean([e["gates"].get(g, 0.0) for e in gated], [e["num_examples"] for e in gated])
                    for g in dict.fromkeys(g for e in gated for g in e["gates"])}
    row["site_histograms"] = {t: {s: pooled([h]) for s, h in hs.items()} for t, hs in by_task.items()}
    row["pooled_histograms"], row["auroc"] = {}, {}
    for t, hs in by_task.items():
        try:
            row["pooled_histograms"][t] = pooled(list(hs.values()))
            row["auroc"][t] = auroc_from_histograms(row["pooled_histograms"][t])["macro"]["auroc"]
        except ValueError as err:   # sites disagree on a task's classes: report it, keep the round
            row["failures"].append({"node": None, "stage": K.EVALUATE, "code": None, "reason": f"task {t}: {err}"})
            row["auroc"][t] = None


def track_epsilon(state: ServerState, row: dict) -> None:
    """Each site's cumulative epsilon (latest known; the federation's is the max, never the mean), and a flag
    when a site reports less than it did before: its ledger was rolled back or reset."""
    eps: dict[str, float] = {}
    for stage in ("train", "eval"):
        for site, r in row.get(stage, {}).items():
            if "epsilon" in r:
                eps[site] = max(eps.get(site, 0.0), r["epsilon"])
    row["epsilon"] = eps
    row["epsilon_max"] = max(eps.values()) if eps and not row.get("non_dp_sites") else None
    row["epsilon_decreased"] = {}
    for site, e in eps.items():
        before = state.site_epsilon.get(site, 0.0)
        if e < before - EPSILON_SLACK:
            row["epsilon_decreased"][site] = {"before": before, "now": e}
            log.error("site %s reports cumulative epsilon %.4f, LOWER than the %.4f it reported before: its privacy "
                      "ledger was rolled back or reset; ask the site's data custodian", site, e, before)
        state.site_epsilon[site] = max(before, e)


def _stop(row: dict, message: str) -> dict:
    log.error(message)
    row["stopped"] = message
    return row


def _log_failures(failures: list[dict], server_round: int, state: ServerState) -> None:
    """Name each failed site (as last known) and log it as soon as its stage is over."""
    for f in failures:
        f["site"] = state.node_sites.get(str(f["node"]))
        log.warning("round %d: site %s (node %s) failed in %s: %s", server_round, f["site"] or "?", f["node"],
                    f["stage"], f["reason"])


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


# ----------------------------------------------------------------------------- a job

def run_rounds(transport: Transport, fed: FederationConfig, state: ServerState, *,
               after_round: Callable[[ServerState, dict], None] = lambda state, row: None) -> str:
    """Rounds from ``state.round + 1`` to the last, then the last model's evaluation; ``after_round``
    checkpoints. Returns the job's status."""
    holders: set[int] = set()   # not checkpointed: after a restart every site is sent the encoders again
    status = "completed"
    for server_round in range(state.round + 1, fed.num_server_rounds + 1):
        row, go_on = run_round(transport, fed, state, server_round, holders)
        row["time"] = time.time()
        if not go_on:
            after_round(state, row)
            status = "stopped: " + row["stopped"]
            break
        state.round = server_round
        state.metrics.append(row)
        after_round(state, row)
        log.info("round %d done in %.1f s: %d/%d sites trained, max epsilon %s", server_round, row["seconds"],
                 row["sites_trained"], row["sites_sampled"],
                 f"{row['epsilon_max']:.3f}" if row["epsilon_max"] is not None else "–")
        if server_round > 1:
            _log_evaluation(state.metrics[-2])
    if _unevaluated(state) is not None:
        final_evaluation(transport, fed, state, holders)
        after_round(state, state.metrics[-1])
        _log_evaluation(state.metrics[-1])
    return status


def _log_evaluation(row: dict) -> None:
    au = ", ".join(f"{t} {v:.3f}" if v is not None else f"{t} –" for t, v in row.get("auroc", {}).items())
    log.info("model of round %d: eval loss %.4f, pooled AUROC %s (%d site(s))", row["round"], row.get("eval_loss", math.nan),
             au or "–", len(row.get("eval", {})))
