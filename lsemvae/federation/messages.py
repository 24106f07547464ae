"""The messages of a federated round, typed: what the server instructs and what a site replies.

* Server -> site: an :class:`Instruction` (train and evaluate alike) and the model arrays; a
  ``query`` carries nothing and asks for the site's :class:`SiteInfo`.
* Site -> server: :class:`TrainReply` (trained arrays + aggregates), :class:`EvaluateReply`
  (aggregates only), :class:`SiteInfo`.

Each message travels as one Flower ``RecordDict``: the model as JSON in ``BODY`` and the arrays packed
in one buffer in ``ARRAYS`` (:func:`lsemvae.federation.codec.pack`). :func:`to_content` and
:func:`from_content` are the only conversions, both ways, for every message type.

**The server is untrusted input at the site.** :func:`read_instruction` validates every field
against hard bounds here and the site's own :class:`~lsemvae.site.SiteLimits`; a digest is 64 hex
characters, never a path. Nothing in an instruction reaches the site's DP randomness
(:mod:`lsemvae.privacy.randomness`): ``seed`` seeds non-DP rounds only.

**What a site may send is declared here, field by field**: every reply is a fixed set of scalars,
names from the site's config and histograms whose size depends on the site's settings, never on
its number of records (tests/federation check each outgoing message against these models).
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from lsemvae.config import StrictModel, describe_validation_error
from lsemvae.federation import keys as K
from lsemvae.federation.codec import ArraySpec, CodecError, UpdateDtype, pack, unpack
from lsemvae.leads import LEAD_GROUPS

M = TypeVar("M", bound=BaseModel)
LeadGroup = Literal[tuple(LEAD_GROUPS)]     # the HiME groups' names: a gate is never keyed by anything else

MAX_BODY_BYTES = 1_000_000          # the JSON of any message (model config included)
MAX_ROUNDS = 100_000
DIGEST = r"^[0-9a-f]{64}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$"


class MessageError(CodecError):
    """A message that does not follow this contract (malformed, out of bounds, oversized)."""


# ---------------------------------------------------------------------------------- server -> site

class Instruction(StrictModel):
    """What the server asks of a site in one round (train or evaluate); the arrays travel beside it."""

    job_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="the job (kept across a coordinator's resume): sites "
                        "plan their noise once per job")
    server_round: int = Field(ge=1, le=MAX_ROUNDS)
    num_server_rounds: int = Field(ge=1, le=MAX_ROUNDS)
    local_epochs: int = Field(ge=1, le=10_000)
    lr: float = Field(gt=0, le=10, allow_inf_nan=False)
    batch_size: int = Field(ge=1, le=1_000_000)
    proximal_mu: float = Field(ge=0, le=1e4, allow_inf_nan=False)
    dp: bool
    train_encoders: bool
    evaluate: bool = Field(description="train: evaluate the received model first, in the same reply")
    update_dtype: UpdateDtype
    seed: int = Field(ge=0, lt=2**63, description="seeds non-DP rounds only (DP rounds use the site's own randomness)")
    model_config_json: str = Field(max_length=MAX_BODY_BYTES, description="JSON of lsemvae.model.config.ModelConfig")
    preprocess_config_json: str = Field(max_length=MAX_BODY_BYTES, description="JSON of PreprocessConfig")
    base_digest: str | None = Field(None, pattern=DIGEST, description="sha256 of the frozen encoders (probe)")
    layout: list[ArraySpec] = Field(default_factory=list, max_length=100_000)

    @model_validator(mode="after")
    def _round_in_run(self) -> "Instruction":
        if self.server_round > self.num_server_rounds:
            raise ValueError(f"server_round {self.server_round} is beyond num_server_rounds {self.num_server_rounds}")
        return self


# ---------------------------------------------------------------------------------- site -> server

class TaskInfo(StrictModel):
    """A head a site trains: its kind and class names (what the head means), never its label counts."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    kind: Literal["binary", "multilabel", "multiclass"]
    classes: list[str] = Field(min_length=1, max_length=100)


class SiteInfo(StrictModel):
    """Who a site is: its name, leads, task heads, whether it trains under DP and its lifetime budget. No data."""

    name: str = Field(pattern=NAME)
    leads: list[str] = Field(max_length=12)
    tasks: list[TaskInfo] = Field(max_length=50)
    dp: bool
    epsilon_budget: float = Field(ge=0, allow_inf_nan=False, description="the site's epsilon for its dataset's life")


class ClassCounts(StrictModel):
    """Records of one label (positive or negative) of one class, in cells on [0, 1].

    ``edges`` are the cells' boundaries (ascending, from 0 to 1), ``counts`` their record counts and
    ``means`` the mean score of each cell's records; the site merges adjacent bins so that no cell
    holds fewer than its ``min_cell`` records.
    """

    edges: list[float] = Field(min_length=2, max_length=101)
    counts: list[int] = Field(min_length=1, max_length=100)
    means: list[float] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _consistent(self) -> "ClassCounts":
        e = self.edges
        if not len(self.counts) == len(self.means) == len(e) - 1 or e[0] != 0.0 or e[-1] != 1.0 \
                or any(b <= a for a, b in zip(e, e[1:])):
            raise ValueError("edges must rise from 0 to 1 with one more entry than counts and means")
        if any(c < 0 for c in self.counts):
            raise ValueError("counts must be >= 0")
        if any(not lo <= m <= hi for lo, hi, m in zip(e, e[1:], self.means)):
            raise ValueError("each mean must lie inside its cell")
        return self


