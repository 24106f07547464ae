"""``lsemvae privacy``: read a site's privacy ledger; the explicit, logged operator commands that change it."""

from __future__ import annotations

import json
from pathlib import Path

from lsemvae.argtypes import open_fraction, positive_float
from lsemvae.privacy.ledger import ANCHOR_DIR_ENV, PrivacyLedger


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "privacy",
        help="show a site's privacy ledger; reset it or change its budget (operator commands)",
        description="A site's privacy ledger holds the Opacus accountant history of everything its data has been "
        "used for; epsilon is recomputed from it. Training refuses to start when the ledger is missing, corrupted "
        "or over budget: these commands are how an operator looks and, explicitly, acts.",
    )
    sub = parser.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    anchor_help = f"directory of ledger anchors (default ${ANCHOR_DIR_ENV} or ~/.lsemvae/ledger-anchors)"

    show = sub.add_parser("show", help="a site's privacy statement: budget, spent, left, and every round, job and "
                          "budget change, like a bank statement",
                          description="Give --site-config (reads the ledger and anchors the site uses), or --ledger "
                          "(with --site and --anchor-dir to check it against its anchor).")
    where = show.add_mutually_exclusive_group(required=True)
    where.add_argument("--site-config", type=Path, help="the site's TOML (configs/sites/NAME.toml)")
    where.add_argument("--ledger", type=Path, help="the site's ledger JSON file")
    show.add_argument("--site", help="expected site name (also checks the ledger against its anchor)")
    show.add_argument("--anchor-dir", type=Path, help=anchor_help)
    show.add_argument("--json", action="store_true", help="print the full summary as JSON")
    show.set_defaults(func=_show)

    reset = sub.add_parser(
        "reset",
        help="start a new, empty ledger for a site (spending back to 0): explicit and logged",
        description="Replace a site's ledger by an empty one. Use only when the data custodian accepts it, e.g. "
        "a new dataset, or a lost ledger whose spending is known. The old file is kept beside the new one and the "
        "reset (reason, user, previous epsilon) is the first event of the new ledger.",
    )
    reset.add_argument("--ledger", type=Path, required=True, help="the site's ledger JSON file")
    reset.add_argument("--site", required=True, help="site name, as in configs/sites/NAME.toml")
    reset.add_argument("--confirm", required=True, metavar="REASON", help="why the ledger is reset (kept in the ledger)")
    reset.add_argument("--anchor-dir", type=Path, help=anchor_help)
    reset.add_argument("--delta", type=open_fraction, help="delta (default: from the old ledger or its anchor)")
    reset.add_argument("--max-epsilon", type=positive_float, help="budget (default: from the old ledger or its anchor)")
    reset.add_argument("--accountant", choices=["rdp", "prv"], help="accountant (default: as before, else rdp)")
    reset.set_defaults(func=_reset)

    anchor = sub.add_parser(
        "re-anchor",
        help="write a new anchor for a ledger whose anchor was lost: explicit and logged",
        description="A ledger that has spent budget is refused without its anchor, because it could be an older "
        "copy. When the data custodian has checked that it is the newest ledger (e.g. the anchor directory was lost "
        "or moved), this writes a new anchor from it and logs the reason in the ledger.",
    )
    anchor.add_argument("--ledger", type=Path, required=True, help="the site's ledger JSON file")
    anchor.add_argument("--site", required=True, help="site name")
    anchor.add_argument("--anchor-dir", type=Path, required=True, help="the site config's anchor_dir")
    anchor.add_argument("--confirm", required=True, metavar="REASON", help="why (kept in the ledger)")
    anchor.set_defaults(func=_re_anchor)

    budget = sub.add_parser("set-budget", help="change a site's epsilon budget: explicit and logged")
    budget.add_argument("--ledger", type=Path, required=True, help="the site's ledger JSON file")
    budget.add_argument("--site", required=True, help="site name")
    budget.add_argument("--max-epsilon", type=positive_float, required=True, help="new budget")
    budget.add_argument("--confirm", required=True, metavar="REASON", help="why (kept in the ledger)")
    budget.add_argument("--anchor-dir", type=Path, help=anchor_help)
    budget.set_defaults(func=_set_budget)


