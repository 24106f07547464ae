"""Pretraining loop: checkpoint/resume gives identical continued training; patient split; metrics logged."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from lsemvae.model.config import get_profile
from lsemvae.model.lsemvae import build_model
from lsemvae.train.augment import AugmentConfig
from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lsemvae.train.pretrain import PretrainConfig, epoch_lr, pretrain, reconstruction_r2


class Generated(Dataset):
    """Small generated 12-lead records with a beat target (some records miss the precordial leads)."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 12, 200, generator=g)
        self.beat = self.x[:, :, :40].clone()
        self.mask = torch.ones(n, 12, dtype=torch.bool)
        self.mask[::3, 6:] = False
        self.x[~self.mask] = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "lead_mask": self.mask[i], "beat": self.beat[i], "y": {}}


def _model():
    torch.manual_seed(0)
    return build_model(get_profile("compact", n_samples=200, beat_samples=40, latent_dim=8,
                                   encoder_channels=(8, 8, 8, 8), decoder_hidden=16, gate_hidden=8))


# Cosine: the learning rate changes between epochs, so identical resumption also shows the schedule resumes.
CFG = PretrainConfig(epochs=2, batch_size=8, seed=1, lr_schedule="cosine", augment=AugmentConfig(crop_samples=150, scale_jitter=0.1, noise_std=0.05))


@pytest.mark.e2e  # ~20 s on the shared 2-core machine (two short training runs)
def test_resume_continues_identically(tmp_path):
    train, val = Generated(16, 0), Generated(4, 1)
    full = _model()
    pretrain(full, train, val, CFG, tmp_path / "full", progress=False)

    part = _model()
    pretrain(part, train, val, CFG.model_copy(update={"epochs": 1}), tmp_path / "part", progress=False)
    torch.manual_seed(12345)  # whatever happened in between must not matter
    resumed = _model()
    pretrain(resumed, train, val, CFG, tmp_path / "part", progress=False, resume=True)

    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    rows_full = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_part = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_part] == [1, 2]
    assert rows_full[-1]["train_loss"] == rows_part[-1]["train_loss"]
    for key in ("train_recon", "train_kl", "train_align", "val_r2_12to12", "val_active_dims"):
        assert key in rows_full[-1]


def test_checkpoint_records_config_and_provenance(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "c.pt", model=model, epoch=3, provenance={"pipeline_version": "1.0", "data_cache_keys": {"x": "k"}})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["model_config"]["latent_dim"] == 8 and ckpt["provenance"]["pipeline_version"] == "1.0"
    again = model_from_checkpoint(ckpt)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_finetune_heads_load_non_strictly_but_body_strictly(tmp_path):
    from lsemvae.errors import ConfigError
    model = _model()
    save_checkpoint(tmp_path / "c.pt", model=model, epoch=1)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    with_head = model_from_checkpoint(ckpt, tasks={"t": {"kind": "binary", "n_outputs": 1}})
    assert "heads.t.net.1.weight" in with_head.state_dict()
    with pytest.raises(ConfigError, match="does not match"):
        model_from_checkpoint(ckpt, latent_dim=16)


def test_checkpoint_refuses_a_model_reading_other_amplitudes_than_it_was_trained_on(tmp_path):
    from lsemvae.errors import ConfigError
    model = _model()
    assert model.config.amplitude == "millimetres"
    save_checkpoint(tmp_path / "c.pt", model=model, epoch=1,
                    provenance={"preprocess_config": model.config.preprocess_config().model_dump(mode="json")})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    model_from_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="trained on millimetres signals but its model config reads standardised"):
        model_from_checkpoint(ckpt, amplitude="standardised")
    del ckpt["provenance"]["preprocess_config"]["amplitude"]  # a pipeline from before the field: standardised
    with pytest.raises(ConfigError, match="trained on standardised"):
        model_from_checkpoint(ckpt)


def test_checkpoint_pretrained_with_a_fused_head_fine_tunes_with_the_leads_plus_fused_head(tmp_path):
    """What the benchmark does with an older checkpoint: same encoders/fusion, the current profile's head."""
    model = build_model(get_profile("compact", n_samples=200, beat_samples=40, latent_dim=8, encoder_channels=(8, 8, 8, 8),
                                    decoder_hidden=16, gate_hidden=8, head_input="fused"))
    save_checkpoint(tmp_path / "c.pt", model=model, epoch=1)
    ft = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt"), tasks={"t": {"kind": "binary", "n_outputs": 1}},
                               head_input="leads+fused", head_dropout=0.5)
    assert ft.state_dict()["heads.t.net.1.weight"].shape == (1, 13 * 8)
    assert torch.equal(ft.state_dict()["encoders.II.fc_mu.weight"], model.state_dict()["encoders.II.fc_mu.weight"])


def test_cosine_schedule_starts_at_lr_and_decays_to_a_half_step_above_zero():
    cfg = PretrainConfig(epochs=4, lr=1.0, lr_schedule="cosine")
    lrs = [epoch_lr(cfg, t) for t in range(1, 5)]
    assert lrs == pytest.approx([1.0, (1 + np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(3 * np.pi / 4)) / 2])
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0
    assert [epoch_lr(cfg.model_copy(update={"lr_schedule": "constant"}), t) for t in (1, 4)] == [1.0, 1.0]


def test_r2_is_one_for_perfect_and_zero_for_mean():
    t = torch.randn(10, 12, 5)
    mask = torch.ones(10, 12, dtype=torch.bool)
    assert all(abs(v - 1) < 1e-6 for v in reconstruction_r2(t, t, mask).values())
    mean = t.mean(0, keepdim=True).expand_as(t)
    assert all(abs(v) < 1e-5 for v in reconstruction_r2(mean, t, mask).values())
