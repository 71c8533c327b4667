"""Pre-flight audit of a causal-LM data set, without loading any model weights:

    python -m sft.audit data=chat model=causal_lm data.train_file=chat.jsonl model.pretrained=DIR

Takes the same overrides as train.py. Renders every example of every split with the chat
template, prints the first `data.audit_examples` with their supervised spans between [[ ]],
counts supervised tokens, and reports what truncation cut (`data.max_length`,
`data.truncation`). Exits 1, naming the example, when one has no supervised token or an
assistant turn whose end-of-turn token is not supervised; 0 when the data is fit to train on.
The same checks run at the start of every training run.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional

from omegaconf import DictConfig


def audit(cfg: DictConfig) -> dict:
    """Encode every split as training would; returns the data report (per split)."""
    import hydra

    from sft.cli import model_input_spec
    from sft.config import check_config
    from sft.tasks import get_task

    check_config(cfg)
    datamodule = hydra.utils.instantiate(cfg.data, **model_input_spec(cfg.model, get_task(cfg.data.task)))
    for split in ("train", "val", "test"):
        datamodule.encoded(split)
    return datamodule.report


def main(argv: Optional[list[str]] = None) -> int:
    from hydra import compose, initialize_config_dir

    from sft.cli import config_dir
    from sft.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(sys.argv[1:] if argv is None else argv)
    from sft.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    try:
        report = audit(cfg)
    except UserError as error:
        print(f"AUDIT FAILED: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    print("AUDIT PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
