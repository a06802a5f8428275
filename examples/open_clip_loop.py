"""ARF's objective in a plain open_clip training loop of your own (not `arf train`).

What the loss needs from your loop: each step's task images with their class prompts, and a batch of retrieved
anchors (image, text) from `arf retrieve` (and, for caption anchors, each task image's caption from `arf caption`).
Everything else (model, data, optimiser, schedule, DDP) stays yours. `arf train --config configs/paper/arf.yaml`
is the full recipe (warmup, frozen blocks, exact resume, torchrun); this file shows the one piece you need to
put ARF into another codebase:

    python examples/open_clip_loop.py --model ViT-B-16 --pretrained openai --train /data/imagenet/train \
        --anchors ~/.cache/arf/data/cc3m-emb/anchors/imagenet-text2image-k100 --steps 1000 --out runs/mine

``--train`` is a folder of class folders (listed as torchvision's ImageFolder lists them); class names are the
folder names with underscores as spaces. Unreadable images, task or anchor, are counted and skipped; the run stops
with an error naming them when more than 5% of either are bad. The finetuned weights go to
``<out>/open_clip_model.safetensors``; open_clip loads them back with
``open_clip.create_model_and_transforms(<model>, pretrained="<out>/open_clip_model.safetensors")``, and ARF's
evaluation as ``arf eval --model openclip:<model>@<out>/open_clip_model.safetensors --suite …`` (or ``arf wise``).
"""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, RandomSampler
from torchvision.datasets import ImageFolder

from arf.data.loader import ImageDataset, skip_collate
from arf.images import BadInputCounter
from arf.train.data import AnchorImages, read_anchors
from arf.train.losses import ArfLoss

log = logging.getLogger("open_clip_loop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an open_clip model name, or local-dir:<folder>")
    p.add_argument("--pretrained", default=None, help="an open_clip pretrained tag or weights file")
    p.add_argument("--train", required=True, help="a folder of class folders")
    p.add_argument("--anchors", required=True, help="the output folder (or parquet) of `arf retrieve`")
    p.add_argument("--anchor-root", default=None, help="folder the anchor paths are relative to")
    p.add_argument("--template", default="a photo of a {}.")
    p.add_argument("--lambda-ret", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--anchor-batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained)
    tokenizer = open_clip.get_tokenizer(args.model)
    folder = ImageFolder(args.train)  # only lists the files; ImageDataset opens them, counting unreadable ones
    classnames = [c.replace("_", " ") for c in folder.classes]
    task = ImageDataset([p for p, _ in folder.samples], [y for _, y in folder.samples], transform=preprocess_train,
                        counter=BadInputCounter(f"task images {args.train}"))
    anchors = read_anchors(args.anchors, args.anchor_root)
    anchor_set = AnchorImages(anchors.paths, transform=preprocess_train,
                              counter=BadInputCounter(f"anchor images {args.anchors}"))
    # Anchors are drawn independently of the task batch (with replacement: a pool smaller than the run is fine).
    anchor_loader = DataLoader(anchor_set, batch_size=args.anchor_batch_size, collate_fn=skip_collate,
                               sampler=RandomSampler(anchor_set, replacement=True, num_samples=1 << 62))
    task_loader = DataLoader(task, batch_size=args.batch_size, shuffle=True, drop_last=True,
                             collate_fn=skip_collate)

    loss_fn = ArfLoss(lambda_ret=args.lambda_ret)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    model.train()
    logged: dict[str, float] = {}
    # range first: after the last step zip stops before drawing another batch; the two streams never run out.
    for step, (images, labels, _), (a_images, _, a_idx) in zip(range(args.steps), _readable(task_loader),
                                                                _readable(anchor_loader), strict=False):
        prompts = [args.template.format(classnames[y]) for y in labels.tolist()]
        a_texts = [anchors.texts[i] for i in a_idx.tolist()]
        # One forward for both image batches and one for all texts, as arf train does.
        img = model.encode_image(torch.cat([images, a_images]), normalize=True)
        txt = model.encode_text(tokenizer(prompts + a_texts), normalize=True)
        n = images.shape[0]
        losses = loss_fn(img[:n], txt[:n], model.logit_scale.exp(), labels,
                         anchor_image_features=img[n:], anchor_text_features=txt[n:], anchor_texts=a_texts,
                         output_dict=True)
        total = sum(losses.values())  # the weighted terms: {"clip_loss", "anchor_loss"}
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        logged = {k: float(v.detach()) for k, v in losses.items()} | {"loss": float(total.detach())}
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in logged.items()))
    task.counter.check()
    anchor_set.counter.check()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return logged


def _readable(loader: DataLoader) -> Iterator[tuple[torch.Tensor, ...]]:
    """The loader's batches, epoch after epoch, without the all-unreadable ones (``skip_collate`` gives None). A
    stream of nothing but bad images does not spin: each skip checks the dataset's counter, which raises once more
    than half of what it saw was bad (and ``counter.check()`` at the end holds the whole run to 5%)."""
    for batch in itertools.chain.from_iterable(itertools.repeat(loader)):
        if batch is not None:
            yield batch


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
