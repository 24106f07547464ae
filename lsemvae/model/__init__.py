"""LS-EMVAE: per-lead encoders, HiME fusion, per-lead decoders, task heads (see lsemvae.py).

Compact profile (default), superclass head on 12 per-lead means + the fused mean: 947,210 parameters;
a federated round carries the encoders (517,056) + fusion gate (4,165) + heads (4,165) = 525,386 float32
= 2.10 MB per direction.
"""

from lsemvae.model.config import PROFILES, ModelConfig, get_profile
from lsemvae.model.lsemvae import LSEMVAE, ModelOutput, build_model, parameter_count, round_bytes

__all__ = ["LSEMVAE", "ModelConfig", "ModelOutput", "PROFILES", "build_model", "get_profile", "parameter_count", "round_bytes"]
