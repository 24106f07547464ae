"""Differential privacy for site training: DP-SGD helpers (:mod:`.dp`) and the per-site ledger (:mod:`.ledger`)."""

from lsemvae.privacy.dp import (
    BudgetExhausted,
    DPSession,
    epsilon_of,
    is_empty_batch,
    make_private,
    plain_state_dict,
    plan_noise_multiplier,
    unwrap,
    warn_no_privacy,
)
from lsemvae.privacy.ledger import (
    LedgerCorrupted,
    LedgerError,
    LedgerMismatch,
    LedgerMissing,
    LedgerWriteError,
    PrivacyLedger,
    default_anchor_dir,
)

__all__ = [
    "BudgetExhausted",
    "DPSession",
    "LedgerCorrupted",
    "LedgerError",
    "LedgerMismatch",
    "LedgerMissing",
    "LedgerWriteError",
    "PrivacyLedger",
    "default_anchor_dir",
    "epsilon_of",
    "is_empty_batch",
    "make_private",
    "plain_state_dict",
    "plan_noise_multiplier",
    "unwrap",
    "warn_no_privacy",
]
