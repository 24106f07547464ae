"""The model card of a pretrained checkpoint, rendered from its ``checkpoint.json``.

Sections follow the model cards clinical ML readers know (Mitchell et al. 2019, "Model Cards for Model
Reporting"): details, intended and out-of-scope use, training data with licences, input, training,
evaluation (each figure with the command that measured it), limitations, how to reproduce and verify.
What differs between checkpoints comes from the JSON; the text that holds for every LS-EMVAE checkpoint
is written here once, so a checkpoint pretrained elsewhere gets a complete card from ``lsemvae pretrained export``.
"""

from __future__ import annotations

from typing import Any

from lsemvae.leads import LEADS_12, LIMB_LEADS

#: Licence and attribution of the corpora a checkpoint can be pretrained on, by cohort name.
DATASETS: dict[str, dict[str, str]] = {
    "ptb-xl": {
        "title": "PTB-XL (PhysioNet)",
        "licence": "Creative Commons Attribution 4.0 International (CC BY 4.0)",
        "cite": "Wagner, P., Strodthoff, N., Bousseljot, R.-D., Kreiseler, D., Lunze, F.I., Samek, W., Schaeffter, T. "
                "(2020). PTB-XL, a large publicly available electrocardiography dataset. Scientific Data 7:154. "
                "https://doi.org/10.1038/s41597-020-0495-6 ; Wagner et al. (2022), PTB-XL (version 1.0.3), PhysioNet, "
                "https://doi.org/10.13026/kfzx-aw45 ; Goldberger, A. et al. (2000), PhysioBank, PhysioToolkit, and "
                "PhysioNet, Circulation 101(23):e215-e220.",
    },
    "ludb": {
        "title": "LUDB, Lobachevsky University Electrocardiography Database v1.0.1 (PhysioNet)",
        "licence": "Open Data Commons Attribution License v1.0 (ODC-By 1.0)",
        "cite": "Kalyakulina, A., Yusipov, I., Moskalenko, V., Nikolskiy, A., Kozinov, E., Zolotykh, N., Ivanchenko, M. "
                "(2021). Lobachevsky University Electrocardiography Database (version 1.0.1). PhysioNet. "
                "https://doi.org/10.13026/eegm-h675 ; Kalyakulina et al. (2020), LUDB: A New Open-Access Validation "
                "Tool for Electrocardiogram Delineation Algorithms, IEEE Access 8:186181.",
    },
}

#: Below this many pretraining ECGs the card warns that the corpus is small (the paper pretrained on ~800,000).
SMALL_CORPUS = 10_000


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _evaluation(entries: list[dict[str, Any]]) -> list[str]:
    if not entries:
        return ["Not measured yet for these weights (an export of other weights drops the figures measured on "
                "the earlier ones): `python -m benchmarks.pretrained_card --checkpoint FOLDER` measures them.\n"]
    lines = []
    for e in entries:
        lines.append(f"### {e['title']}\n")
        if e.get("protocol"):
            lines.append(e["protocol"] + "\n")
        if e.get("rows"):
            cols = list(e["rows"][0])
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "---|" * len(cols))
            lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in e["rows"]]
            lines.append("")
        if e.get("commands"):
            lines.append("Measured with:\n")
            lines += [f"    {c}" for c in e["commands"]]
            lines.append("")
    return lines


def render(meta: dict[str, Any]) -> str:
    """The card as Markdown."""
    out = [*_details(meta), *_USE, *_training_data(meta["provenance"]), *_input(meta["provenance"]),
           *_lead_sets(meta["model_config"]), *_pretraining(meta), "## Evaluation\n",
           *_evaluation(meta.get("evaluation") or []), *_limitations(meta), *_usage(meta)]
    return "\n".join(out)


