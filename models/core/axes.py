"""Logical axis names of parameters and activations (t5x/MaxText style).

Every parameter carries these names; scaling/engine/mesh.py holds the one table that maps them to the
mesh axes ("data", "fsdp", "tensor").
"""

BATCH = "batch"
LENGTH = "length"
EMBED = "embed"  # the model width D
VOCAB = "vocab"  # rows of a token vocabulary (the encoder-decoder's code tokens)
TABLE_ROWS = "table_rows"  # rows of a catalogue table (num_items + 1 real rows; models/core/tables.py)
POSITIONS = "positions"  # rows of a positional table
QKV = "qkv"  # fused projection outputs: heads x per-head width, for several projections
HEADS_DIM = "heads_dim"  # heads x per-head width, the input side of an output projection
MLP = "mlp"  # feed-forward hidden width
RELATIVE = "relative"  # relative-bias tables (small, replicated)
ID_EDGES = "id_edges"  # the semantic-ID trie's per-level tables (models/encdec/id_trie.py)
EXPERT = "expert"  # the experts of a mixture-of-experts layer (models/encdec/moe.py)
