"""Content vectors from item metadata: TF-IDF of text tokens, multi-hot labels (genres, categories),
one-hot brands, standardised numbers (year, price), each block weighted equally, reduced by a
truncated SVD. Works on any metadata table aligned with dense item ids (row i - 1 = item i)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import scipy.sparse as sp

from data.errors import DataError

LABEL_COLUMNS = ("class", "genre", "genres", "categories", "category")  # several labels per item
CATEGORY_COLUMNS = ("brand",)  # one label per item
TOKEN_COLUMNS = ("kg",)  # whitespace-separated tokens (knowledge-graph relation=entity pairs), TF-IDF weighted
_TOKEN = re.compile(r"[a-z0-9]+")
EXACT_SVD_UP_TO = 4096  # the smaller side of a matrix below which truncated_svd is exact


def _missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy()


def label_sets(values: pd.Series) -> list[list[str]]:
    """Labels per item: split on "|" when the column uses it, else on whitespace (MovieLens)."""
    text = values.fillna("").astype(str)
    separator = "|" if text.str.contains("|", regex=False).any() else None
    return [[label.strip() for label in (row.split(separator) if separator else row.split()) if label.strip()]
            for row in text]


def _vocabulary_matrix(rows: list[list[str]], min_count: int = 1) -> sp.csr_matrix:
    """(items, vocabulary) counts of each row's tokens; tokens in fewer than min_count rows dropped."""
    document_frequency: dict[str, int] = {}
    for row in rows:
        for token in set(row):
            document_frequency[token] = document_frequency.get(token, 0) + 1
    vocabulary = {t: i for i, t in enumerate(sorted(t for t, c in document_frequency.items() if c >= min_count))}
    indptr, indices = [0], []
    for row in rows:
        indices.extend(vocabulary[t] for t in row if t in vocabulary)
        indptr.append(len(indices))
    data = np.ones(len(indices), np.float64)
    matrix = sp.csr_matrix((data, np.asarray(indices, np.int64), np.asarray(indptr)), shape=(len(rows), len(vocabulary)))
    matrix.sum_duplicates()
    return matrix


def tfidf(texts: pd.Series, min_count: int = 2, words: bool = True) -> sp.csr_matrix:
    """Smoothed TF-IDF (idf = ln((1 + n) / (1 + df)) + 1) of lower-cased word tokens (or of the
    whitespace-separated tokens as they stand), rows unit-norm; tokens in < min_count items dropped."""
    split = (lambda t: _TOKEN.findall(t.lower())) if words else str.split
    rows = [split(t) if isinstance(t, str) else [] for t in texts]
    counts = _vocabulary_matrix(rows, min_count)
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0
    weighted = counts @ sp.diags(idf)
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ weighted)


def _standardised(values: pd.Series) -> sp.csr_matrix:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    known = np.isfinite(numbers)
    columns = [np.zeros(len(numbers))]
    if known.any():
        mean, std = numbers[known].mean(), numbers[known].std()
        columns[0] = np.where(known, (numbers - mean) / (std if std > 0 else 1.0), 0.0)
    if not known.all():
        columns.append((~known).astype(np.float64))  # a missing-value indicator
    return sp.csr_matrix(np.stack(columns, 1))


def _mostly_numbers(column: pd.Series) -> bool:
    """A text column whose present values are (nearly all) numbers, e.g. RecBole's year tokens."""
    present = column.dropna()
    return bool(len(present)) and pd.to_numeric(present, errors="coerce").notna().mean() >= 0.9


def metadata_blocks(metadata: pd.DataFrame) -> dict[str, sp.csr_matrix]:
    """One sparse block per usable column: its encoding chosen by the column's name and type."""
    blocks: dict[str, sp.csr_matrix] = {}
    for name in metadata.columns:
        if name == "item":
            continue
        column = metadata[name]
        if column.isna().all():
            continue
        lowered = name.lower()
        if lowered in LABEL_COLUMNS:
            blocks[name] = _vocabulary_matrix(label_sets(column))
        elif lowered in CATEGORY_COLUMNS:
            blocks[name] = _vocabulary_matrix([[str(v)] if isinstance(v, str) and v else [] for v in column])
        elif lowered in TOKEN_COLUMNS:
            blocks[name] = tfidf(column, words=False)
        elif pd.api.types.is_numeric_dtype(column) or _mostly_numbers(column):
            blocks[name] = _standardised(column)
        else:
            blocks[name] = tfidf(column)
    return {name: block for name, block in blocks.items() if block.shape[1] and block.nnz}


def item_labels(metadata: pd.DataFrame | None) -> sp.csr_matrix | None:
    """Binary (items, labels) matrix of the genre/category column, or None when there is none."""
    if metadata is None:
        return None
    for name in metadata.columns:
        if name.lower() in LABEL_COLUMNS and not metadata[name].isna().all():
            matrix = _vocabulary_matrix(label_sets(metadata[name]))
            matrix.data[:] = 1.0
            return matrix
    return None


def truncated_svd(matrix: sp.spmatrix | np.ndarray, dim: int, seed: int) -> np.ndarray:
    """U_d S_d of the top-d singular triplets, each column's sign fixed so that its largest entry is
    positive. Exact when either side has at most 4096 entries (an eigendecomposition of the smaller
    Gram matrix), else randomised (Halko et al. 2011, 4 power iterations, seeded)."""
    rows, columns = matrix.shape
    dim = min(dim, rows, columns)
    if min(rows, columns) <= EXACT_SVD_UP_TO:
        by_rows = rows <= columns
        gram = matrix @ matrix.T if by_rows else matrix.T @ matrix
        gram = gram.toarray() if sp.issparse(gram) else np.asarray(gram)
        values, vectors = np.linalg.eigh(gram.astype(np.float64))
        values, vectors = np.maximum(values[::-1][:dim], 0.0), vectors[:, ::-1][:, :dim]
        projected = vectors * np.sqrt(values) if by_rows else np.asarray(matrix @ vectors)
    else:
        rng = np.random.default_rng(seed)
        sketch = matrix @ rng.standard_normal((columns, dim + 10))
        for _ in range(4):
            sketch, _ = np.linalg.qr(sketch)
            sketch = matrix @ (matrix.T @ sketch)
        basis, _ = np.linalg.qr(sketch)
        small = np.asarray((matrix.T @ basis).T)
        u_small, s, _ = np.linalg.svd(small, full_matrices=False)
        projected = (basis @ u_small[:, :dim]) * s[:dim]
    signs = np.sign(projected[np.argmax(np.abs(projected), 0), np.arange(projected.shape[1])])
    return (projected * np.where(signs == 0, 1.0, signs)).astype(np.float32)


def metadata_vectors(metadata: pd.DataFrame | None, dim: int, seed: int, source: str = "metadata") -> np.ndarray:
    """(items, dim) content vectors: the blocks scaled to equal mean squared row norm, then SVD."""
    if metadata is None:
        raise DataError(f"{source}: the dataset has no item metadata (ML-100K's .item file, an Amazon meta_*.json)")
    blocks = metadata_blocks(metadata)
    if not blocks:
        raise DataError(f"{source}: no usable metadata column in {', '.join(map(str, metadata.columns))}")
    scaled = []
    for block in blocks.values():
        mean_square = block.multiply(block).sum() / block.shape[0]
        scaled.append(block / np.sqrt(max(mean_square, 1e-12)))
    return truncated_svd(sp.csr_matrix(sp.hstack(scaled)), dim, seed)