def _details(meta: dict[str, Any]) -> list[str]:
    from lsemvae.pretrained import pretrained_on

    prov, mc, w = meta["provenance"], meta["model_config"], meta["weights"]
    code, env = prov.get("code") or {}, prov.get("environment") or {}
    return [f"# Model card: `{meta['name']}`\n",
            f"A pretrained LS-EMVAE ({mc.get('profile')} profile): one ECG encoder per lead, fused by {mc.get('fusion')} "
            f"into a {mc.get('latent_dim')}-dimensional latent, pretrained without labels to reconstruct every lead from "
            f"the leads present. Pretrained on: {pretrained_on(prov)}. It is a starting point for fine-tuning "
            "(`lsemvae finetune`) and federated fine-tuning (`simulation/run.py`, the Flower apps), not a classifier.\n",
            "## Model details\n",
            f"- Architecture: LS-EMVAE, profile `{mc.get('profile')}`, fusion `{mc.get('fusion')}`, latent "
            f"{mc.get('latent_dim')}, reconstruction target `{mc.get('recon_target')}`; "
            f"{w['parameters']:,} parameters in {w['tensors']} tensors ({', '.join(w['dtypes'])}), encoders, fusion and "
            "decoders; no task heads (fine-tuning adds them).",
            f"- Weights: `{w['file']}`, {w['bytes']:,} bytes ({_size(w['bytes'])}), safetensors (no executable content), "
            f"sha256 `{w['sha256']}`, checked on every load.",
            f"- Made by: `{prov.get('command', 'not recorded')}` at commit `{code.get('commit')}`"
            + (" (with uncommitted changes)" if code.get("uncommitted_changes") else "")
            + f"; torch {env.get('torch')}, {env.get('torch_threads')} CPU thread(s), {env.get('machine')}; exported "
            f"{meta.get('exported')}.",
            "- Licence of the weights: the repository's (MIT, see LICENSE); the training data's licences below "
            "require attribution of the datasets wherever the weights or models derived from them are shared.\n"]


#: Intended and out-of-scope use: the same for every LS-EMVAE checkpoint.
_USE = [
    "## Intended use\n",
    "- Research on ECG representation learning, and as the starting encoder for fine-tuning on labelled ECGs "
    "(central or federated, with or without differential privacy) on any subset of the 12 standard leads.",
    "- Right-heart / pulmonary-hypertension assessment *research*: the project's PH-related tasks are proxies "
    "(ECG findings such as right ventricular hypertrophy, right atrial overload, right axis deviation), to be "
    "replaced by a site's own confirmed labels (e.g. right-heart catheterisation).",
    "- Reconstructing the precordial leads' median beats from the limb leads, to inspect what the encoder "
    "captures (not as a substitute for recording them).\n",
    "## Out-of-scope use\n",
    "- Any clinical decision about a patient: this is not a medical device, has no regulatory clearance, and "
    "its outputs were never validated prospectively or against confirmed pulmonary hypertension.",
    "- Use without fine-tuning and local validation on the target population and recording devices.",
    "- Inputs other than those described below (other units, rates or lengths, uncalibrated amplitudes, "
    "single-lead wearables, paediatric ECGs) unless a site validates them.\n",
]


def _training_data(prov: dict[str, Any]) -> list[str]:
    """Sources with counts and licences, the folds never seen, the validation hold-out, the citations."""
    from lsemvae.pretrained import is_synthetic

    data = prov.get("data") or {}
    folds = prov.get("excluded_folds") or []
    out = ["## Training data\n"]
    if is_synthetic(prov):
        out.append("**Synthetic ECGs only**: generated signals, never a real recording. Use for testing the "
                   "machinery on synthetic sites, never as the start of a model for real ECGs.\n")
    out += ["| source | records | patients | licence |", "|---|---|---|---|"]
    for name, d in (data.items() if isinstance(data, dict) else []):
        info = DATASETS.get(name, {})
        out.append(f"| {info.get('title', name)} | {d.get('records')} | {d.get('patients')} | "
                   f"{info.get('licence', 'not recorded here: check the source and add it to lsemvae.pretrained.card.DATASETS')} |")
    out.append("")
    if folds and "ptb-xl" in data:
        out.append(f"PTB-XL strat_fold {', '.join(map(str, folds))} (the test fold of the evaluation below) was never "
                   "seen.")
    out.append(f"{round(prov.get('val_fraction', 0.1) * 100)}% of the patients of each source were held out for "
               "validation (the epoch with the lowest validation loss at the final KL weight was kept). Counts are "
               "after quality control (records that failed it were skipped; `lsemvae data inspect` lists them). "
               "Preprocessed cohorts (cache keys): "
               + ", ".join(f"`{k}` {v[:12]}…" for k, v in (prov.get("data_cache_keys") or {}).items()) + ".\n")
    out += [f"- {DATASETS[name]['title']}: {DATASETS[name]['cite']}" for name in data if name in DATASETS]
    return out


