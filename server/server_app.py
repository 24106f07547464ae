"""Flower ServerApp: federated fine-tuning of a pretrained LS-EMVAE across hospital sites.

Each round: wait for at least ``min-sites`` connected sites (up to ``round-timeout``), send them
the federated groups (encoders, fusion, heads; decoders stay on the server; under the probe the
frozen encoders only to sites that do not hold them yet, see :func:`broadcast`), collect replies
until the timeout, log every failed or late site with its reason, aggregate per parameter group
(:mod:`server.aggregation`), evaluate the new model at every site (histograms only), append a
row to ``metrics.jsonl`` and checkpoint the whole server state atomically. Fewer answers than
``min-sites`` stops the run with a clear message. ``resume=true`` continues from the checkpoint.

The round loop talks to the Grid directly instead of wrapping ``flwr.serverapp.strategy.FedAvg``:
per-group weights, sites that send only some groups, and whole-state checkpoints do not fit its
reply contract (one weight per reply, identical metric keys) and would need overriding most of it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from lsemvae.federation import keys as K
from lsemvae.federation.codec import decode, digest, encode
from lsemvae.federation.groups import federated, group_of
from lsemvae.site import FederationConfig, federation_config
from server.aggregation import (
    AggregationError,
    Contribution,
    ServerOptimizer,
    ServerOptimizerState,
    aggregate_round,
    check_contribution,
    weighted_mean,
)
from server.state import ServerState, load_state, save_state

log = logging.getLogger("flwr.lsemvae.server")

app = ServerApp()

NODE_POLL_S = 1.0


# ----------------------------------------------------------------------------- setup

def output_dir(fed: FederationConfig, run_id: int) -> Path:
    """Absolute output directory (the ServerApp's cwd is the SuperLink's, so relative paths mislead)."""
    if fed.out_dir:
        out = Path(fed.out_dir)
        if not out.is_absolute():
            raise ValueError(f"out-dir must be an absolute path on the coordinator (got {fed.out_dir!r})")
        return out
    return (Path.cwd() / "runs" / "federation" / str(run_id)).resolve()


def initial_state(fed: FederationConfig) -> ServerState:
    """Global model from the pretrained checkpoint, with fresh heads for the federation's tasks."""
    from lsemvae.data.preprocess import PreprocessConfig
    from lsemvae.data.tasks import get_task
    from lsemvae.model.config import TaskHeadSpec
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint

    if not fed.checkpoint:
        raise ValueError("run config `checkpoint` is empty: give the pretrained LS-EMVAE checkpoint "
                         "(flwr run . <connection> --run-config \"checkpoint='/abs/path/best.pt'\")")
    ckpt = load_checkpoint(fed.checkpoint)  # a shipped name, a checkpoint folder (sha256 checked) or a .pt
    src = ckpt["source"]
    log.info("starting from checkpoint %s (sha256 %s), pretrained on %s", src.get("name", fed.checkpoint),
             src["sha256"], src["pretrained_on"])
    heads = {}
    for name in fed.task_names:
        task = get_task(name)
        heads[name] = TaskHeadSpec(kind=task.kind, n_outputs=task.n_outputs)
    torch.manual_seed(fed.seed)  # head initialisation
    model = model_from_checkpoint(ckpt, tasks={k: v.model_dump() for k, v in heads.items()},
                                  head_input=fed.head_input, head_dropout=fed.head_dropout)
    prov = ckpt.get("provenance", {}) or {}
    pre = prov.get("preprocess_config") or prov.get("preprocess")
    pre_cfg = PreprocessConfig.model_validate(pre) if pre else model.config.preprocess_config()
    if not pre:
        log.warning("checkpoint %s records no preprocessing config: sites use the defaults at %d Hz", fed.checkpoint,
                    model.config.fs)
    return ServerState(
        round=0, model={k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
        opt=ServerOptimizerState(), rng=np.random.default_rng(fed.seed).bit_generator.state,
        model_config=model.config.model_dump_json(), preprocess_config=pre_cfg.model_dump_json(),
        run_config={**fed.as_run_config(), "checkpoint_source": src},  # the report and final model name it
    )


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _payload_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


def _site_seconds(metrics) -> float | None:
    """Wall time of the site's handler (for the framework-overhead benchmark); None from sites that omit it."""
    return float(metrics[K.SITE_SECONDS]) if K.SITE_SECONDS in metrics else None


# ----------------------------------------------------------------------------- messaging

def wait_for_nodes(grid: Grid, fed: FederationConfig) -> list[int]:
    deadline = time.monotonic() + fed.round_timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= fed.min_sites or time.monotonic() >= deadline:
            return nodes
        time.sleep(NODE_POLL_S)


def send_round(grid: Grid, nodes: list[int], kind: str, content: RecordDict | dict[int, RecordDict],
               fed: FederationConfig, server_round: int) -> tuple[dict[int, Message], list[dict]]:
    """Send ``content`` (one for all, or one per node) to every node; return replies with content by node,
    and failures (errors, late)."""
    msgs = [Message(content=content[n] if isinstance(content, dict) else content, dst_node_id=n, message_type=kind,
                    group_id=str(server_round), ttl=fed.round_timeout) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=fed.round_timeout))
    # The SuperLink answers for a node it gave up on ("Node Unavailable", expired message) from its own id:
    # attribute every reply by the message it answers (pushing set the ids), never by its sender.
    dst = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in msgs}
    ok: dict[int, Message] = {}
    failures: list[dict] = []
    for r in replies:
        node = dst.get(r.metadata.reply_to_message_id, int(r.metadata.src_node_id))
        if r.has_error():
            failures.append({"node": node, "stage": kind, "code": int(r.error.code), "reason": r.error.reason})
        else:
            ok[node] = r
    answered = {dst.get(r.metadata.reply_to_message_id, int(r.metadata.src_node_id)) for r in replies}
    for n in nodes:
        if n not in answered:
            failures.append({"node": n, "stage": kind, "code": None,
                             "reason": f"no reply within round-timeout {fed.round_timeout:g} s (late, disconnected or crashed)"})
    return ok, failures