def _show(args) -> int:
    job_share = None
    if args.site_config:
        from lsemvae.site import load_site_config

        cfg = load_site_config(args.site_config)
        args.ledger, args.site, args.anchor_dir = cfg.ledger_path, cfg.name, cfg.anchor_dir
        job_share = cfg.privacy.job_epsilon
    ledger = PrivacyLedger.open(args.ledger, site=args.site, anchor_dir=args.anchor_dir)
    summary = ledger.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print("\n".join(statement(summary, job_share=job_share)))
    return 0


def statement(summary: dict, *, job_share: float | None = None) -> list[str]:
    """A ledger as a bank statement: the budget, what was spent and when, what is left."""
    share = f"; at most {job_share:g} per job" if job_share is not None else ""
    lines = [f"Privacy statement of site '{summary['site']}' ({summary['ledger']})",
             f"  budget   epsilon {summary['max_epsilon']:g} over the dataset's life, at delta {summary['delta']:g} "
             f"({summary['accountant']} accountant){share}",
             f"  spent    epsilon {summary['epsilon']:.4f} in {summary['rounds']} rounds ({summary['total_steps']} DP-SGD "
             f"steps); resets: {summary['resets']}",
             f"  left     epsilon {summary['remaining']:.4f}", "",
             f"  {'date (UTC)':19s}  {'event':11s}  {'job':16s}  {'round':>5s}  {'steps':>5s}  {'noise':>6s}  "
             f"{'spent':>8s}  {'epsilon':>8s}"]
    epsilon = 0.0
    for e in summary["events"]:
        when = e["time"].replace("T", " ")[:19]
        if e["kind"] == "round":
            sigma = max((s for s, _, _ in e.get("entries", [])), default=float("nan"))
            lines.append(f"  {when:19s}  {'round':11s}  {str(e['run_id'])[:16]:16s}  {e['round']:>5}  {e['steps']:>5}  "
                         f"{sigma:>6.3f}  {e['epsilon'] - epsilon:>+8.4f}  {e['epsilon']:>8.4f}")
            epsilon = e["epsilon"]
        elif e["kind"] == "budget":
            lines.append(f"  {when:19s}  {'budget':11s}  budget {e['from']:g} -> {e['to']:g}: {e['reason']} ({e['user']})")
        elif e["kind"] == "reset":
            epsilon = 0.0
            lines.append(f"  {when:19s}  {'RESET':11s}  by {e['user']}: {e['reason']} (previous epsilon "
                         f"{e['previous'].get('epsilon')})")
        else:
            lines.append(f"  {when:19s}  {e['kind']:11s}  " + " ".join(f"{k}={v}" for k, v in e.items()
                                                                          if k not in ("kind", "time")))
    return lines


def _reset(args) -> int:
    ledger = PrivacyLedger.reset(
        args.ledger, site=args.site, reason=args.confirm, anchor_dir=args.anchor_dir,
        delta=args.delta, max_epsilon=args.max_epsilon, accountant=args.accountant,
    )
    previous = ledger.events[-1]["previous"]
    print(f"privacy ledger of site '{ledger.site}' reset: {ledger.path} (epsilon 0 of {ledger.max_epsilon:g}, "
          f"delta={ledger.delta:g}); previous epsilon {previous.get('epsilon')}; reason logged: {args.confirm!r}")
    if "kept_as" in previous:
        print(f"previous ledger kept as {previous['kept_as']}")
    return 0


def _set_budget(args) -> int:
    ledger = PrivacyLedger.open(args.ledger, site=args.site, anchor_dir=args.anchor_dir)
    old = ledger.max_epsilon
    ledger.set_budget(max_epsilon=args.max_epsilon, reason=args.confirm)
    print(f"site '{ledger.site}': budget {old:g} -> {args.max_epsilon:g} (spent {ledger.epsilon():.4f}); logged")
    return 0


def _re_anchor(args) -> int:
    ledger = PrivacyLedger.open_unanchored(args.ledger, site=args.site, anchor_dir=args.anchor_dir)
    ledger.re_anchor(reason=args.confirm)
    print(f"site '{ledger.site}': new anchor written in {args.anchor_dir} at epsilon {ledger.epsilon():.4f}; "
          f"reason logged: {args.confirm!r}")
    return 0
