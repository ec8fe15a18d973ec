"""Notebook 08, exercises 1-2: what the dense metrics reward.

1. Pixel accuracy vs mIoU: a "model" that predicts background everywhere gets the background's
   pixel share as pixel accuracy (most of the canvas) but a small mIoU: every class that occurs
   counts once, and the item classes all score IoU 0.
2. Box AP vs a score threshold: AP only ranks the detections, so scaling every score by 0.1 (all
   below 0.5) leaves AP unchanged, while a fixed 0.5 threshold would keep nothing; this is why
   notebook 08 shows each model's k best detections. A right class at the wrong place does not
   count: boxes shifted by half their width overlap their items by IoU 1/3, below AP50's 0.5, and
   AP50 and AP collapse to about 0.
"""

import torch
from stage_common import repo_root

from g2sd_lib import fmnist
from g2sd_lib.dense.canvases import make_canvases
from g2sd_lib.dense.metrics import box_ap, mean_iou


def main():
    images, labels = fmnist.load_fashion_mnist("test", repo_root() / "data" / "fashion-mnist")
    c = make_canvases(images[:1000], labels[:1000], 50, size=56)
    masks = c["masks"]
    pixel_acc = float((masks == 0).double().mean())
    miou = mean_iou(torch.zeros_like(masks), masks, 11)
    print(f"1. all-background prediction: pixel accuracy {pixel_acc:.3f}, mIoU {miou:.3f}")
    assert 0.7 < pixel_acc < 0.85 and miou < 0.1  # most of the canvas, and a small mIoU

    targets = [{"boxes": b, "labels": l} for b, l in zip(c["boxes"], c["labels"])]
    exact = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.full((len(t["boxes"]),), 0.9)}
             for t in targets]
    timid = [{**p, "scores": 0.1 * p["scores"]} for p in exact]
    shifted = []
    for p in exact:
        boxes = p["boxes"].clone()
        width = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += width[:, None] / 2
        shifted.append({**p, "boxes": boxes})
    ap = {name: box_ap(pred, targets) for name, pred in (("exact", exact), ("scores x 0.1", timid),
                                                          ("shifted by half a width", shifted))}
    for name, a in ap.items():
        print(f"2. {name}: AP {a['AP']:.3f}, AP50 {a['AP50']:.3f}")
    assert ap["exact"]["AP"] == ap["scores x 0.1"]["AP"] and max(float(p["scores"].max()) for p in timid) < 0.5
    assert ap["shifted by half a width"]["AP50"] < 0.02 and ap["shifted by half a width"]["AP"] < 0.02  # "about 0"
    print("stage 08 solutions: OK")


if __name__ == "__main__":
    main()