def _site_name(reply: Message, node: int, state: ServerState) -> str:
    if K.SITE in reply.content.config_records:
        name = str(reply.content[K.SITE][K.SITE_NAME])
        state.node_sites[str(node)] = name
        return name
    return state.node_sites.get(str(node), f"node-{node}")


def _histograms_from(record: ConfigRecord, bins: int) -> dict[str, dict]:
    """Rebuild lsemvae.train.metrics histograms from a site's flat HISTOGRAMS record."""
    edges = np.linspace(0.0, 1.0, bins + 1).tolist()
    out = {}
    for key in record:
        task, _, part = key.rpartition("/")
        if part != K.HIST_CLASSES:
            continue
        classes = [str(c) for c in record[key]]
        h = {"edges": edges, "classes": classes}
        for p in record[f"{task}/{K.HIST_PARTS}"]:
            flat = np.asarray(record[f"{task}/{p}"], dtype=np.float64)
            if flat.size != len(classes) * bins:
                raise ValueError(f"histogram {task}/{p} has {flat.size} values, expected {len(classes)} x {bins}")
            cast = int if p in ("pos", "neg") else float
            h[p] = [[cast(v) for v in row] for row in flat.reshape(len(classes), bins)]
        out[task] = h
    return out


# ----------------------------------------------------------------------------- one round

def train_config(fed: FederationConfig, state: ServerState, server_round: int, seed: int) -> ConfigRecord:
    return ConfigRecord({
        K.ROUND: server_round, K.NUM_ROUNDS: fed.num_server_rounds, K.LOCAL_EPOCHS: fed.local_epochs, K.LR: fed.lr,
        K.BATCH_SIZE: fed.batch_size, K.PROXIMAL_MU: fed.proximal_mu if fed.strategy == "fedprox" else 0.0,
        K.DP: fed.dp, K.TRAIN_ENCODERS: fed.encoders_train, K.HIST_BINS: fed.eval_bins, K.RUN_SEED: seed, K.UPDATE_DTYPE: fed.update_dtype,
        K.MODEL_CONFIG: state.model_config, K.PREPROCESS_CONFIG: state.preprocess_config,
    })


