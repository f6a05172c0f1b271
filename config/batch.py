"""The fields of a host batch: the contract between data/ (which fills them) and models/ (which read them).

Every batch is a dict of numpy arrays with rows of `row_len` tokens, left-aligned (padding at
the right). Per token (TOKEN_FIELDS):
  items            int32  dense item id, 0 = padding
  timestamps       int64  seconds
  next_timestamps  int64  timestamp of the next item of the same segment (the query side of
                          HSTU's time bias); for a segment's last token, its target's time when
                          the target is known (eval), else its own
  targets          int32  next item of the same segment, 0 where there is none (no loss there)
  segment_ids      int32  1, 2, ... for the users sharing a row, 0 = padding
  positions        int32  0-based position inside the segment
  users            int32  dense user index, -1 = padding
Eval batches add per row (ROW_FIELDS): eval_target (int32), eval_position (int32: the last history token,
whose output is the query), eval_user (int32) and eval_valid (bool: False for filler rows that
keep the batch shape fixed).
"""

from __future__ import annotations

import numpy as np

TOKEN_FIELDS = {
    "items": np.int32,
    "timestamps": np.int64,
    "next_timestamps": np.int64,
    "targets": np.int32,
    "segment_ids": np.int32,
    "positions": np.int32,
    "users": np.int32,
}
ROW_FIELDS = {"eval_target": np.int32, "eval_position": np.int32, "eval_user": np.int32, "eval_valid": np.bool_}
BOOKKEEPING = ("users", "eval_user")  # whose rows these are: for the host, never read by a model