def _input(prov: dict[str, Any]) -> list[str]:
    pre = prov.get("preprocess_config") or {}
    return ["", "## Input\n",
            f"- Sampling rate {pre.get('fs')} Hz, {pre.get('seconds')} s windows ({round(pre.get('fs', 0) * pre.get('seconds', 0))} "
            "samples; longer records centre-cropped, any source rate resampled by preprocessing).",
            f"- Amplitude: {pre.get('amplitude')}"
            + (" (millimetres of standard ECG paper, 10 mm = 1 mV, each lead's mean removed: voltages and the leads' "
               "relative sizes are kept)" if pre.get("amplitude") == "millimetres" else " (each lead z-scored per record)")
            + f"; band-pass {pre.get('highpass_hz')}-{pre.get('lowpass_hz')} Hz (Butterworth order {pre.get('filter_order')}), "
            f"mains notch {pre.get('powerline_hz')} Hz; preprocessing pipeline version {prov.get('pipeline_version')}.",
            "- Preprocessing is part of the model: `lsemvae finetune`, `evaluate`, `predict` and the federated sites "
            "apply the recorded configuration (checkpoint.json, provenance.preprocess_config).\n"]


def _lead_sets(mc: dict[str, Any]) -> list[str]:
    return ["## Lead sets\n",
            f"Pretrained on 12-lead ECGs ({', '.join(LEADS_12)}) with expert dropout (each lead kept with probability "
            f"{(mc.get('objective') or {}).get('expert_keep_prob', '–')}), so it encodes any subset: the 6 limb leads "
            f"({', '.join(LIMB_LEADS)}), 12 leads, or named leads (`--leads I,II,V1`). Missing leads are masked, not "
            "imputed.\n"]


def _pretraining(meta: dict[str, Any]) -> list[str]:
    pc = meta["provenance"].get("pretrain_config") or {}
    tr = meta.get("training") or {}
    best = tr.get("best_metrics") or {}
    return ["## Pretraining\n",
            f"{pc.get('epochs')} epochs, batch {pc.get('batch_size')}, AdamW lr {pc.get('lr')} ({pc.get('lr_schedule')}), "
            f"weight decay {pc.get('weight_decay')}, gradient clip {pc.get('grad_clip')}, seed {pc.get('seed')}. Best epoch "
            f"{tr.get('best_epoch')}: validation loss {_fmt(tr.get('best_val_loss'), 1)}, reconstruction R² (12 leads -> 12) "
            f"{_fmt(best.get('val_r2_mean'))}, precordial leads from the limb leads {_fmt(best.get('val_r2_precordial_from_limb'))}, "
            f"active latent dimensions {best.get('val_active_dims')}/{best.get('latent_dim')}.\n"]


def _limitations(meta: dict[str, Any]) -> list[str]:
    data = meta["provenance"].get("data") or {}
    n_records = sum(d.get("records", 0) for d in data.values()) if isinstance(data, dict) else 0
    out = ["## Limitations\n"]
    if n_records and n_records < SMALL_CORPUS:
        out.append(f"- Small pretraining corpus: {n_records:,} ECGs (the LS-EMVAE paper pretrained on about 800,000). "
                   "A checkpoint pretrained on a large corpus (e.g. MIMIC-IV-ECG) may transfer better (not measured "
                   "here); export it with `lsemvae pretrained export` and it loads, verifies and gets its card the same way.")
    return out + ["- The pulmonary-hypertension tasks of this project are ECG-finding proxies; no figure here is a PH "
                  "diagnostic accuracy.",
                  "- Populations: the sources' recording sites, devices and years (see their documentation); performance "
                  "on other populations, devices and filters is unknown until measured there.",
                  "- Not a medical device; not for clinical use.",
                  *[f"- {n}" for n in meta.get("notes") or []], ""]


def _usage(meta: dict[str, Any]) -> list[str]:
    name = meta["name"]
    return ["## How to use\n",
            f"    lsemvae finetune --checkpoint {name} --ptbxl ROOT --leads 6L --out runs/ft      # or --cache DIR",
            f"    python simulation/run.py --data real --checkpoint {name}",
            f"    checkpoint = \"{name}\"        # a federation's run config (configs/federation.toml)",
            "",
            "A folder that is not shipped loads by its path instead of its name.\n",
            "## Reproduce and verify\n",
            "    lsemvae pretrained verify " + name + "        # recomputes the sha256 above",
            "    " + meta.get("reproduce", "") + "        # reruns the pretraining and compares",
            ""]