def broadcast(fed: FederationConfig, model: dict[str, np.ndarray], cfg: ConfigRecord, nodes: list[int],
              holders: set[int]) -> tuple[dict[int, RecordDict], dict[int, int]]:
    """The message content for each node, and its array bytes.

    Under the federated probe the encoders are frozen for the whole run: they go (with their
    digest in ``cfg``) only to nodes not in ``holders``; the others get the trained groups alone.
    """
    wire = encode(federated(model), fed.update_dtype)
    base = [] if fed.encoders_train else [k for k in wire if k.startswith("encoders.")]
    full = _array_record(wire)
    slim = full
    if base:
        cfg[K.BASE_DIGEST] = digest({k: wire[k] for k in base})
        slim = _array_record({k: v for k, v in wire.items() if k not in base})
    contents = {n: RecordDict({K.ARRAYS: slim if n in holders else full, K.CONFIG: cfg}) for n in nodes}
    return contents, {n: _payload_bytes(c[K.ARRAYS]) for n, c in contents.items()}


def _update_holders(holders: set[int], replies: dict[int, Message], failures: list[dict]) -> None:
    """Nodes that answered hold the frozen encoders now; one that says it lacks them gets them again."""
    holders |= set(replies)
    holders -= {f["node"] for f in failures if f["code"] == K.ERR_NO_BASE}


