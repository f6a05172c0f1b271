"""`ModelConfig(family=..., **fields)`: the model section of a trial, as its family's config class.

The model section is a tagged union: `family` selects the registered family (models/core/family.py),
whose FamilyConfig subclass holds the fields (HSTUConfig in models/decoder_only/hstu.py, SASRecConfig in
models/decoder_only/sasrec.py). This constructor keeps specs written before the registry loading: keys of the
old flat config that the family lacks are accepted (kept as unused, hashed legacy values when
they differ from their old defaults; see FamilyConfig).
"""

from __future__ import annotations

from typing import Any

from models.core.family import DEFAULT_FAMILY, FamilyConfig, model_config


def ModelConfig(family: str = DEFAULT_FAMILY, **fields: Any) -> FamilyConfig:  # noqa: N802 (a constructor)
    """The config of `family` with `fields` (the family's defaults elsewhere)."""
    return model_config({"family": family, **fields})
