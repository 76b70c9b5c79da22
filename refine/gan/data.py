"""The three training sets, read batch by batch from their HDF5 files.

- synthetic.h5 (``morph render``): ``images`` (M, 108, 108, 3) uint8 and ``labels`` (identity).
- real.h5 (``morph align``): ``images``.
- pairs.h5 (``morph render-pairs``): ``real`` and ``render``, pixel-aligned.

Batches are drawn by index from an explicit ``torch.Generator`` (its state is saved in every
checkpoint, so a resumed run draws the same batches): uniformly, or, for the renders, grouped by
identity (``grouped_batch``: P identities x K images, so that Eq. 7's centroids see each
identity several times at once), and read from the file in index order
(h5py reads sorted indices in one call) - no whole-set copy in memory, so GANFaces-size sets
(hundreds of thousands of renders) train as they are. Files are opened lazily per process, which
is what forked DataLoader workers and torchrun ranks need.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from morph.base.errors import UserError
from morph.base.h5io import open_h5, require_complete
from morph.align.template import template_of
from refine.images import to_tensor


class H5Images:
    """Random batches of one or more image datasets of an HDF5 file (the same rows of each)."""

    def __init__(self, path: str | Path, keys: tuple[str, ...], what: str, size: int, fix: str,
                 labels: str | None = None):
        self.path, self.keys, self.what, self.labels_key = Path(path), keys, what, labels
        with open_h5(self.path, what) as f:
            missing = [k for k in (*keys, *([labels] if labels else [])) if k not in f]
            if missing:
                raise UserError(f"{self.path}: not a {what} (missing {', '.join(missing)}); {fix}")
            require_complete(f, self.path)
            shapes = {k: f[k].shape for k in keys}
            for k in keys:
                if f[k].dtype != np.uint8:
                    raise UserError(f"{self.path}: '{k}' holds {f[k].dtype} values; training reads 8-bit RGB images "
                                    f"(uint8), as the toolkit writes them; {fix}")
            self.template = template_of(f.attrs)
            self.labels = None
            if labels:
                raw = f[labels]
                if raw.ndim != 1 or raw.dtype.kind not in "iu" or raw.shape[0] != shapes[keys[0]][0]:
                    raise UserError(f"{self.path}: '{labels}' is {raw.dtype} of shape {raw.shape} for "
                                    f"{shapes[keys[0]][0]} images; identity labels are one integer per image. {fix}")
                self.labels = raw[()].astype(np.int64)
        n = {s[0] for s in shapes.values()}
        if len(n) != 1:
            raise UserError(f"{self.path}: datasets {', '.join(keys)} differ in length; re-create the file.")
        self.n = n.pop()
        if self.n == 0:
            raise UserError(f"{self.path}: holds no images; re-create it with more input.")
        for k, s in shapes.items():
            if len(s) != 4 or s[1:] != (size, size, 3):
                raise UserError(f"{self.path}: '{k}' holds images of shape {s[1:]}, but training uses "
                                f"{size}x{size}x3; re-create it with --size {size}.")
        self._f = None
        self._groups = None

    def _file(self) -> h5py.File:
        if self._f is None:
            self._f = h5py.File(self.path, "r")
        return self._f

    def batch(self, gen: torch.Generator, batch_size: int, rank: int = 0, world: int = 1
              ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Tensors in [-1, 1] for ``batch_size`` rows drawn uniformly with replacement from this
        rank's shard (rows rank, rank + world, ...; the whole set in one process)."""
        shard = max(1, (self.n - rank + world - 1) // world) if self.n > rank else 1
        pick = torch.randint(shard, (batch_size,), generator=gen).numpy()
        idx = np.minimum(pick * world + rank, self.n - 1) if world > 1 else pick
        return self.rows(idx)

    def grouped_batch(self, gen: torch.Generator, batch_size: int, per_identity: int, rank: int = 0,
                      world: int = 1) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``batch_size`` rows of ``ceil(batch_size / per_identity)`` distinct identities, ``per_identity``
        images each (the last identity fills what remains), drawn from this rank's shard of
        identities (identities rank, rank + world, ... in sorted order).

        The authors feed an identity-sorted queue through a 5,000-image shuffle buffer
        (facegan ``data_loader.get_syn_loader``), so a batch holds few identities; P x K
        sampling (as FaceNet's and the triplet-loss literature's) gives that by construction.
        Identities are drawn uniformly without replacement within a batch, an identity's images
        without replacement while it has enough, else with."""
        if self._groups is None:
            order = np.argsort(self.labels, kind="stable")
            ids, starts = np.unique(self.labels[order], return_index=True)
            self._groups = np.split(order, starts[1:])
        groups = self._groups[rank::world] if len(self._groups) > rank else self._groups
        p = -(-batch_size // per_identity)
        pick = torch.randperm(len(groups), generator=gen)[:p].tolist()
        if len(pick) < p:  # fewer identities than a batch wants: repeat them
            pick += torch.randint(len(groups), (p - len(pick),), generator=gen).tolist()
        idx = []
        for n, g in enumerate(pick):
            k = min(per_identity, batch_size - n * per_identity)
            rows = groups[g]
            take = (torch.randperm(len(rows), generator=gen)[:k] if len(rows) >= k
                    else torch.randint(len(rows), (k,), generator=gen))
            idx.append(rows[take.numpy()])
        return self.rows(np.concatenate(idx))

    def rows(self, idx: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        order = np.argsort(idx, kind="stable")
        uniq, inverse = np.unique(idx[order], return_inverse=True)
        f = self._file()
        out = []
        for k in self.keys:
            block = f[k][uniq]  # h5py wants increasing, unique indices
            picked = np.empty((len(idx), *block.shape[1:]), block.dtype)
            picked[order] = block[inverse]
            out.append(to_tensor(picked))
        labels = None if self.labels is None else torch.from_numpy(self.labels[idx])
        return out, labels

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None


def image_size_of(path: Path) -> int:
    """The side of the square images of an image set (its ``images`` dataset)."""
    with open_h5(path, "synthetic image set") as f:
        if "images" not in f or len(f["images"].shape) != 4:
            raise UserError(f"{path}: not a synthetic image set (no (N, H, W, 3) 'images'); make it with "
                            "'morph render'.")
        return int(f["images"].shape[1])


def open_sets(synthetic: Path, real: Path, pairs: Path | None, size: int = 108):
    syn = H5Images(synthetic, ("images",), "synthetic image set", size,
                   "make it with 'morph render'.", labels="labels")
    rea = H5Images(real, ("images",), "real image set", size, "make it with 'morph align'.")
    pai = None
    if pairs is not None:
        pai = H5Images(pairs, ("render", "real"), "pairs file", size, "make it with 'morph render-pairs'.")
    found = {s.path: s.template for s in (syn, rea, pai) if s is not None}
    if len(set(found.values())) > 1:
        which = "; ".join(f"{p}: {t}" for p, t in found.items())
        raise UserError(f"the training sets were aligned by different crop templates ({which}); re-create them "
                        "with one --template.")
    return syn, rea, pai