def run_round(grid: Grid, fed: FederationConfig, state: ServerState, server_round: int,
              holders: set[int] | None = None) -> tuple[dict, bool]:
    """Train, aggregate, evaluate. Returns the metrics row and whether the run may continue.

    ``holders``: nodes known to hold the frozen encoders (updated here); None sends them to all.
    """
    holders = set() if holders is None else holders
    started = time.monotonic()
    row: dict[str, Any] = {"round": server_round, "strategy": fed.strategy, "dp": fed.dp, "failures": []}
    nodes = wait_for_nodes(grid, fed)
    stages = {"wait_nodes": time.monotonic() - started}  # seconds per stage of the round
    if len(nodes) < fed.min_sites:
        msg = (f"round {server_round}: only {len(nodes)} site(s) connected after {fed.round_timeout:g} s, "
               f"min-sites is {fed.min_sites}: stopping the run")
        log.error(msg)
        row["stopped"] = msg
        return row, False
    gen = state.generator()
    seed = int(gen.integers(0, 2**31 - 1))   # this round's seed for the sites' sampling and noise
    state.rng = gen.bit_generator.state
    cfg = train_config(fed, state, server_round, seed)
    contents, down = broadcast(fed, state.model, cfg, nodes, holders)
    log.info("round %d/%d: sending %s to %d site(s)", server_round, fed.num_server_rounds,
             " / ".join(f"{b / 1e6:.2f} MB" for b in sorted(set(down.values()), reverse=True)), len(nodes))
    mark = time.monotonic()
    replies, failures = send_round(grid, nodes, K.TRAIN, contents, fed, server_round)
    _update_holders(holders, replies, failures)
    stages["train"] = time.monotonic() - mark

    mark = time.monotonic()
    contributions, train_rows = [], {}
    for node, reply in sorted(replies.items()):
        site = _site_name(reply, node, state)
        try:
            rec = reply.content[K.ARRAYS]
            received = decode({k: a.numpy() for k, a in rec.items()}, fed.update_dtype, sender=f"site {site}")
            c = Contribution(site, received, dict(reply.content[K.GROUP_WEIGHTS]))
            check_contribution(c, state.model)
        except (KeyError, AggregationError, ValueError) as err:
            failures.append({"node": node, "stage": K.TRAIN, "code": None, "reason": f"unusable reply: {err}"})
            continue
        m = reply.content[K.METRICS]
        contributions.append(c)
        train_rows[site] = {"loss": float(m[K.TRAIN_LOSS]), "num_examples": int(m[K.NUM_EXAMPLES]),
                            "epsilon": float(m[K.EPSILON]), "delta": float(m[K.DELTA]),
                            "noise_multiplier": float(m[K.NOISE_MULTIPLIER]), "train_seconds": float(m[K.TRAIN_SECONDS]),
                            "site_seconds": _site_seconds(m),
                            "dp": bool(reply.content[K.SITE][K.SITE_DP]),
                            "groups": sorted({group_of(k) for k in c.arrays})}
        row.setdefault("bytes", {})[site] = {"down": down[node], "up": _payload_bytes(rec)}
    for f in failures:
        f["site"] = state.node_sites.get(str(f["node"]))
        log.warning("round %d: site %s (node %s) failed in %s: %s", server_round, f["site"] or "?", f["node"],
                    f["stage"], f["reason"])
    row["failures"] = failures
    row["train"] = train_rows
    row["sites_sampled"] = len(nodes)
    row["sites_trained"] = len(contributions)
    if len(contributions) < fed.min_sites:
        msg = (f"round {server_round}: {len(contributions)} site(s) trained, min-sites is {fed.min_sites}: "
               "stopping the run (the global model is left as it was)")
        log.error(msg)
        row["stopped"] = msg
        return row, False

    opt = ServerOptimizer(fed.strategy, lr=fed.server_lr, beta1=fed.server_beta1, beta2=fed.server_beta2, tau=fed.server_tau)
    state.model, state.opt, contributors = aggregate_round(state.model, contributions, opt, state.opt)
    row["groups"] = contributors
    row["train_loss"] = weighted_mean([t["loss"] for t in train_rows.values()],
                                      [t["num_examples"] for t in train_rows.values()])
    row["train_seconds"] = time.monotonic() - started
    stages["aggregate"] = time.monotonic() - mark
    mark = time.monotonic()

    # Evaluation of the aggregated model: histograms and aggregate losses only.
    eval_cfg = train_config(fed, state, server_round, seed)
    ev_contents, ev_down = broadcast(fed, state.model, eval_cfg, nodes, holders)
    for node, site in ((n, state.node_sites.get(str(n))) for n in nodes):   # the evaluation broadcast, down once more
        if site in row.get("bytes", {}):
            row["bytes"][site]["down_evaluate"] = ev_down[node]
    ev_replies, ev_failures = send_round(grid, nodes, K.EVALUATE, ev_contents, fed, server_round)
    _update_holders(holders, ev_replies, ev_failures)
    stages["evaluate"] = time.monotonic() - mark
    mark = time.monotonic()
    from lsemvae.train.metrics import auroc_from_histograms, merge_histograms

    evals, site_hists = {}, {}
    for node, reply in sorted(ev_replies.items()):
        site = _site_name(reply, node, state)
        try:
            hists = _histograms_from(reply.content[K.HISTOGRAMS], fed.eval_bins)
            m = reply.content[K.METRICS]
        except (KeyError, ValueError) as err:
            ev_failures.append({"node": node, "stage": K.EVALUATE, "code": None, "reason": f"unusable reply: {err}"})
            continue
        evals[site] = {"loss": float(m[K.EVAL_LOSS]), "num_examples": int(m[K.NUM_EXAMPLES]), "epsilon": float(m[K.EPSILON]),
                       "site_seconds": _site_seconds(m), "auroc": {t: auroc_from_histograms(h)["macro"]["auroc"] for t, h in hists.items()},
                       "gates": {g: float(w) for g, w in reply.content[K.GATES].items()} if K.GATES in reply.content else {}}
        for t, h in hists.items():
            site_hists.setdefault(t, {})[site] = h
    for f in ev_failures:
        f["site"] = state.node_sites.get(str(f["node"]))
        log.warning("round %d: site %s (node %s) failed in evaluate: %s", server_round, f["site"] or "?", f["node"], f["reason"])
    row["failures"] += ev_failures
    row["eval"] = evals
    row["eval_loss"] = weighted_mean([e["loss"] for e in evals.values()], [e["num_examples"] for e in evals.values()])
    # the gate's mean weight per lead group over every site's evaluation records (which groups the tasks rely on)
    gated = [e for e in evals.values() if e["gates"]]
    row["gates"] = {g: weighted_mean([e["gates"].get(g, 0.0) for e in gated], [e["num_examples"] for e in gated])
                    for g in dict.fromkeys(g for e in gated for g in e["gates"])}
    pooled = {t: merge_histograms(list(hs.values())) for t, hs in site_hists.items()}
    row["auroc"] = {t: auroc_from_histograms(h)["macro"]["auroc"] for t, h in pooled.items()}
    row["pooled_histograms"] = pooled
    row["site_histograms"] = site_hists
    # Privacy: each site's cumulative epsilon (latest known); the federation's is the max, never the mean.
    eps = {s: t["epsilon"] for s, t in train_rows.items()}
    for s, e in evals.items():
        eps[s] = max(eps.get(s, 0.0), e["epsilon"])
    row["epsilon"] = eps
    # A site that trained without DP has no guarantee at all: the federation's epsilon is then undefined.
    row["non_dp_sites"] = sorted(s for s, t in train_rows.items() if not t["dp"])
    row["epsilon_max"] = max(eps.values()) if eps and not row["non_dp_sites"] else None
    stages["metrics"] = time.monotonic() - mark
    row["stage_seconds"] = stages
    row["seconds"] = time.monotonic() - started
    return row, True


