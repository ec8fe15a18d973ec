"""Notebook 06, exercises 1-2: occlusion and the silhouette threshold of the canvases.

1. ``max_items``: with one item per canvas nothing is ever hidden (as many boxes as items); with
   more items per canvas, later items cover earlier ones and a few canvases (rare at the default 4,
   more at 8) have fewer boxes than items: a hidden item has no box to detect, but it is still nowhere in the class mask.
2. ``threshold`` (25 / 255): raising it drops the dark pixels of an item from its silhouette, so the
   background's share of the pixels grows (and thin, dark items may vanish altogether).
"""

import torch
from stage_common import repo_root

from g2sd_lib import fmnist
from g2sd_lib.dense.canvases import make_canvases


def hidden(c) -> int:
    """Canvases with an item that no box shows (items pasted > visible boxes)."""
    items = c["instances"].flatten(1).amax(1)
    return int((items > torch.tensor([len(b) for b in c["boxes"]])).sum())


def main():
    images, labels = fmnist.load_fashion_mnist("test", repo_root() / "data" / "fashion-mnist")
    images, labels = images[:1000], labels[:1000]
    counts = {k: hidden(make_canvases(images, labels, 200, size=56, max_items=k)) for k in (1, 4, 8)}
    print("1. canvases (of 200) with a hidden item, per max_items:", counts)
    assert counts[1] == 0 and counts[8] > 0 and counts[8] >= counts[4]

    share = {t: float((make_canvases(images, labels, 100, size=56, threshold=t)["masks"] == 0).double().mean())
             for t in (25, 100)}
    print("2. background share of the pixels, per threshold:", {t: round(s, 3) for t, s in share.items()})
    assert 0.74 < share[25] < 0.78 and share[100] > share[25] + 0.03  # the default threshold, then a clear rise
    print("stage 06 solutions: OK")


if __name__ == "__main__":
    main()
