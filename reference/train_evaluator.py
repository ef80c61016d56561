"""Train the world evaluator (our CLIP/DINO stand-in) and export it to ``reference/.work/evaluator.onnx``.

A small CNN over 32x32 world images with one classification head per attribute (shape, color,
background, style, size) and a 128-d feature vector (the penultimate layer, L2-normalized by
``reference/evaluator.py``). Trained on freshly rendered, seeded world images with mild
degradations (blur, noise, contrast/brightness jitter) so that it also reads generated images; the
held-out accuracy on clean renders of a separate seed is printed and stored in
``reference/evaluator.json``.

Command used for the committed evaluator (2 CPU cores shared with other jobs, 1 thread; 15 min incl. rendering):

    nice -n 5 .venv/bin/python reference/train_evaluator.py --threads 1 --out reference/evaluator.onnx --overwrite
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO, check_new_output  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402
from reference import world  # noqa: E402

from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.paths import atomic_write_bytes, check_output_file  # noqa: E402
from zoodip.validation import finite_float  # noqa: E402

FEATURE_DIM = 128


class EvaluatorNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[torch.nn.Module]:
            return [torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]

        self.body = torch.nn.Sequential(
            *block(3, 24, 1), *block(24, 32, 2),  # 16x16
            *block(32, 48, 1), *block(48, 64, 2),  # 8x8
            *block(64, 96, 1), *block(96, 128, 2),  # 4x4
        )
        self.fc = torch.nn.Linear(256, FEATURE_DIM)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(FEATURE_DIM, len(world.ATTRIBUTES[a]))
                                         for a in world.ATTRIBUTE_NAMES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images: float [N,3,32,32] in [0,1] -> (features [N,128], logits per attribute ...)."""
        h = self.body(images * 2 - 1)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], 1)
        features = F.relu(self.fc(h))
        return (features, *(head(features) for head in self.heads))


def render_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((n, world.RESOLUTION, world.RESOLUTION, 3), np.uint8)
    codes = np.empty((n, len(world.ATTRIBUTE_NAMES)), np.int64)
    for i, (image, _, attrs) in enumerate(tqdm(world.dataset(n, seed), total=n, desc=f"render {seed}", mininterval=10)):
        images[i] = np.asarray(image)
        codes[i] = [world.ATTRIBUTES[a].index(getattr(attrs, a)) for a in world.ATTRIBUTE_NAMES]
    return images, codes


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild, random degradations: blur (half the images), noise, brightness/contrast jitter."""
    n = x.shape[0]
    kernel = torch.tensor([0.25, 0.5, 0.25])
    k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    amount = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float() * torch.rand(n, 1, 1, 1, generator=gen)
    x = x + amount * (blurred - x)
    scale = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1)
    shift = 0.05 * (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1)
    x = (x - 0.5) * scale + 0.5 + shift
    x = x + torch.randn(x.shape, generator=gen) * 0.03 * torch.rand(n, 1, 1, 1, generator=gen)
    return x.clamp(0, 1)


def to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def accuracy(net: EvaluatorNet, images: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    net.eval()
    correct = np.zeros(len(world.ATTRIBUTE_NAMES))
    for i in range(0, len(images), 500):
        out = net(to_input(images[i : i + 500]))[1:]
        for j, logits in enumerate(out):
            correct[j] += (logits.argmax(1).numpy() == codes[i : i + 500, j]).sum()
    return {a: float(c / len(images)) for a, c in zip(world.ATTRIBUTE_NAMES, correct)}


@script_main("--out was not written (an existing one is kept as it was)")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python reference/train_evaluator.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "reference" / ".work" / "evaluator.onnx",
                   help="the evaluator, its record beside it as .json (existing ones are replaced only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (e.g. reference/evaluator.onnx)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=40000)
    p.add_argument("--n-test", type=int, default=3000)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    try:
        args = p.parse_args(argv)
        if min(args.threads, args.n_train, args.n_test, args.steps, args.batch) < 1:
            p.error("--threads, --n-train, --n-test, --steps and --batch must be at least 1")
        finite_float("--lr", args.lr, low=0.0)
        check_output_file(args.out, "--out", (".onnx",))
        for path in (args.out, args.out.with_suffix(".json")):  # the model and its record: neither replaced unasked
            check_new_output(path, "--out", args.overwrite, is_file=True)
    except ZoodipError as exc:
        return print_error(exc)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.monotonic()
    train_images, train_codes = render_set(args.n_train, 1000 + args.seed)
    test_images, test_codes = render_set(args.n_test, 2000 + args.seed)
    net = EvaluatorNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    bar = tqdm(range(args.steps), desc="evaluator", mininterval=10)
    running = None
    for _ in bar:
        net.train()
        idx = rng.integers(len(train_images), size=args.batch)
        x = degrade(to_input(train_images[idx]), gen)
        y = torch.from_numpy(train_codes[idx])
        out = net(x)[1:]
        loss = sum(F.cross_entropy(logits, y[:, j]) for j, logits in enumerate(out))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    acc = accuracy(net, test_images, test_codes)
    print("held-out accuracy (clean renders):", json.dumps(acc), flush=True)

    net.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)  # (the default, reference/.work/, is not in a fresh clone)
    # Written whole (temp file, rename): a Ctrl-C or a full disk during the export left OUT.onnx.tmp behind.
    with torch.no_grad():
        atomic_write_bytes(args.out, lambda handle: torch.onnx.export(
            net, (torch.rand(2, 3, world.RESOLUTION, world.RESOLUTION),), handle,
            input_names=["images"], output_names=["features", *world.ATTRIBUTE_NAMES],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"},
                          **{a: {0: "batch"} for a in world.ATTRIBUTE_NAMES}},
            opset_version=17, do_constant_folding=True, dynamo=False), then="train it again")
    meta = {"resolution": world.RESOLUTION, "attributes": {a: list(world.ATTRIBUTES[a]) for a in world.ATTRIBUTE_NAMES},
            "feature_dim": FEATURE_DIM, "held_out_accuracy": acc, "n_train": args.n_train, "n_test": args.n_test,
            "steps": args.steps, "batch": args.batch, "seconds": round(time.monotonic() - started, 1)}
    record = (json.dumps(meta, indent=2) + "\n").encode("utf-8")
    atomic_write_bytes(args.out.with_suffix(".json"), lambda handle: handle.write(record), then="train it again")
    print(json.dumps(meta), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