# ----------------------------------------------------------------------------- main

def _attach_file_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


@app.main()
def main(grid: Grid, context: Context) -> None:
    fed = federation_config(dict(context.run_config))
    # The server only loads, averages and saves weights: one thread, so it never competes with sites
    # sharing the machine (torch threads beyond the free cores slow everything down many-fold).
    torch.set_num_threads(1)
    out = output_dir(fed, int(context.run_id))
    out.mkdir(parents=True, exist_ok=True)
    handler = _attach_file_log(out)
    try:
        run(grid, fed, out)
    finally:
        log.removeHandler(handler)
        handler.close()


def run(grid: Grid, fed: FederationConfig, out: Path) -> ServerState:
    from server.report import write_report

    metrics_path = out / "metrics.jsonl"
    if fed.resume and (out / "server-state.pt").exists():
        state = load_state(out)
        log.info("resuming from %s after round %d", out / "server-state.pt", state.round)
        # metrics.jsonl may hold a row written after the last checkpoint: rewrite it from the state
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in state.metrics))
    else:
        state = initial_state(fed)
        metrics_path.write_text("")
        (out / "run-config.json").write_text(json.dumps(state.run_config, indent=2) + "\n")
    log.info("federated fine-tuning: strategy %s, %d rounds, min %d sites, timeout %g s, DP %s, output %s",
             fed.strategy, fed.num_server_rounds, fed.min_sites, fed.round_timeout, "on" if fed.dp else "OFF", out)
    status = "completed"
    holders: set[int] = set()   # not checkpointed: after a restart every site is sent the encoders again
    for server_round in range(state.round + 1, fed.num_server_rounds + 1):
        row, go_on = run_round(grid, fed, state, server_round, holders)
        row["time"] = time.time()
        if not go_on:
            status = "stopped: " + row.get("stopped", "")
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            break
        state.round = server_round
        state.metrics.append(row)
        save_state(out, state)
        with open(metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        au = ", ".join(f"{t} {v:.3f}" if v is not None else f"{t} –" for t, v in row["auroc"].items())
        log.info("round %d done in %.1f s: %d/%d sites trained, train loss %.4f, eval loss %.4f, pooled AUROC %s, "
                 "max epsilon %s", server_round, row["seconds"], row["sites_trained"], row["sites_sampled"],
                 row["train_loss"], row["eval_loss"], au,
                 f"{row['epsilon_max']:.3f}" if row["epsilon_max"] is not None else "–")
    save_final_model(out, state)
    report = write_report(out, state.metrics, status=status, checkpoint=state.run_config.get("checkpoint_source"))
    log.info("report: %s", report)
    return state


def save_final_model(out: Path, state: ServerState) -> Path:
    """The global model as an LS-EMVAE checkpoint (loadable by the central evaluation tools)."""
    from lsemvae.train.checkpoint import save_checkpoint

    from client.site_runtime import model_from_config

    model = model_from_config(state.model_config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.model.items()})
    return save_checkpoint(out / "final-model.pt", model=model, epoch=state.round,
                           provenance={"preprocess_config": json.loads(state.preprocess_config),
                                       "federation": state.run_config})
