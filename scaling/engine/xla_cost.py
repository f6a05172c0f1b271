"""What XLA says a compiled program computes: total FLOPs, and FLOPs of its dot operations."""

from __future__ import annotations

import math
import re
from typing import Any

_DOT = re.compile(r"stablehlo\.dot_general .*?contracting_dims = \[([\d, ]*)\] x \[[\d, ]*\].*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)")


def _dims(tensor_type: str) -> list[int]:
    body = tensor_type[len("tensor<"):-1]
    return [int(part) for part in body.split("x")[:-1]]


def dot_flops(stablehlo_text: str) -> float:
    """2 x output elements x contracted size, summed over every dot_general of a lowered program."""
    total = 0.0
    for match in _DOT.finditer(stablehlo_text):
        contracting = [int(c) for c in match.group(1).replace(" ", "").split(",") if c]
        lhs = _dims(match.group(2))
        out = _dims(match.group(4))
        total += 2.0 * math.prod(out) * math.prod(lhs[c] for c in contracting)
    return total


def total_flops(compiled: Any) -> float:
    """XLA's cost_analysis() FLOPs of a compiled program (one dict, or a list of one per device)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))
