"""Named trial configurations. The *-ml1m presets carry the HSTU reference's hyper-parameters
(meta-recsys/generative-recommenders, its ML-1M configs; Zhai et al. 2024): batch 128, AdamW lr 1e-3 betas (0.9, 0.98), dropout 0.2, 128
negatives, temperature 0.05, max length 200 (N = 200 + 11 = 211), 101 epochs."""

from __future__ import annotations

from typing import Callable

from models.core.config import ModelConfig
from scaling.config import ConfigError, DataConfig, TrainConfig, TrialConfig, with_overrides

_REFERENCE_TRAIN = TrainConfig(batch_size=128, epochs=101.0, learning_rate=1e-3, beta1=0.9, beta2=0.98,
                               weight_decay=0.0, negatives=128, temperature=0.05)
_REFERENCE_DATA = DataConfig(max_len=200)


def _tiger_ml100k() -> TrialConfig:
    return TrialConfig(
        data=DataConfig(max_len=200),
        model=ModelConfig(family="encdec", d_model=64, heads=4, encoder_blocks=2, decoder_blocks=2, d_ff=256,
                          dropout=0.1, history_items=10, targets_per_row=16),
        train=TrainConfig(batch_size=64, epochs=30.0, learning_rate=1e-3, beta1=0.9, beta2=0.98, warmup_steps=50,
                          eval_batch_size=64, log_every=25),
    )


# genrec's SASRec and HSTU on Amazon Beauty (the presets' comment below)
_GENREC_BEAUTY_DATA = DataConfig(name="amazon-beauty", max_len=50, split="holdout", packed=True)
_GENREC_BEAUTY_TRAIN = TrainConfig(batch_size=32, epochs=10.0, learning_rate=1e-3, beta1=0.9, beta2=0.98,
                                   weight_decay=0.0, loss="full_softmax", temperature=0.05, eval_every=94,
                                   checkpoint_every=94, exclude_history=False)

