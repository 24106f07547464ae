"""Site and federation configuration: ``configs/sites/<site>.toml`` and the run config.

A hospital edits one site file: where its ECGs and labels are, which leads it records, which
tasks it labels, its privacy budget, how to reach the coordinator and where to keep local state
(privacy ledger, data cache, outgoing-message log). Relative paths are relative to the site
file, so the shipped examples work from any working directory.

The run config (``[tool.flwr.app.config]`` in pyproject.toml, ``configs/federation.toml``,
``flwr run --run-config``) is flat TOML with hyphenated keys; :class:`FederationConfig` parses
it once so a typo fails at submission, not mid-run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lsemvae.config import StrictModel, load_toml, validate
from lsemvae.errors import ConfigError
from lsemvae.leads import resolve_lead_set

SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class DataConfig(StrictModel):
    """Where the site's ECGs and labels are and how they are laid out."""

    format: Literal["manifest", "ptbxl", "ludb"] = Field(
        description="manifest: a folder of records + labels CSV (hospitals, synthetic cohort); "
        "ptbxl / ludb: the public datasets in their original layout")
    root: Path = Field(description="manifest: folder of record files; ptbxl/ludb: dataset root")
    labels: Path | None = Field(None, description="manifest only: labels CSV (record id, patient id, label columns)")
    id_column: str = "record_id"
    patient_column: str = "patient_id"
    ptbxl_sites: list[int] | None = Field(None, description="ptbxl only: keep records from these PTB-XL `site` values")
    ptbxl_rate: Literal[100, 500] = 100
    max_records: int | None = Field(None, gt=0, description="use at most this many records (smoke tests)")
    gain_correction: float = Field(1.0, gt=0, description="multiply every signal by this: the fix for an export "
                                   "with a wrong gain, which QC reports (wrong-scale, implausible-amplitude) with the "
                                   "factor to use; a header gain 5x too high reads signals 5x too small: 5")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of patients held out for federated evaluation")

    @model_validator(mode="after")
    def _labels_for_manifest(self) -> "DataConfig":
        if self.format == "manifest" and self.labels is None:
            raise ValueError("format 'manifest' needs `labels` (path of the labels CSV)")
        if self.format != "manifest" and self.labels is not None:
            raise ValueError(f"`labels` is only for format 'manifest'; {self.format} labels come from its metadata")
        if self.ptbxl_sites is not None and self.format != "ptbxl":
            raise ValueError("`ptbxl_sites` is only for format 'ptbxl'")
        return self


class TaskBinding(StrictModel):
    """A task the site trains: the model head ``name``, from a label ``column``, a built-in multi-label task's
    ``columns`` (one per class, in its class order) or the task's own rule."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    column: str | None = Field(None, description="manifest label column (0/1) for this task; omit for a built-in task rule")
    columns: list[str] | None = Field(None, description="a built-in multi-label task's label columns, one per class in "
                                      "its order (superclass: NORM, MI, STTC, CD, HYP); omit when named so")

    @model_validator(mode="after")
    def _one_source(self) -> "TaskBinding":
        if self.column and self.columns:
            raise ValueError("give `column` (a binary task) or `columns` (a multi-label one), not both")
        return self


RUN_SHARE = 4   # default policy: one job may spend at most a quarter of the lifetime budget


class PrivacyBudget(StrictModel):
    """The site's differential-privacy budget for this dataset, across all rounds and runs."""

    epsilon: float = Field(gt=0, le=100, description="total epsilon this dataset may ever spend")
    delta: float = Field(1e-5, gt=0, lt=1e-2, description="delta; choose below 1/number of records")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping norm")
    run_epsilon: float | None = Field(
        None, gt=0, description=f"most one federated job may spend (default: epsilon / {RUN_SHARE}, so the budget "
        "lasts at least that many jobs; set it to epsilon for a single job)")
    max_noise_multiplier: float = Field(
        5.0, gt=0, le=1000, description="refuse a round whose planned noise multiplier is above this: the update "
        "would be mostly noise (spent budget, no useful training)")
    accountant: Literal["rdp", "prv"] = "rdp"
    allow_non_dp: bool = Field(False, description="accept a server request to train WITHOUT DP (comparisons only)")

    @property
    def job_epsilon(self) -> float:
        """The most one job may spend: ``run_epsilon``, else the default share of the lifetime budget."""
        return self.run_epsilon if self.run_epsilon is not None else self.epsilon / RUN_SHARE


class EvaluationPolicy(StrictModel):
    """What the site reports when the server asks it to evaluate a model: aggregates it controls, never records.

    Scores are binned on the site's own grid; adjacent bins are merged until every reported cell holds at
    least ``min_cell`` records (or none); a class with fewer than ``min_cell`` records is not reported.
    """

    enabled: bool = Field(True, description="false: refuse every evaluation request (only DP updates leave the site)")
    bins: int = Field(20, description="score bins per class on [0, 1] before merging; one of 10, 20, 25, 50, 100")
    min_cell: int = Field(10, ge=1, le=1000, description="smallest number of records a reported count may hold (k)")
    min_records: int = Field(20, ge=1, description="refuse to evaluate on fewer records than this")

    @field_validator("bins")
    @classmethod
    def _divides_100(cls, v: int) -> int:
        if v not in (10, 20, 25, 50, 100):
            raise ValueError("must be 10, 20, 25, 50 or 100 (sites' grids must tile the server's 100-bin grid)")
        return v


