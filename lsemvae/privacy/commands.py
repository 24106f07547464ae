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

    show = sub.add_parser("show", help="epsilon spent, budget left, history and events of a ledger")
    show.add_argument("--ledger", type=Path, required=True, help="the site's ledger JSON file")
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
    ledger = PrivacyLedger.open(args.ledger, site=args.site, anchor_dir=args.anchor_dir)
    summary = ledger.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"site          {summary['site']}")
    print(f"ledger        {summary['ledger']}")
    print(f"epsilon       {summary['epsilon']:.4f} of {summary['max_epsilon']:g} "
          f"(delta={summary['delta']:g}, accountant {summary['accountant']}); {summary['remaining']:.4f} left")
    print(f"steps         {summary['total_steps']} over {summary['rounds']} rounds; resets: {summary['resets']}")
    for sigma, q, n in summary["history"]:
        print(f"  history     noise multiplier {sigma:.4g}, sample rate {q:.4g}, {n} steps")
    for e in summary["events"]:
        detail = {k: v for k, v in e.items() if k not in ("kind", "time", "entries", "previous")}
        print(f"  {e['time']}  {e['kind']:8s} {json.dumps(detail)}")
    return 0


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
