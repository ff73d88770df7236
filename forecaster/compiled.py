"""The trees of fitted HistGradientBoostingRegressors, flattened and walked by compiled code.

scikit-learn's predict costs ~8 µs per tree per call whatever the batch (a Python-level loop over
trees, each an OpenMP region), so 450 trees cost milliseconds for one series. Here every tree of
every quantile's model sits in one node array and one numba-compiled loop walks them all per row:
microseconds for one series, and the same float64 sums as scikit-learn (tests check equality).

The float32 rows that `make_features` makes take a faster walk: each split's children sit side by
side, so a step is `child + (x > threshold)` with no branch to mispredict, and four rows go down a
tree together so the CPU overlaps their chains of dependent loads (1.6-1.7x faster than one row at a
time here). Thresholds are rounded down to float32, which sends every float32 value the same way as
scikit-learn's float64 comparison; rows with NaN take the exact general walk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numba
import numpy as np

if TYPE_CHECKING:  # serving never imports scikit-learn: it loads TreeArrays (artifact.py)
    from sklearn.ensemble import HistGradientBoostingRegressor


BLOCK = 64  # rows walked together through each tree, so a tree's nodes stay in cache


@numba.njit(cache=False, nogil=True)
def _walk(x, feature, threshold, left, right, value, missing_left, roots, tree_model, base, out, lo, hi):
    for i in range(lo, hi):
        for m in range(base.shape[0]):
            out[m, i] = base[m]
    for start in range(lo, hi, BLOCK):
        stop = min(start + BLOCK, hi)
        for t in range(roots.shape[0]):
            root, m = roots[t], tree_model[t]
            for i in range(start, stop):
                node = root
                while feature[node] >= 0:  # leaves have feature -1
                    v = x[i, feature[node]]
                    if v != v:  # NaN: the side the training data's missing values went
                        node = left[node] if missing_left[node] else right[node]
                    elif v <= threshold[node]:
                        node = left[node]
                    else:
                        node = right[node]
                out[m, i] += value[node]


@numba.njit(cache=False, nogil=True, parallel=True)
def _walk_parallel(x, feature, threshold, left, right, value, missing_left, roots, tree_model, base, out, chunks):
    for c in numba.prange(chunks.shape[0] - 1):
        _walk(x, feature, threshold, left, right, value, missing_left, roots, tree_model, base, out,
              chunks[c], chunks[c + 1])


@numba.njit(cache=False, nogil=True, inline="always")
def _descend(x, i, node, feature, threshold, child):
    """One step down; a leaf is its own child with an infinite threshold, so it stays put."""
    return child[node] + (x[i, feature[node]] > threshold[node])


@numba.njit(cache=False, nogil=True)
def _walk_float32(x, feature, threshold, child, value, roots, tree_model, base, out, lo, hi):
    for i in range(lo, hi):
        for m in range(base.shape[0]):
            out[m, i] = base[m]
    for start in range(lo, hi, BLOCK):
        stop = min(start + BLOCK, hi)
        for t in range(roots.shape[0]):
            root, m = roots[t], tree_model[t]
            i = start
            while i + 4 <= stop:  # four independent walks interleaved
                a = b = c = d = root
                while True:
                    na = _descend(x, i, a, feature, threshold, child)
                    nb = _descend(x, i + 1, b, feature, threshold, child)
                    nc = _descend(x, i + 2, c, feature, threshold, child)
                    nd = _descend(x, i + 3, d, feature, threshold, child)
                    if na == a and nb == b and nc == c and nd == d:
                        break
                    a, b, c, d = na, nb, nc, nd
                out[m, i] += value[a]
                out[m, i + 1] += value[b]
                out[m, i + 2] += value[c]
                out[m, i + 3] += value[d]
                i += 4
            while i < stop:
                a = root
                while True:
                    na = _descend(x, i, a, feature, threshold, child)
                    if na == a:
                        break
                    a = na
                out[m, i] += value[a]
                i += 1


@numba.njit(cache=False, nogil=True, parallel=True)
def _walk_float32_parallel(x, feature, threshold, child, value, roots, tree_model, base, out, chunks):
    for c in numba.prange(chunks.shape[0] - 1):
        _walk_float32(x, feature, threshold, child, value, roots, tree_model, base, out, chunks[c], chunks[c + 1])


def _float32_below(threshold: float) -> np.float32:
    """The largest float32 not above `threshold`: `x > it` iff `x > threshold` for every float32 x."""
    t32 = np.float32(threshold)
    return np.nextafter(t32, np.float32(-np.inf)) if float(t32) > threshold else t32


def _side_by_side(nodes: Mapping[str, np.ndarray], offset: int) -> tuple[np.ndarray, ...]:
    """One tree's nodes in breadth-first order with each split's children adjacent (left, right)."""
    order, first_child = [0], {}
    for old in order:  # grows while iterated: a breadth-first walk
        if not nodes["is_leaf"][old]:
            first_child[old] = len(order)
            order += [int(nodes["left"][old]), int(nodes["right"][old])]
    feature = np.zeros(len(order), np.int32)
    threshold = np.full(len(order), np.inf, np.float32)
    child = np.arange(offset, offset + len(order), dtype=np.int32)  # leaves point at themselves
    value = np.zeros(len(order))
    for new, old in enumerate(order):
        if nodes["is_leaf"][old]:
            value[new] = nodes["value"][old]
        else:
            feature[new] = nodes["feature_idx"][old]
            threshold[new] = _float32_below(float(nodes["num_threshold"][old]))
            child[new] = offset + first_child[old]
    return feature, threshold, child, value


# The node fields the walkers read, as scikit-learn's TreePredictor.nodes names them.
NODE_FIELDS = ("feature_idx", "num_threshold", "left", "right", "value", "missing_go_to_left", "is_leaf")


@dataclass
class TreeArrays:
    """One regressor's trees as plain arrays: each of NODE_FIELDS for all its trees' nodes end to end
    (child indices count from their own tree's root), the node count of each tree, and the baseline."""

    nodes: Mapping[str, np.ndarray]
    sizes: np.ndarray
    baseline: float

    @classmethod
    def of(cls, model: "HistGradientBoostingRegressor") -> "TreeArrays":
        if model.n_trees_per_iteration_ != 1 or model.loss not in ("quantile", "squared_error"):
            raise ValueError("only single-output regressors with an identity link can be compiled")
        trees = [tree.nodes for (tree,) in model._predictors]
        if any(t["is_categorical"].any() for t in trees):
            raise ValueError("categorical splits are not supported")
        nodes = np.concatenate(trees)
        return cls({f: np.ascontiguousarray(nodes[f]) for f in NODE_FIELDS}, np.array([len(t) for t in trees]),
                   float(np.ravel(model._baseline_prediction)[0]))

    def check(self, n_features: int) -> None:
        """Raises ValueError unless every tree's child and feature indices point inside it and the rows."""
        if set(self.nodes) != set(NODE_FIELDS) or len({len(a) for a in self.nodes.values()}) != 1:
            raise ValueError(f"the node fields must be {', '.join(NODE_FIELDS)}, all of one length")
        if any(a.ndim != 1 or a.dtype.kind not in ("f" if f in ("num_threshold", "value") else "biu")
               for f, a in self.nodes.items()):
            raise ValueError("node fields must be one-dimensional arrays: thresholds and values float, the rest integer")
        sizes = np.asarray(self.sizes)
        if sizes.ndim != 1 or not len(sizes) or sizes.dtype.kind not in "iu" or (sizes < 1).any() \
                or sizes.sum() != len(self.nodes["left"]):
            raise ValueError("tree sizes must be positive and add up to the node count")
        if not np.isin(self.nodes["is_leaf"], (0, 1)).all():
            raise ValueError("is_leaf must be 0 or 1")
        split = self.nodes["is_leaf"] == 0
        own_size = np.repeat(sizes, sizes)[split]
        index = (np.arange(len(split)) - np.repeat(np.cumsum(sizes) - sizes, sizes))[split]
        for f in ("left", "right"):
            child = self.nodes[f][split].astype(np.int64)
            if ((child <= index) | (child >= own_size)).any():  # after its parent (no cycles), in its tree
                raise ValueError(f"a split's {f} child lies outside its tree or before its parent")
        feature = self.nodes["feature_idx"][split]
        if ((feature < 0) | (feature >= n_features)).any():
            raise ValueError(f"a split reads a feature outside the {n_features} the rows have")

    def trees(self):
        """Each tree's nodes, field by field."""
        bounds = np.concatenate([[0], np.cumsum(self.sizes)])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            yield {f: a[lo:hi] for f, a in self.nodes.items()}


class CompiledTrees:
    """Sum of leaf values plus baseline, per model: what HistGradientBoostingRegressor.predict returns
    for the pinball (quantile) and squared-error losses, whose inverse link is the identity."""

    @classmethod
    def of(cls, models: Sequence["HistGradientBoostingRegressor"]) -> "CompiledTrees":
        return cls([TreeArrays.of(m) for m in models])

    def __init__(self, models: Sequence[TreeArrays]):
        nodes, roots, tree_model, offset, fast = [], [], [], 0, []
        for m, model in enumerate(models):
            for tree in model.trees():
                size = len(tree["left"])
                nodes.append(tree)
                fast.append(_side_by_side(tree, offset))
                roots.append(offset)
                tree_model.append(m)
                offset += size
        all_nodes = {f: np.concatenate([n[f] for n in nodes]) for f in NODE_FIELDS}
        relink = np.repeat(np.array(roots), [len(n["left"]) for n in nodes])  # child indices are per tree
        self.feature = np.where(all_nodes["is_leaf"] == 1, -1, all_nodes["feature_idx"]).astype(np.int32)
        self.threshold = all_nodes["num_threshold"].astype(np.float64)
        self.left = (all_nodes["left"].astype(np.int64) + relink).astype(np.int32)
        self.right = (all_nodes["right"].astype(np.int64) + relink).astype(np.int32)
        self.value = all_nodes["value"].astype(np.float64)
        self.missing_left = all_nodes["missing_go_to_left"].astype(np.bool_)
        self.roots = np.array(roots, dtype=np.int32)
        self.tree_model = np.array(tree_model, dtype=np.int64)
        self.base = np.array([m.baseline for m in models], dtype=np.float64)
        self.n_models = len(models)
        self.fast_feature, self.fast_threshold, self.fast_child, self.fast_value = (
            np.concatenate(parts) for parts in zip(*fast))

    def _args(self, x: np.ndarray):
        return (x, self.feature, self.threshold, self.left, self.right, self.value, self.missing_left,
                self.roots, self.tree_model, self.base)

    def _float32_args(self, x: np.ndarray):
        return (x, self.fast_feature, self.fast_threshold, self.fast_child, self.fast_value,
                self.roots, self.tree_model, self.base)

    def predict(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """x [n, features] -> [n_models, n] float64."""
        if x.dtype == np.float32 and not np.isnan(x).any():
            walk, walk_parallel = _walk_float32, _walk_float32_parallel
            args = self._float32_args(np.ascontiguousarray(x))
        else:
            walk, walk_parallel = _walk, _walk_parallel
            args = self._args(np.ascontiguousarray(x, dtype=np.float64))  # scikit-learn compares float64
        out = np.empty((self.n_models, len(x)))
        if threads <= 1 or len(x) < 512:
            walk(*args, out, 0, len(x))
        else:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            chunks = np.linspace(0, len(x), 4 * threads + 1).astype(np.int64)
            walk_parallel(*args, out, chunks)
        return out