class TaskHistogram(StrictModel):
    """A task's evaluation scores as k-anonymous counts: per class, positives and negatives (None: withheld)."""

    classes: list[str] = Field(min_length=1, max_length=100)
    pos: list[ClassCounts | None]
    neg: list[ClassCounts | None]

    @model_validator(mode="after")
    def _one_per_class(self) -> "TaskHistogram":
        if not len(self.pos) == len(self.neg) == len(self.classes):
            raise ValueError("pos and neg need one entry per class")
        return self


class Evaluation(StrictModel):
    """A site's evaluation of one global model: aggregates over at least its ``min_records`` records."""

    num_examples: int = Field(ge=0)
    eval_loss: float
    gates: dict[LeadGroup, float] = Field(description="mean HiME gate weight per lead group (the groups' names only)")
    histograms: dict[str, TaskHistogram] = Field(max_length=50)


class TrainReply(StrictModel):
    """A site's answer to a train instruction. Scalars only beside the DP-trained arrays.

    With ``Instruction.evaluate`` the site first evaluates the model it received (the previous round's
    global model): ``evaluation``, or ``evaluation_refused`` (the error code of its policy's refusal).
    """

    site: SiteInfo
    layout: list[ArraySpec] = Field(max_length=100_000)
    group_weights: dict[str, float] = Field(max_length=100, description="examples that trained each group sent")
    num_examples: int = Field(ge=0)
    train_loss: float | None = Field(None, description="mean training loss; None under DP (not a DP output)")
    epsilon: float = Field(ge=0, allow_inf_nan=False, description="the site's cumulative epsilon at its delta")
    delta: float = Field(ge=0, lt=1)
    noise_multiplier: float = Field(ge=0, allow_inf_nan=False)
    train_seconds: float = Field(ge=0)
    site_seconds: float = Field(ge=0)
    evaluation: Evaluation | None = None
    evaluation_refused: int | None = Field(None, ge=4000, le=4999)


class EvaluateReply(StrictModel):
    """A site's answer to an evaluate instruction."""

    site: SiteInfo
    epsilon: float = Field(ge=0, allow_inf_nan=False)
    evaluation: Evaluation
    site_seconds: float = Field(ge=0)


Reply = TrainReply | EvaluateReply | SiteInfo


# ---------------------------------------------------------------------------------- conversions

def to_content(body: BaseModel, arrays: dict[str, np.ndarray] | None = None, *, dtype: str = "float32"):
    """A Flower RecordDict carrying ``body`` (JSON) and ``arrays`` packed in one buffer.

    The body's ``layout`` is set from the arrays; ``body`` is returned updated with it too.
    """
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    records: dict = {}
    if arrays is not None:
        buffer, layout = pack(arrays, dtype)
        body = body.model_copy(update={"layout": layout})
        records[K.ARRAYS] = ArrayRecord({K.PACKED: Array(buffer)})
    records[K.BODY] = ConfigRecord({K.JSON: body.model_dump_json()})
    return RecordDict(records)


def from_content(content, model: type[M], *, dtype: str | None = None, sender: str) -> tuple[M, dict[str, np.ndarray]]:
    """The typed body and the unpacked arrays ({} when none) of a RecordDict; :class:`MessageError` if malformed."""
    try:
        text = content.config_records[K.BODY][K.JSON]
    except KeyError:
        raise MessageError(f"{sender} sent a message without its '{K.BODY}' record") from None
    if not isinstance(text, str) or len(text) > MAX_BODY_BYTES:
        raise MessageError(f"{sender} sent a '{K.BODY}' that is not JSON text of at most {MAX_BODY_BYTES} bytes")
    try:
        body = model.model_validate_json(text)
    except ValidationError as err:
        raise MessageError(describe_validation_error(err, source=f"{sender}'s {model.__name__}")) from None
    arrays: dict[str, np.ndarray] = {}
    if K.ARRAYS in content.array_records:
        record = content.array_records[K.ARRAYS]
        if list(record.keys()) != [K.PACKED]:
            raise MessageError(f"{sender} sent arrays outside the one packed buffer: {list(record.keys())[:5]}")
        arrays = unpack(record[K.PACKED].numpy(), list(getattr(body, "layout", [])),
                        dtype or getattr(body, "update_dtype", "float32"), sender=sender)
    elif getattr(body, "layout", None):
        raise MessageError(f"{sender} described arrays it did not send")
    return body, arrays


def body_json(content) -> dict:
    """The body of a RecordDict as plain JSON (for the site's outgoing-message log)."""
    return json.loads(content.config_records[K.BODY][K.JSON])


def packed_bytes(content) -> int:
    """Bytes of model arrays a RecordDict carries (its packed buffer)."""
    if K.ARRAYS not in content.array_records:
        return 0
    return int(content.array_records[K.ARRAYS][K.PACKED].numpy().nbytes)


REPLY_MODELS: dict[str, type[BaseModel]] = {K.TRAIN: TrainReply, K.EVALUATE: EvaluateReply, K.QUERY: SiteInfo}
