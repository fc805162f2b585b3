"""A plan (:func:`blockprune.deploy.plan.plan`) for people: the terminal text and the JSON form."""

from __future__ import annotations

import json
from typing import Any


# ------------------------------------------------------------------------------------------ text
def _human(count: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f}"


def to_text(plan: dict[str, Any]) -> str:
    """The plan for a terminal: sparsities, a per-layer table, sizes, speedups, notes."""
    target = plan.get("target") or {}
    lines = [f"plan: {plan.get('preset')} on {plan['model']}, target {target.get('kind')} {target.get('value')} "
             f"(sequence length {plan['seq_len']})",
             (f"sparsity: FLOPs of attention and FFN {plan['sparsity']:.1%} (the FFN keeps what the heads leave), "
              f"attention tiles {plan['attention_sparsity']:.1%}" if plan.get("ffn_budget") == "flops" else
              f"sparsity: FFN {plan['sparsity']:.1%}, attention {plan['attention_sparsity']:.1%}"),
             *_hidden_lines(plan),
             f"shapes after shrink (attention {plan['kind']['attention']}, FFN {plan['kind']['ffn']}):",
             "  layer  heads  FFN neurons (padded to multiples of " + f"{plan['ffn_multiple']})"]
    for i, (h, ht, f, fk, ft) in enumerate(zip(plan["heads"], plan["heads_total"], plan["ffn"], plan["ffn_kept"],
                                               plan["ffn_total"], strict=True)):
        pad = f" ({fk} kept)" if f != fk else ""
        lines.append(f"  {i:>5}  {h:>2}/{ht:<3}  {f}/{ft}{pad}")
    for key, label in (("linear", "block linear parameters"), ("total", "parameters (base model)")):
        before, after = plan["params"][key]["before"], plan["params"][key]["after"]
        lines.append(f"{label}: {_human(before)} -> {_human(after)} ({after / before:.1%})")
    flops = plan["flops_per_token"]
    lines.append(f"FLOPs per token: {_human(flops['before'])} -> {_human(flops['after'])}; "
                 f"theoretical speedup {plan['theoretical_speedup']:.2f}x")
    lines += _speed_lines(plan)
    measured = plan.get("measured")
    if measured:
        for b in measured["batches"]:
            lines.append(f"measured on {measured['device']} ({measured['threads']} threads), batch {b['batch_size']}: "
                         f"{b['reference_ms']:.1f} ms -> {b['model_ms']:.1f} ms = {b['measured']:.2f}x "
                         "(random weights at the planned shapes)")
    lines += [f"note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def _speed_lines(plan: dict[str, Any]) -> list[str]:
    """Target, predicted (measured table), theoretical (FLOPs) and, with ``--measure``, measured: side by side."""
    table = plan.get("latency_table")
    if plan.get("speed_model") != "measured" or not table:
        return []
    batch = table["batch_size"]
    line = (f"target {plan['target']['value']}x | predicted {plan['predicted_speedup']:.2f}x (measured table, b "
            f"{batch}, {table['threads']} threads) | theoretical (FLOPs) {plan['theoretical_speedup']:.2f}x")
    timed = [b for b in (plan.get("measured") or {}).get("batches", []) if b["batch_size"] == batch]
    if timed:
        line += f" | measured {timed[0]['measured']:.2f}x (b {batch})"
    lines = [line, f"latency table: {table['cache']} (dense {table['model_ms']:.2f} ms on {table['device_name']}, "
                   f"{table['dtype']}, calibration {table['calibration']:.3f})"]
    fit = plan.get("latency_fit")
    if fit:
        tried = ", ".join(f"{s['heads']}h/{s['ffn']} {s['measured']:.2f}x" for s in fit["steps"])
        verdict = "within" if fit["met"] else "NOT within"
        lines.append(f"fitted on the device: measured {fit['measured_speedup']:.2f}x, {verdict} "
                     f"{fit['tolerance']:.0%} of the target (shapes timed: {tried})")
    return lines


def _hidden_lines(plan: dict[str, Any]) -> list[str]:
    """The residual cut and how the speedup splits between it and the heads and neurons (none without a cut)."""
    hidden = plan.get("hidden")
    if not hidden:
        return []
    alone, total = hidden["speedup"], plan["theoretical_speedup"]
    lines = [f"hidden {hidden['before']} \u2192 {hidden['after']} ({hidden['sparsity']:.0%} of the residual dimensions "
             "removed, in every layer)"]
    target = plan.get("target") or {}
    if plan.get("speed_model") == "measured":  # the table prices width, heads and neurons together: no FLOPs split
        return lines
    if target.get("kind") == "speedup" and target.get("value"):
        value = float(target["value"])
        lines.append(f"speedup split of the target {target['value']}x: the residual cut {alone:.2f}x \u00d7 heads and "
                     f"neurons {value / alone:.2f}x (planned in whole units: {total / alone:.2f}x, {total:.2f}x in all)")
    else:
        lines.append(f"speedup: the residual cut {alone:.2f}x \u00d7 heads and neurons {total / alone:.2f}x = {total:.2f}x")
    return lines


def to_json(plan: dict[str, Any]) -> str:
    """The plan as JSON text (sorted keys)."""
    return json.dumps(plan, indent=1, sort_keys=True) + "\n"