class SiteLimits(StrictModel):
    """Bounds on what a server may ask of this site (a hostile message must not exhaust it)."""

    max_local_epochs: int = Field(10, ge=1, le=1000)
    max_rounds: int = Field(1000, ge=1, description="most rounds one job may plan (num-server-rounds)")
    max_batch_size: int = Field(4096, ge=1)
    max_model_parameters: int = Field(50_000_000, ge=1, description="refuse a model config larger than this "
                                      "(the compact model has ~1 M; the faithful profile needs ~250 M)")
    max_samples: int = Field(30_000, ge=100, description="most samples per lead a preprocessing config may ask for")
    max_cache_variants: int = Field(3, ge=1, description="preprocessed caches kept; the least recently used goes")


class Connection(StrictModel):
    """How this site's SuperNode reaches the coordinator."""

    superlink: str = Field(description="SuperLink Fleet address host:port, e.g. coordinator.example.org:8000")
    root_certificates: Path | None = Field(None, description="CA certificate (PEM) that signed the SuperLink's certificate")
    auth_key: Path | None = Field(None, description="this site's OpenSSH ECDSA private key registered with the SuperLink")
    node_port: int = Field(9094, ge=1024, le=65535, description="local port of the SuperNode's runtime API (loopback)")
    approved_apps: list[str] = Field(
        default_factory=list, description="sha256 of the app versions this site reviewed and runs (`python "
        "client/run.py --app-hash` prints it for a checkout); any other app the coordinator submits is refused. "
        "Required with TLS")

    @field_validator("approved_apps")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if not re.fullmatch(r"[0-9a-f]{64}", h)]
        if bad:
            raise ValueError(f"each entry must be a sha256 of 64 lower-case hex characters (got {bad[0]!r})")
        return v

    @field_validator("superlink")
    @classmethod
    def _address(cls, v: str) -> str:
        m = ADDRESS.match(v)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise ValueError("must be host:port (IPv6 in brackets), e.g. coordinator.example.org:8000")
        return v