# name -> the function that builds it: a preset is built when named, so that naming one imports
# only its family
PRESETS: dict[str, Callable[[], TrialConfig]] = {
    "hstu-ml1m": lambda: TrialConfig(
        data=_REFERENCE_DATA,
        model=ModelConfig(family="hstu", d_model=50, blocks=2, heads=1, dqk=50, dv=50, max_positions=211,
                          dropout=0.2, input_dropout=0.2),
        train=_REFERENCE_TRAIN,
    ),
    "hstu-large-ml1m": lambda: TrialConfig(
        data=_REFERENCE_DATA,
        model=ModelConfig(family="hstu", d_model=50, blocks=8, heads=2, dqk=25, dv=25, max_positions=211,
                          dropout=0.2, input_dropout=0.2),
        train=_REFERENCE_TRAIN,
    ),
    "sasrec-ml1m": lambda: TrialConfig(
        data=_REFERENCE_DATA,
        model=ModelConfig(family="sasrec", d_model=50, blocks=2, heads=1, max_positions=211, dropout=0.2,
                          input_dropout=0.2),
        train=_REFERENCE_TRAIN,
    ),
    # TIGER (Rajput et al. 2023: 4 + 4 blocks, d 128, 6 heads x 64, feed-forward 1024) scaled to ML-100K's 1682 items and
    # 100k ratings: half TIGER's width (D 64, 4 heads x 16, feed-forward 256) and depth (2 + 2
    # blocks), dropout 0.1 as TIGER, the last 10 history items (TIGER: 20; 10 quarters the
    # encoder's attention and measured as good here); semantic IDs 3 x 64 balanced RQ-KMeans of
    # metadata + co-occurrence (the semantic-ID defaults). Examples: 16 (history, next item) pairs
    # drawn per user window per step (TIGER trains on every prefix; 16 of a window's ~100 keep a
    # step at 1024 examples), 30 epochs of the recent 200-item windows, AdamW 1e-3 constant after 50
    # warm-up steps (TIGER: Adagrad 0.01 with inverse-sqrt decay; cosine decay to 0 measured worse
    # here: test HR@10 0.111 against 0.134). About 7-12 minutes on this CPU.
    "tiger-ml100k": _tiger_ml100k,
    # OneRec's mixture-of-experts decoder on tiger-ml100k: each decoder block's feed-forward is 8
    # experts of 128 hidden units, top-2 routed, so a token runs the dense preset's 256 hidden
    # units (its active FLOPs per token, plus a router of 2 x 64 x 8) while the feed-forward holds
    # 4x the parameters; capacity factor 1.25, Switch balance loss x 0.01. Sweep axes:
    # model.experts, model.top_k, model.capacity_factor (model.expert_d_ff=256: 2x the active FLOPs).
    "onerec-moe-ml100k": lambda: with_overrides(_tiger_ml100k(), ["model.experts=8", "model.top_k=2",
                                                                  "model.expert_d_ff=128", "model.capacity_factor=1.25"]),
    # Amazon Beauty 5-core under the published protocol (SOURCE.md beside the data; the data as the
    # local dataset amazon-beauty, data/sources.py): leave-one-out with the validation target held
    # out of training (data.split=holdout), full ranking with the history kept
    # (train.exclude_history=false; the history-excluded metrics beside), the test metrics of the
    # evaluation of best validation HR@10, evaluated once per epoch. genrec's SASRec and HSTU (its
    # config/*/amazon.gin): d 64, 2 blocks, 2 heads, history 50, dropout 0.2, AdamW lr 1e-3 without
    # weight decay, 10 epochs, cross-entropy over every item (here over cosine / temperature 0.05);
    # SASRec's feed-forward 256; HSTU's 64 time buckets (these files have no timestamps: positions
    # stand in for time). Users packed into rows of 51 (data.packed; a user averages 8.9 items, so
    # unpacked rows are 87% padding), 32 rows a step (about 180 users, 1,600 positions; 94 steps an
    # epoch). The full softmax was chosen over the lab's sampled softmax (128 uniform negatives per
    # position) by validation HR@10 (seed 0: .0769 at epoch 6 against .0707 and a best of .0718 in 10;
    # shared negatives: .0686 best in 26 epochs); benchmarks/results/beauty-table-2026-12-07.md.
    "sasrec-beauty": lambda: TrialConfig(
        data=_GENREC_BEAUTY_DATA,
        model=ModelConfig(family="sasrec", d_model=64, blocks=2, heads=2, ffn_dim=256, max_positions=51,
                          dropout=0.2, input_dropout=0.2),
        train=_GENREC_BEAUTY_TRAIN,
    ),
    "hstu-beauty": lambda: TrialConfig(
        data=_GENREC_BEAUTY_DATA,
        model=ModelConfig(family="hstu", d_model=64, blocks=2, heads=2, max_positions=51, time_buckets=64,
                          dropout=0.2, input_dropout=0.2),
        train=_GENREC_BEAUTY_TRAIN,
    ),
    # TIGER as its paper trains it (Rajput et al., NeurIPS 2023, arXiv 2305.05065, section 4):
    # 4 + 4 blocks, d 128, 6 heads of 64, feed-forward 1024, dropout 0.1, history 20, 2,000 user
    # buckets; the shared RQ-VAE IDs (4 full levels of 256, distinct: no collision code); lr 0.01
    # for 10k steps then inverse-square-root decay, 200k steps of 256 (history, next item)
    # examples, one drawn per user row (AdamW here; the paper names Adagrad's schedule); beam
    # search over valid IDs (20 beams) beside the exact scorer. 4.8M parameters by this lab's count
    # (the paper says about 13M); 1.7e11 model FLOPs per step, 3.5e16 in all: accelerator work
    # (python -m benchmarks.throughput --preset tiger-beauty --batch 256 --compile-only).
    "tiger-beauty": lambda: TrialConfig(
        data=DataConfig(name="amazon-beauty", max_len=20, split="holdout"),
        model=ModelConfig(family="encdec", d_model=128, heads=6, head_dim=64, encoder_blocks=4, decoder_blocks=4,
                          d_ff=1024, dropout=0.1, history_items=20, user_buckets=2000, targets_per_row=1,
                          ids="amazon-beauty:index_rqvae.json", ids_levels=4, ids_codebook=256,
                          ids_collision_code=False),
        train=TrainConfig(batch_size=256, steps=200_000, learning_rate=0.01, schedule="rsqrt", warmup_steps=10_000,
                          eval_every=10_000, eval_batch_size=256, log_every=100, exclude_history=False),
    ),
    # The best TIGER this lab could train on 2 CPU cores in about 90 minutes (issue 31; chosen by
    # step-time probes and validation HR@10 only: benchmarks/results/beauty-table-2026-12-07.md).
    # The paper's protocol and IDs (history 20, 2,000 user buckets, the shared RQ-VAE IDs, beam
    # search over valid IDs; the exact scorer, 22,363 users x 12,101 items, is hours here), every
    # (history, next item) prefix of a training row an example (TIGER's), users packed into rows of
    # 21, 16 rows (about 336 examples) a step. The paper's 4 + 4 blocks of d 128 cost 2.9e8 FLOPs
    # an example (12.6 s a step here): 0.8 epochs in 90 minutes. Its width at half its depth and a
    # quarter of its feed-forward (d 128, 4 heads of 32, FF 512, 2 + 2 blocks; 5.9e7 FLOPs an
    # example, about 1.4 s a step alone) reached validation HR@10 .0277 after 2 epochs, where the
    # d 64 shape of tiger-ml100k needed 8 epochs (3.5x its wall time) for .0287: 6 epochs, each
    # evaluated (about 11.5 + 2.5 minutes alone). AdamW 1e-3 after 100 warm-up steps (the paper's lr 0.01
    # is Adagrad's), cosine decay to 0 over the run. Beauty's short histories (8.9 items a user)
    # leave most of the encoder's 81 slots padding, computed anyway: XLA executes 4.4x the model
    # FLOPs.
    "tiger-beauty-cpu": lambda: TrialConfig(
        data=DataConfig(name="amazon-beauty", max_len=20, split="holdout", packed=True),
        model=ModelConfig(family="encdec", d_model=128, heads=4, head_dim=32, encoder_blocks=2, decoder_blocks=2,
                          d_ff=512, dropout=0.1, history_items=20, user_buckets=2000, targets_per_row=0,
                          ids="amazon-beauty:index_rqvae.json", ids_levels=4, ids_codebook=256,
                          ids_collision_code=False, exact_scorer=False),
        train=TrainConfig(batch_size=16, epochs=6.0, learning_rate=1e-3, schedule="cosine", warmup_steps=100,
                          eval_every=430, checkpoint_every=430, eval_batch_size=256, log_every=20,
                          exclude_history=False),
    ),
    # A seconds-long configuration for smoke tests and the README's first run.
    "tiny": lambda: TrialConfig(
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
    config = PRESETS[name]()
    if family is not None and family != config.model.family:
        config = with_overrides(config, [f"model.family={family}"])
    return config
