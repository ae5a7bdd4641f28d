"""Small tables from header + rows (the end-of-run summary of `report/row.py`), through pandas."""
from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    table = pd.DataFrame([[fmt(c) for c in row] for row in rows], columns=list(headers))
    return table.to_markdown(index=False, tablefmt="github", stralign="left", disable_numparse=True)

