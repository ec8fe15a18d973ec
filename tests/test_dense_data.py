"""The dense canvases: determinism, masks / boxes consistency, occlusion, loaders."""

import torch

from g2sd_lib.dense import DenseLoader, dense_subset, load_dense, make_canvases, save_dense


def _items(m=12, seed=0):
    """Synthetic 28 x 28 "items": a bright random rectangle (values 100..255) on black."""
    g = torch.Generator().manual_seed(seed)
    items = torch.zeros(m, 1, 28, 28, dtype=torch.uint8)
    for i in range(m):
        h, w = torch.randint(6, 29, (2,), generator=g).tolist()
        t, l = torch.randint(0, 29 - h, (1,), generator=g).item(), torch.randint(0, 29 - w, (1,), generator=g).item()
        items[i, 0, t:t + h, l:l + w] = torch.randint(100, 256, (h, w), generator=g, dtype=torch.uint8)
    return items, torch.arange(m) % 10


def test_same_seed_same_bytes_and_shapes():
    items, labels = _items()
    a = make_canvases(items, labels, 16, size=64, seed=3)
    b = make_canvases(items, labels, 16, size=64, seed=3)
    c = make_canvases(items, labels, 16, size=64, seed=4)
    assert a["images"].shape == (16, 1, 64, 64) and a["images"].dtype == torch.uint8
    assert a["masks"].shape == (16, 64, 64) and a["masks"].dtype == torch.int64
    for k in ("images", "masks", "instances"):
        assert torch.equal(a[k], b[k])
    assert all(torch.equal(x, y) for x, y in zip(a["boxes"] + a["labels"], b["boxes"] + b["labels"]))
    assert not torch.equal(a["images"], c["images"])
    assert int(a["masks"].max()) <= 10 and len(a["boxes"]) == 16
    for boxes, lab in zip(a["boxes"], a["labels"]):
        assert 1 <= len(boxes) <= 4 and boxes.shape == (len(lab), 4) and boxes.dtype == torch.float32
        assert ((lab >= 1) & (lab <= 10)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes >= 0).all() and (boxes <= 64).all()


def test_masks_and_boxes_agree():
    items, labels = _items()
    d = make_canvases(items, labels, 24, size=64, max_items=4, seed=1)
    for i in range(24):
        masks, inst = d["masks"][i], d["instances"][i]
        visible = [j for j in range(1, 5) if (inst == j).any()]
        assert len(visible) == len(d["boxes"][i])  # one box per item with a visible pixel
        for j, box, lab in zip(visible, d["boxes"][i].long(), d["labels"][i]):
            region = masks[box[1]:box[3], box[0]:box[2]]
            assert (region == lab).any()
            ys, xs = (inst == j).nonzero(as_tuple=True)  # the box is tight around the visible pixels
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert (masks[inst == j] == lab).all()
        assert ((masks > 0) == (inst > 0)).all()
        assert (d["images"][i, 0][masks > 0] > 25).all()


def test_later_items_occlude_earlier_ones():
    full = torch.full((5, 1, 28, 28), 200, dtype=torch.uint8)  # items covering the whole canvas
    d = make_canvases(full, torch.arange(5), 10, size=28, max_items=4, seed=0)
    for boxes, lab, masks in zip(d["boxes"], d["labels"], d["masks"]):
        assert boxes.tolist() == [[0.0, 0.0, 28.0, 28.0]]  # only the last item is seen
        assert (masks == lab[0]).all()


def test_save_load_roundtrip_and_subset(tmp_path):
    items, labels = _items()
    d = make_canvases(items, labels, 6, size=32, seed=0)
    save_dense(tmp_path / "d.pt", d)
    e = load_dense(tmp_path / "d.pt")
    assert torch.equal(d["images"], e["images"]) and all(torch.equal(x, y) for x, y in zip(d["boxes"], e["boxes"]))
    s = dense_subset(d, [4, 1])
    assert torch.equal(s["masks"][0], d["masks"][4]) and torch.equal(s["boxes"][1], d["boxes"][1])


def test_loaders_normalise_flip_and_shard():
    items, labels = _items()
    d = make_canvases(items, labels, 10, size=64, seed=2)
    x, masks = next(iter(DenseLoader(d, "segmentation", 4, shuffle=False)))
    assert x.shape == (4, 1, 64, 64) and x.dtype == torch.float32 and masks.shape == (4, 64, 64)
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor((0 - 0.2860) / 0.3530))
    loader = DenseLoader(d, "detection", 5, shuffle=True, flip=True, seed=0)
    seen = 0
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, targets in loader:
            assert isinstance(targets, list) and len(targets) == len(x)
            for t in targets:
                assert t["boxes"].shape[1] == 4 and t["labels"].dtype == torch.int64
            seen += len(x)
    assert seen == 30
    # flips keep boxes and masks consistent: each box region holds its class in the flipped mask
    seg = DenseLoader(d, "segmentation", 10, shuffle=False, flip=True, seed=5)
    det = DenseLoader(d, "detection", 10, shuffle=False, flip=True, seed=5)
    (x1, m), (x2, targets) = next(iter(seg)), next(iter(det))
    assert torch.equal(x1, x2) and not torch.equal(m, d["masks"])
    for mask, t in zip(m, targets):
        for box, lab in zip(t["boxes"].long(), t["labels"]):
            assert (mask[box[1]:box[3], box[0]:box[2]] == lab).any()
    shards = [DenseLoader(d, "segmentation", 2, True, rank=r, world_size=2).indices() for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
