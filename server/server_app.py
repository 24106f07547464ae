"""Flower ServerApp: an adapter between Flower's Grid and the federated job in the library.

The round is :mod:`lsemvae.federation.server_round` (check sites, configure, aggregate, evaluate,
summarise). This module provides its transport over Flower's Grid (:class:`GridTransport`), the job's
files in ``out-dir`` (``server-state.pt`` after every round, ``metrics.jsonl``, ``server.log``,
``final-model.pt``, the report), resume, and the job's outcome: a job that did not complete still
writes its model, metrics and report, then fails, so ``flwr ls`` shows it as failed.

The round loop talks to the Grid directly instead of wrapping ``flwr.serverapp.strategy.FedAvg``:
per-group weights, sites that send only some groups, and whole-state checkpoints do not fit its
reply contract (one weight per reply, identical metric keys) and would need overriding most of it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from lsemvae.errors import LSEMVAEError
from lsemvae.federation.messages import REPLY_MODELS, MessageError, from_content, packed_bytes
from lsemvae.federation.server_round import Outgoing, Received, initial_state, outgoing_content, run_rounds
from lsemvae.federation.state import ServerState, load_state, save_state
from lsemvae.fileio import atomic_write, atomic_write_json
from lsemvae.site import FederationConfig, federation_config

log = logging.getLogger("flwr.lsemvae.server")

app = ServerApp()

NODE_POLL_S = 1.0


class JobFailed(LSEMVAEError):
    """The job stopped before its last round or broke; its files say why."""


class GridTransport:
    """:class:`~lsemvae.federation.server_round.Transport` over Flower's Grid."""

    def __init__(self, grid: Grid, fed: FederationConfig):
        self.grid, self.fed = grid, fed

    def nodes(self, *, at_least: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= at_least or time.monotonic() >= deadline:
                return nodes
            time.sleep(NODE_POLL_S)

    def send(self, kind: str, messages: dict[int, Outgoing], *, server_round: int,
             timeout: float) -> tuple[dict[int, Received], list[dict]]:
        msgs = [Message(content=outgoing_content(out), dst_node_id=n, message_type=kind, group_id=str(server_round),
                        ttl=timeout) for n, out in messages.items()]
        replies = list(self.grid.send_and_receive(msgs, timeout=timeout))
        # The SuperLink answers for a node it gave up on ("Node Unavailable", expired message) from its own id:
        # attribute every reply by the message it answers (pushing set the ids), never by its sender.
        dst = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in msgs}
        ok: dict[int, Received] = {}
        failures: list[dict] = []
        for r in replies:
            node = dst.get(r.metadata.reply_to_message_id, int(r.metadata.src_node_id))
            if r.has_error():
                failures.append({"node": node, "stage": kind, "code": int(r.error.code), "reason": r.error.reason})
                continue
            try:
                body, arrays = from_content(r.content, REPLY_MODELS[kind], dtype=self.fed.update_dtype,
                                            sender=f"node {node}")
            except MessageError as err:
                failures.append({"node": node, "stage": kind, "code": None, "reason": f"unusable reply: {err}"})
                continue
            ok[node] = Received(body, arrays, packed_bytes(r.content))
        answered = {dst.get(r.metadata.reply_to_message_id, int(r.metadata.src_node_id)) for r in replies}
        failures += [{"node": n, "stage": kind, "code": None,
                      "reason": f"no reply within round-timeout {timeout:g} s (late, disconnected or crashed)"}
                     for n in messages if n not in answered]
        return ok, failures


def output_dir(fed: FederationConfig, run_id: int) -> Path:
    """Absolute output directory (the ServerApp's cwd is the SuperLink's, so relative paths mislead)."""
    if fed.out_dir:
        out = Path(fed.out_dir)
        if not out.is_absolute():
            raise ValueError(f"out-dir must be an absolute path on the coordinator (got {fed.out_dir!r})")
        return out
    return (Path.cwd() / "runs" / "federation" / str(run_id)).resolve()


@app.main()
def main(grid: Grid, context: Context) -> None:
    fed = federation_config(dict(context.run_config))
    # The server only loads, averages and saves weights: one thread, so it never competes with sites
    # sharing the machine (torch threads beyond the free cores slow everything down many-fold).
    torch.set_num_threads(1)
    out = output_dir(fed, int(context.run_id))
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        run(GridTransport(grid, fed), fed, out)
    finally:
        log.removeHandler(handler)
        handler.close()


def run(transport, fed: FederationConfig, out: Path) -> ServerState:
    """The whole job: state (fresh or resumed), rounds, final model and report; :class:`JobFailed` unless it completed."""
    from server.report import write_report

    metrics_path = out / "metrics.jsonl"
    if fed.resume and (out / "server-state.pt").exists():
        state = load_state(out)
        log.info("resuming from %s after round %d", out / "server-state.pt", state.round)
        # metrics.jsonl may hold a row written after the last checkpoint: rewrite it from the state
        atomic_write(metrics_path, "".join(json.dumps(r) + "\n" for r in state.metrics), private=False)
    else:
        state = initial_state(fed)
        atomic_write(metrics_path, "", private=False)
        atomic_write_json(out / "run-config.json", state.run_config, private=False, indent=2)
    state.site_epsilon = {**_registry(fed), **state.site_epsilon}
    log.info("federated fine-tuning: strategy %s, %d rounds, min %d sites, timeout %g s, DP %s, output %s",
             fed.strategy, fed.num_server_rounds, fed.min_sites, fed.round_timeout, "on" if fed.dp else "OFF", out)

    def after_round(state: ServerState, row: dict) -> None:
        # a round's row gains its evaluation a round later: the file is rewritten from the state each time
        rows = state.metrics + ([row] if "stopped" in row else [])
        if "stopped" not in row:
            save_state(out, state)
        atomic_write(metrics_path, "".join(json.dumps(r) + "\n" for r in rows), private=False)
        if fed.epsilon_registry:
            atomic_write_json(fed.epsilon_registry, state.site_epsilon, private=False)

    try:
        status = run_rounds(transport, fed, state, after_round=after_round)
    except Exception as err:   # whatever broke, the rounds done so far keep their model and report
        log.exception("the job broke in round %d", state.round + 1)
        status = f"failed in round {state.round + 1}: {type(err).__name__}: {err}"
    save_final_model(out, state)
    report = write_report(out, state.metrics, status=status, checkpoint=state.run_config.get("checkpoint_source"))
    log.info("report: %s", report)
    if status != "completed":
        log.error("JOB %s. Model, metrics and report of the rounds done are in %s; `flwr ls <connection>` shows "
                  "the job as failed.", status.upper(), out)
        raise JobFailed(status)
    return state


def _registry(fed: FederationConfig) -> dict[str, float]:
    """Every site's highest cumulative epsilon seen by earlier jobs (run config ``epsilon-registry``)."""
    if not fed.epsilon_registry or not Path(fed.epsilon_registry).is_file():
        return {}
    return {str(k): float(v) for k, v in json.loads(Path(fed.epsilon_registry).read_text()).items()}


def save_final_model(out: Path, state: ServerState) -> Path:
    """The global model as an LS-EMVAE checkpoint (loadable by the central evaluation tools)."""
    from lsemvae.federation.runtime import model_from_config
    from lsemvae.train.checkpoint import save_checkpoint

    model = model_from_config(state.model_config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.model.items()})
    return save_checkpoint(out / "final-model.pt", model=model, epoch=state.round,
                           provenance={"preprocess_config": json.loads(state.preprocess_config),
                                       "federation": state.run_config})
