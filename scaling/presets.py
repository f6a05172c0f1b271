"""Named trial configurations. The *-ml1m presets carry the HSTU reference's hyper-parameters
(../shared/specs/hstu.md): batch 128, AdamW lr 1e-3 betas (0.9, 0.98), dropout 0.2, 128
negatives, temperature 0.05, max length 200 (N = 200 + 11 = 211), 101 epochs."""

from __future__ import annotations

from models.config import ModelConfig
from scaling.config import ConfigError, DataConfig, TrainConfig, TrialConfig, with_overrides

_REFERENCE_TRAIN = TrainConfig(batch_size=128, epochs=101.0, learning_rate=1e-3, beta1=0.9, beta2=0.98,
                               weight_decay=0.0, negatives=128, temperature=0.05)
_REFERENCE_DATA = DataConfig(max_len=200)

PRESETS: dict[str, TrialConfig] = {
    "hstu-ml1m": TrialConfig(
        data=_REFERENCE_DATA,
        model=ModelConfig(family="hstu", d_model=50, blocks=2, heads=1, dqk=50, dv=50, max_positions=211,
                          dropout=0.2, input_dropout=0.2),
        train=_REFERENCE_TRAIN,
    ),
    "hstu-large-ml1m": TrialConfig(
        data=_REFERENCE_DATA,
        model=ModelConfig(family="hstu", d_model=50, blocks=8, heads=2, dqk=25, dv=25, max_positions=211,
                          dropout=0.2, input_dropout=0.2),
        train=_REFERENCE_TRAIN,
    ),
    "sasrec-ml1m": TrialConfig(
        data=_REFERENCE_DATA,
        model=ModelConfig(family="sasrec", d_model=50, blocks=2, heads=1, max_positions=211, dropout=0.2,
                          input_dropout=0.2),
        train=_REFERENCE_TRAIN,
    ),
    # A seconds-long configuration for smoke tests and the README's first run.
    "tiny": TrialConfig(
        data=DataConfig(max_len=20),
        model=ModelConfig(family="hstu", d_model=16, blocks=1, heads=2, max_positions=32, dropout=0.0,
                          input_dropout=0.0),
        train=TrainConfig(batch_size=32, steps=20, negatives=16, log_every=5, eval_batch_size=256),
    ),
}


def preset(name: str, family: str | None = None) -> TrialConfig:
    """The named preset, with the model family switched when `family` is given."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    config = PRESETS[name]
    if family is not None and family != config.model.family:
        config = with_overrides(config, [f"model.family={family}"])
    return config
