"""Fine-tuning: any forward_logits module trains through one loop; probe freezes encoders; empty
batches are skipped; NaN labels ignored; a tiny real PTB-XL pretrain + finetune learns."""

import numpy as np
import pytest
import torch
from torch import nn

from lsemvae.model.config import get_profile
from lsemvae.model.losses import positive_weights, task_loss
from lsemvae.model.lsemvae import build_model
from lsemvae.train.augment import AugmentConfig
from lsemvae.train.finetune import FinetuneConfig, finetune, make_optimizer, predict, train_one_epoch

TASKS = {"t": "multilabel"}


class Separable(torch.utils.data.Dataset):
    """Generated records whose label is the sign of lead II's mean: learnable by anything."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 12, 120, generator=g)
        self.y = (self.x[:, 1].mean(-1, keepdim=True) > 0).float().repeat(1, 2)
        self.x[:, 1] += 2 * (self.y[:, :1] - 0.5)
        self.y[::5, 1] = float("nan")  # a label not applicable to some records
        self.mask = torch.zeros(n, 12, dtype=torch.bool)
        self.mask[:, :6] = True
        self.x[:, 6:] = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "lead_mask": self.mask[i], "y": {"t": self.y[i]}}


class TinyCNN(nn.Module):
    """Any classifier with forward_logits works (here a non-LS-EMVAE module)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(12, 4, 5), nn.GELU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward_logits(self, x, lead_mask):
        return {"t": self.net(x * lead_mask[..., None])}


def _small_lsemvae():
    torch.manual_seed(0)
    return build_model(get_profile("compact", n_samples=120, latent_dim=8, encoder_channels=(8, 8, 8, 8),
                                   decoder_hidden=8, gate_hidden=8, tasks={"t": {"kind": "multilabel", "n_outputs": 2}}))


CFG = FinetuneConfig(epochs=6, batch_size=16, lr=1e-2, patience=6, augment=AugmentConfig(crop_samples=100), eval_crops=2)


def test_any_forward_logits_module_trains_through_the_same_loop():
    model = TinyCNN()
    result = finetune(model, Separable(64, 0), Separable(32, 1), TASKS, CFG, progress=False)
    assert result["best_val_auroc"] > 0.8
    y, p = predict(model, Separable(32, 2), TASKS, **result["predict_kwargs"])["t"]
    assert y.shape == p.shape == (32, 2) and np.isnan(y[::5, 1]).all()


def test_probe_freezes_encoders_and_trains_gate_and_heads():
    model = _small_lsemvae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, Separable(32, 0), Separable(16, 1), TASKS, CFG.model_copy(update={"mode": "probe", "epochs": 2}),
             progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoders.", "decoders.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("heads."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("fusion."))


def test_full_mode_trains_encoders_of_present_leads_only():
    model = _small_lsemvae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, Separable(32, 0), Separable(16, 1), TASKS, CFG.model_copy(update={"epochs": 1}), progress=False)
    after = model.state_dict()
    changed = {k.split(".")[1] for k in before if k.startswith("encoders.") and not torch.equal(before[k], after[k])}
    assert changed == {"I", "II", "III", "aVR", "aVL", "aVF"}


def test_probe_first_fits_the_heads_on_frozen_encoders_then_trains_everything():
    model = _small_lsemvae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, Separable(32, 0), Separable(16, 1), TASKS,
                      CFG.model_copy(update={"epochs": 2, "probe_first": True}), progress=False)
    assert [r["mode"] for r in result["history"]] == ["probe", "probe", "full", "full"]
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoders."))
    assert result["predict_kwargs"] == {"crop_samples": 100, "n_crops": 2}  # the full phase's, not the probe's


def test_compact_recipe_regularises_the_leads_plus_fused_head():
    from lsemvae.train.finetune import FINETUNE_PROFILES
    assert FINETUNE_PROFILES["compact"].weight_decay == 0.05 and FinetuneConfig().weight_decay == 1e-4
    model = _small_lsemvae()
    assert model.config.head_input == "leads+fused" and model.heads["t"].net[0].p == 0.5
    opt = make_optimizer(model, FINETUNE_PROFILES["compact"])
    assert all(g["weight_decay"] == 0.05 for g in opt.param_groups)


def test_early_stopping_waits_for_min_steps():
    """64 records in batches of 16 take 4 steps an epoch: with nothing learnt (lr ~ 0) patience 1 stops after
    epoch 2, unless min_steps asks for 10 steps first (epoch 3)."""
    cfg = CFG.model_copy(update={"epochs": 6, "patience": 1, "lr": 1e-12})
    for min_steps, epochs_run in ((0, 2), (10, 3)):
        result = finetune(TinyCNN(), Separable(64, 0), Separable(32, 1), TASKS,
                          cfg.model_copy(update={"min_steps": min_steps}), progress=False)
        assert len(result["history"]) == epochs_run and result["best_epoch"] == 1


