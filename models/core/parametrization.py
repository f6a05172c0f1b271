"""µP, the maximal-update parametrization (Yang et al. 2022, "Tensor Programs V", arXiv
2203.03466), as model.parametrization=mup: hyper-parameters tuned at model.base_width transfer to
wider models. Width multiplier m = d_model / base_width; at m = 1 µP is the standard model exactly.

Table 3 of the paper (Adam), by the kind of each parameter, which scaling/engine/mup.py reads from the
logical axes:
- input weights and all vectors (item, token and positional tables, biases, norm gains): init
  and learning rate independent of width;
- hidden weights (both dimensions grow with width): init variance 1/fan_in, learning rate / m;
- output weights (width -> a fixed number): learning rate / m.
In the forward pass, which each family applies through the helpers here:
- attention logits scale as 1/d instead of 1/sqrt(d), written sqrt(base_d) / d, that is
  sqrt(base_d / d) x the standard 1/sqrt(d), so that it is unchanged at the base width (d: the
  head width, which grows with d_model at a fixed number of heads; a µP sweep keeps `heads` fixed);
- a dot-product readout (the encoder-decoder's tied code logits) scales as 1/d: the output
  weights' 1/m, on the base width's 1/sqrt(base_width) where T5 has 1/sqrt(d_model);
- input embeddings stay the size they have at the base width (a sqrt(d_model) input multiplier is
  frozen at sqrt(base_width); a positional table initialised with a width-dependent spread keeps
  the base width's).
HSTU's attention is pointwise, SiLU(q.k + rab) / N, not a softmax. The reason µP rescales logits
holds unchanged: once q and k are correlated by training, q.k grows like d (a law of large
numbers), not sqrt(d), so SiLU's argument would grow with width; HSTU has no 1/sqrt(d) at all, so
its q.k is multiplied by base_d / d. The decoder-only families score items by cosine similarity
over L2-normalised vectors at a fixed temperature: the logits cannot grow with width, so no
readout multiplier applies there.
"""

from __future__ import annotations

import math
from typing import Any


def is_mup(config: Any) -> bool:
    return getattr(config, "parametrization", "standard") == "mup"


def width_multiplier(config: Any) -> float:
    """m = d_model / base_width under µP; 1 otherwise."""
    return config.d_model / config.base_width if is_mup(config) else 1.0


def attention_factor(config: Any, head_dim_scales: bool, over_sqrt_d: bool) -> float:
    """Multiplier of q.k on top of the standard model's scaling, so that under µP the logits go as
    1/d and equal the standard model's at the base width: sqrt(base_d / d) on a softmax's
    1/sqrt(d) (over_sqrt_d), base_d / d on a q.k that has no scale (HSTU). base_d / d = 1 / m when
    the head width grows with d_model (heads fixed); 1 when it is set to a fixed number."""
    if not (is_mup(config) and head_dim_scales):
        return 1.0
    m = width_multiplier(config)
    return 1.0 / math.sqrt(m) if over_sqrt_d else 1.0 / m


def input_width(config: Any) -> int:
    """The width an input multiplier or a width-dependent embedding init is computed at."""
    return config.base_width if is_mup(config) else config.d_model


def readout_factor(config: Any) -> float:
    """The output weights' multiplier of dot-product readout logits: 1 / m under µP."""
    return 1.0 / width_multiplier(config)


def hidden_init_std(config: Any, std_at_base: float) -> float:
    """A hidden matrix initialised with a fixed spread in the standard model: under µP that spread
    holds at the base width and falls as 1 / sqrt(m) (variance 1 / fan_in)."""
    return std_at_base / math.sqrt(width_multiplier(config))
