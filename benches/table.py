#!/usr/bin/env python3
"""Renders the JSON of `cargo bench --bench throughput -- --json FILE` as the
Markdown table in docs/benchmarks.md: python3 benches/table.py FILE"""
import json
import sys


def fmt(v):
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


doc = json.load(open(sys.argv[1]))
print("| figure | value | unit | references (value / reference) | notes |")
print("|---|---:|---|---|---|")
for r in doc["results"]:
    refs = ", ".join(f"{k} {fmt(v)} ({r['value'] / v:.2f}x)" for k, v in r["refs"].items() if v)
    extra = ", ".join(f"{k} {fmt(v)}" for k, v in r.get("extra", {}).items())
    print(f"| `{r['name']}` | {fmt(r['value'])} | {r['unit']} | {refs} | {extra} |")
