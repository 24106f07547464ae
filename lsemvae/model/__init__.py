"""LS-EMVAE: per-lead encoders, HiME fusion, per-lead decoders, task heads (see lsemvae.py).

Compact profile (default), superclass head on 12 per-lead means + the fused mean: 942,602 parameters;
a federated round carries the encoders (512,448) + fusion gate (4,165) + heads (4,165) = 520,778 float32
= 2.08 MB per direction.
"""

from lsemvae.model.config import PROFILES, ModelConfig, get_profile
from lsemvae.model.lsemvae import LSEMVAE, ModelOutput, build_model, parameter_count, round_bytes

__all__ = ["LSEMVAE", "ModelConfig", "ModelOutput", "PROFILES", "build_model", "get_profile", "parameter_count", "round_bytes"]