def test_train_one_epoch_skips_empty_batches():
    model = TinyCNN()
    ds = Separable(8, 0)
    empty = {"x": torch.zeros(0, 12, 120), "lead_mask": torch.zeros(0, 12, dtype=torch.bool), "y": {"t": torch.zeros(0, 2)}}
    full = {"x": ds.x[:8], "lead_mask": ds.mask[:8], "y": {"t": ds.y[:8]}}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(model, [empty, full, empty], opt, TASKS, class_weights={"t": torch.ones(2)})
    assert out["n"] == 8 and np.isfinite(out["loss"])


def test_task_loss_ignores_nan_and_weights_positives():
    logits = torch.zeros(4, 1)
    y = torch.tensor([[1.0], [0.0], [float("nan")], [0.0]])
    assert torch.isclose(task_loss(logits, y, "binary"), torch.tensor(np.log(2), dtype=torch.float32))
    w = positive_weights(y.numpy())
    assert torch.isclose(w, torch.tensor([2.0])).all()
    weighted = task_loss(logits, y, "binary", pos_weight=w)
    assert weighted > task_loss(logits, y, "binary")
    onehot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.isclose(task_loss(torch.zeros(2, 2), onehot, "multiclass"), torch.tensor(np.log(2), dtype=torch.float32))


@pytest.mark.e2e
def test_tiny_real_pretraining_lowers_the_reconstruction_loss(ptbxl_root, tmp_path):
    """120 real PTB-XL records: 2 pretraining epochs lower the reconstruction loss."""
    from lsemvae.data.cache import CohortDataset, build_cohort, patient_split
    from lsemvae.data.sources import ptbxl_index
    from lsemvae.train.pretrain import PretrainConfig, pretrain

    refs = ptbxl_index(ptbxl_root, rate=100)[:120]
    cohort = build_cohort(refs, [], get_profile("compact").preprocess_config(), tmp_path / "cache", name="tiny",
                          progress=False)
    tr, va, _ = patient_split(cohort, 0.3, seed=0)
    torch.manual_seed(0)
    model = build_model(get_profile("compact", latent_dim=16, encoder_channels=(8, 16, 16, 16), decoder_hidden=32))
    pcfg = PretrainConfig(epochs=2, batch_size=16, lr=3e-3, augment=AugmentConfig(crop_samples=400))
    pretrain(model, CohortDataset(cohort, tr, tasks=[]), CohortDataset(cohort, va, tasks=[]), pcfg, tmp_path / "pre",
             progress=False)
    rows = [__import__("json").loads(l) for l in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["train_recon"] < rows[0]["train_recon"]


@pytest.mark.e2e
def test_finetuning_beats_chance_on_patients_that_neither_trained_nor_chose_the_model(ptbxl_root, tmp_path):
    """The shipped encoder probed on 300 records of folds 1-8 (the epoch chosen on fold 9) scores fold 10, which
    neither its pretraining nor its fine-tuning saw, above 99% of label permutations."""
    from lsemvae.data.cache import CohortDataset, build_cohort, ptbxl_folds
    from lsemvae.data.sources import ptbxl_index
    from lsemvae.data.tasks import get_task
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_config
    from lsemvae.train.finetune import macro_auroc, predict

    ckpt = load_checkpoint("compact-ptbxl-ludb")
    task = get_task("superclass")
    cohort = build_cohort(ptbxl_index(ptbxl_root, rate=100), ["superclass"], preprocess_config(ckpt), tmp_path / "cache",
                          name="ptb-xl", progress=False)
    tr, va, te = ptbxl_folds(cohort)
    clf = model_from_checkpoint(ckpt, tasks={"superclass": {"kind": task.kind, "n_outputs": task.n_outputs}})
    cfg = FinetuneConfig(mode="probe", epochs=5, batch_size=32, lr=3e-3, patience=5, eval_crops=2)
    torch.manual_seed(0)
    finetune(clf, CohortDataset(cohort, tr[:300], leads="6L", tasks=["superclass"]),
             CohortDataset(cohort, va, leads="6L", tasks=["superclass"]), {"superclass": task}, cfg, progress=False)
    y, p = predict(clf, CohortDataset(cohort, te, leads="6L", tasks=["superclass"]), {"superclass": task},
                   crop_samples=cfg.augment.crop_samples, n_crops=2)["superclass"]
    observed = macro_auroc({"superclass": (y, p)})
    rng = np.random.default_rng(0)
    null = [macro_auroc({"superclass": (y[rng.permutation(len(y))], p)}) for _ in range(200)]
    assert observed > np.quantile(null, 0.99), (observed, np.quantile(null, 0.99))
