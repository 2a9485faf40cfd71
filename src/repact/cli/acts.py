"""``repact acts``: list the registered activations."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("acts", help="list the registered activations", description="List every registered activation.")
    p.add_argument("--family", default=None, help="only this family (repact, acon, frelu, classic, adaptive, rational)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..registry import get_act_spec, list_acts

    names = list_acts(family=args.family)
    if not names:
        from . import CLIError

        families = sorted({get_act_spec(n).family for n in list_acts()})
        raise CLIError(f"unknown family {args.family!r}; accepted: {', '.join(families)}")
    rows = []
    for n in names:
        s = get_act_spec(n)
        rows.append({"name": n, "aliases": list(s.aliases), "family": s.family, "learnable": s.learnable,
                     "deployable": s.deployable, "description": s.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        flags = ("L" if r["learnable"] else "-") + ("D" if r["deployable"] else "-")
        alias = f" (aliases: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name']:<{width}}  {r['family']:<9} {flags}  {r['description']}{alias}")
    print("\nL = learnable, D = exact single-branch deploy form")
    return 0
