"""Fixtures shared by the training tests."""

import pytest
import torch

from lsemvae.leads import LIMB_LEADS
from lsemvae.model.config import TaskHeadSpec, get_profile
from lsemvae.model.lsemvae import build_model
from lsemvae.train.checkpoint import save_checkpoint

CROPS = {"crop_samples": 500, "n_crops": 3}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors on a shared 2-core machine: one thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    """A compact LS-EMVAE with a superclass head saved as `lsemvae finetune` saves it (6 leads, crop averaging).

    Its heads start at zero (every probability 0.5): the weights are perturbed so scores differ by record.
    """
    torch.manual_seed(0)
    cfg = get_profile("compact", tasks={"superclass": TaskHeadSpec(kind="multilabel", n_outputs=5)})
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, epoch=1, state={"predict_kwargs": CROPS},
                    provenance={"leads": list(LIMB_LEADS),
                                "preprocess_config": cfg.preprocess_config().model_dump(mode="json")})
    return path
