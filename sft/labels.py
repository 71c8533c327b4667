"""Label names as they appear in metric keys and TensorBoard tags.

A label keeps its name, in any script (`test/f1_正面`, `test/f1_négatif`): only what a key cannot
hold is replaced, i.e. `/` (TensorBoard's tag hierarchy), backslashes, whitespace and control
characters, each run of them by one `_`. Two labels never share a key: when two names clean to
the same key, the later one in label order gets a numbered suffix (`_2`, `_3`, ...), so a run's
keys depend only on its label map. The mapping label -> key is written to data_report.json.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

_FORBIDDEN = re.compile(r"[\s/\\]+")


def metric_key(label) -> str:
    """One label's key, before collisions are resolved."""
    text = "".join(c if unicodedata.category(c) not in ("Cc", "Cf") else " " for c in str(label))
    return _FORBIDDEN.sub("_", text) or "_"


def metric_keys(labels: Sequence) -> list[str]:
    """The keys of all labels, in label order, all distinct."""
    bases = [metric_key(label) for label in labels]
    taken: set[str] = set()
    keys = []
    for base in bases:
        key, n = base, 1
        while key in taken:
            n += 1
            key = f"{base}_{n}"
        taken.add(key)
        keys.append(key)
    return keys


def key_map(labels: Sequence) -> dict[str, str]:
    """label -> key, for data_report.json."""
    return {str(label): key for label, key in zip(labels, metric_keys(labels))}