class SiteConfig(StrictModel):
    """One hospital (or simulated site): ``configs/sites/<name>.toml``."""

    name: str = Field(description="site name: lower case letters, digits, '-' or '_'")
    description: str = ""
    leads: str | list[str] = Field("12L", description='"12L", "6L" or a list of lead names')
    tasks: list[TaskBinding] = Field(min_length=1)
    data: DataConfig
    privacy: PrivacyBudget
    connection: Connection
    state_dir: Path = Field(description="local state: privacy ledger, data cache, outgoing-message log")
    anchor_dir: Path = Field(description="privacy-ledger anchors: a directory OUTSIDE state_dir (ideally another "
                             "volume), so that deleting the state dir does not reset the budget")
    threads: int = Field(1, ge=1, le=256, description="CPU threads for local training (torch.set_num_threads); "
                         "more than the free cores makes torch far slower, not faster")
    evaluation: EvaluationPolicy = Field(default_factory=EvaluationPolicy)
    limits: SiteLimits = Field(default_factory=SiteLimits)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SITE_NAME.match(v):
            raise ValueError("use lower case letters, digits, '-' or '_' (max 63), starting with a letter or digit")
        return v

    @field_validator("leads")
    @classmethod
    def _leads(cls, v: str | list[str]) -> str | list[str]:
        try:
            resolve_lead_set(v)
        except Exception as err:  # LeadError: say which field
            raise ValueError(str(err)) from None
        return v

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[TaskBinding]) -> list[TaskBinding]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique (got {names})")
        return v

    @model_validator(mode="after")
    def _anchor_outside_state(self) -> "SiteConfig":
        state, anchor = _absolute(self.state_dir), _absolute(self.anchor_dir)
        if anchor == state or state in anchor.parents:
            raise ValueError(f"anchor_dir {self.anchor_dir} is inside state_dir {self.state_dir}: deleting the state "
                             "dir would then reset the privacy budget; put the anchors elsewhere (another volume)")
        return self

    @property
    def lead_names(self) -> tuple[str, ...]:
        return resolve_lead_set(self.leads)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "privacy-ledger.json"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def outgoing_log(self) -> Path:
        return self.state_dir / "outgoing-messages.jsonl"

    @property
    def flwr_home(self) -> Path:
        """Flower's own files for this site (installed app bundles, its config): under the site's state."""
        return self.state_dir / "flwr"


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(path.expanduser().absolute()))


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate a site file; relative paths become absolute, relative to the file."""
    path = Path(path)
    cfg = load_toml(path, SiteConfig)
    base = path.resolve().parent
    data = cfg.data.model_copy(update={"root": _resolve(cfg.data.root, base), "labels": _resolve(cfg.data.labels, base)})
    conn = cfg.connection.model_copy(update={
        "root_certificates": _resolve(cfg.connection.root_certificates, base),
        "auth_key": _resolve(cfg.connection.auth_key, base)})
    return cfg.model_copy(update={"data": data, "connection": conn, "state_dir": _resolve(cfg.state_dir, base),
                                  "anchor_dir": _resolve(cfg.anchor_dir, base)})


def site_config_path(site: str, sites_dir: str | Path) -> Path:
    if not SITE_NAME.match(site):
        raise ConfigError(f"site name {site!r}: use lower case letters, digits, '-' or '_'")
    return Path(sites_dir) / f"{site}.toml"


# --------------------------------------------------------------------------- run config

def _hyphen(name: str) -> str:
    return name.replace("_", "-")


class FederationConfig(StrictModel):
    """The run config of one federated job (flat hyphenated keys, as Flower requires)."""

    model_config = {**StrictModel.model_config, "alias_generator": _hyphen, "populate_by_name": True}

    num_server_rounds: int = Field(3, ge=1, le=10_000)
    tasks: str = Field("right_heart,left_atrial", description="comma-separated task heads the federation trains")
    strategy: Literal["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"] = "fedavg"
    min_sites: int = Field(2, ge=1, description="fewer answers than this in a round stops the run")
    round_timeout: float = Field(600.0, gt=0, description="seconds to wait for sites in each round")
    local_epochs: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal weight (used with strategy fedprox)")
    server_lr: float = Field(0.01, gt=0, description="FedAdam/FedYogi server learning rate")
    server_beta1: float = Field(0.9, ge=0, lt=1, description="FedAdam/FedYogi first-moment decay; FedAvgM's momentum")
    server_beta2: float = Field(0.99, ge=0, lt=1)
    server_tau: float = Field(1e-3, gt=0)
    dp: bool = Field(True, description="ask sites to train with DP-SGD (a site may still refuse non-DP)")
    checkpoint: str = Field("compact-ptbxl-ludb", description="pretrained LS-EMVAE checkpoint: a shipped name "
                            "(`lsemvae pretrained list`), or a checkpoint folder or .pt (absolute path on the coordinator)")
    out_dir: str = Field("", description="absolute output directory (server state, metrics, report)")
    resume: bool = Field(False, description="continue from the server state in out-dir")
    seed: int = 0
    head_input: Literal["fused", "leads+fused", "concat"] = Field(
        "fused", description="what the federation's fresh task heads read (lsemvae.model.config.ModelConfig): "
        "fused, the 64-d fused mean, is the default; leads+fused (13x wider) is about even without DP and trails "
        "under DP (superclass 0.768 vs 0.798 at epsilon 1 on PTB-XL by site; see the README)")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the task heads' input")
    train_encoders: bool | Literal["auto"] = Field(
        "auto", description="false: sites fine-tune and send only the fusion gate and task heads (a federated probe), "
        "~58x fewer parameters for the DP noise to spread over; true: the encoders train too; auto: a probe under DP, "
        "everything without. On PTB-XL by site under DP the probe matched full fine-tuning (superclass AUROC 0.832 vs "
        "0.830 at epsilon 8) at a third of the compute; without DP full fine-tuning is ahead "
        "(benchmarks/results/privacy_utility.md)")
    update_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the model arrays on the wire, both directions (float16 halves the bytes; "
        "training and aggregation stay float32/float64, lsemvae.federation.codec)")
    epsilon_registry: str = Field("", description="JSON file on the coordinator keeping every site's highest reported "
                                  "cumulative epsilon across jobs, so a site whose epsilon went down is flagged (\"\": off)")
    sites_dir: str = Field("", description="directory of site TOMLs for simulated sites (absolute)")
    sim_sites: str = Field("", description="simulation: comma-separated site names, partition i -> site i")
    sim_state_dir: str = Field("", description="simulation: root of the simulated sites' local state")
    sim_epsilon: float = Field(0.0, ge=0, description="simulation: override every simulated site's epsilon (0 = keep)")

    @field_validator("tasks")
    @classmethod
    def _task_list(cls, v: str) -> str:
        if not [t for t in v.split(",") if t.strip()]:
            raise ValueError("name at least one task, e.g. \"right_heart\"")
        return v

    @property
    def encoders_train(self) -> bool:
        """Whether sites train (and send) their encoders, ``auto`` resolved against ``dp``."""
        return (not self.dp) if self.train_encoders == "auto" else bool(self.train_encoders)

    @property
    def task_names(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    @property
    def sim_site_names(self) -> list[str]:
        return [s.strip() for s in self.sim_sites.split(",") if s.strip()]

    def as_run_config(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


def federation_config(run_config: dict[str, Any], *, source: str = "run config") -> FederationConfig:
    """Parse Flower's ``context.run_config`` (or a TOML dict) into :class:`FederationConfig`."""
    return validate(FederationConfig, dict(run_config), source=source)


def load_federation_config(path: str | Path) -> FederationConfig:
    return load_toml(path, FederationConfig)
