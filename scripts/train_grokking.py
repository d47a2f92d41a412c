"""Train the grokking model: a one-layer transformer on a + b mod 113, until it generalises.

    OMP_NUM_THREADS=1 python scripts/train_grokking.py --out models/grokking_113

Setup of Nanda et al. (2023): 30% of the 113² pairs for training, full-batch AdamW (betas 0.9/0.98, 10
warm-up steps), d_model 128, 4 heads, d_mlp 512, no LayerNorm — with lr 2e-3 and weight decay 4.0 instead
of the paper's 1e-3 and 1.0 (the defaults here, which made models/grokking_113): the paper's settings need
~10k steps to generalise, these ~1k, so the model trains on two CPU cores in minutes. The model first
memorises the training pairs (train loss → 0, test loss up), then, pushed by weight decay, forms the Fourier
circuit and the test loss falls: the grokking curve. Training stops ``--margin`` steps after test accuracy
first passes ``--stop-acc`` (the margin lets weight decay clean up the memorising components).

Writes to ``--out``: ``model.safetensors`` + ``config.json`` (a Hugging Face folder that
``probes.load_model`` reads), the tokenizer, ``curves.json`` (train/test loss and accuracy per logged step),
``training.json`` (settings, steps, wall time, final numbers); the curves plot to ``--plot``; and the run to
MLflow (a local sqlite store ``--out/mlflow.db`` unless ``--tracking-uri`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from probes.models import grokking


def pairs(p: int, frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs ``[a, b, =]`` and labels ``(a + b) % p`` for a seeded train / test split of all pairs."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = (a + b) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = round(frac * p * p)
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def last_logits(model: nn.Module, x: torch.Tensor, p: int) -> torch.Tensor:
    """Logits over the ``p`` answers at the ``=`` position, computing the MLP and unembedding there only.

    In a one-layer model nothing downstream reads the other positions' MLP outputs, so this equals the full
    forward's last position (checked after training) at a third of the MLP's cost.
    """
    base = model.model
    block = base.layers[0]
    positions = torch.arange(x.shape[1])
    resid = base.embed_tokens(x) + base.embed_positions(positions)[None]
    b, t, d = resid.shape
    h = block.n_heads
    q = block.q_proj(resid[:, -1:]).view(b, 1, h, d // h).transpose(1, 2)
    k = block.k_proj(resid).view(b, t, h, d // h).transpose(1, 2)
    v = block.v_proj(resid).view(b, t, h, d // h).transpose(1, 2)
    attn = (q @ k.transpose(-1, -2) / (d // h) ** 0.5).softmax(-1) @ v  # the last position sees all
    last = resid[:, -1] + block.o_proj(attn.reshape(b, d))
    last = last + block.mlp_out(torch.relu(block.mlp_in(last)))
    return model.lm_head(last)[:, :p]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/grokking_113"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/grokking_curves.png"))
    parser.add_argument("--modulus", type=int, default=113)
    parser.add_argument("--train-frac", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=4.0)
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--stop-acc", type=float, default=0.99)
    parser.add_argument("--margin", type=int, default=300, help="steps to keep training after --stop-acc")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///OUT/mlflow.db")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    p = args.modulus
    x_tr, y_tr, x_te, y_te = pairs(p, args.train_frac, args.seed)
    model = grokking.build(modulus=p, vocab_size=p + 2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 10, 1.0))
    loss_fn = nn.functional.cross_entropy

    curves: dict[str, list[float]] = {
        "step": [],
        "train_loss": [],
        "test_loss": [],
        "train_acc": [],
        "test_acc": [],
    }
    start = time.perf_counter()
    passed_at: int | None = None
    step = 0
    for step in range(1, args.max_steps + 1):
        logits = last_logits(model, x_tr, p)
        loss = loss_fn(logits, y_tr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == 1:
            with torch.no_grad():
                test_logits = last_logits(model, x_te, p)
                test_loss = loss_fn(test_logits, y_te).item()
                test_acc = (test_logits.argmax(-1) == y_te).float().mean().item()
                train_acc = (logits.argmax(-1) == y_tr).float().mean().item()
            for key, value in zip(curves, (step, loss.item(), test_loss, train_acc, test_acc), strict=True):
                curves[key].append(value)
            elapsed = time.perf_counter() - start
            print(
                f"step {step:6d}  train {loss.item():.4f} ({train_acc:.3f})  test {test_loss:.4f} "
                f"({test_acc:.3f})  {elapsed:.0f}s",
                flush=True,
            )
            if passed_at is None and test_acc > args.stop_acc:
                passed_at = step
            if passed_at is not None and step >= passed_at + args.margin:
                break
    wall = time.perf_counter() - start
    model.eval()

    with torch.no_grad():  # the shortcut used for training equals the model's own forward
        full = model(input_ids=x_te[:512]).logits[:, -1, :p]
        shortcut = last_logits(model, x_te[:512], p)
        if not torch.allclose(full, shortcut, atol=1e-5):
            raise RuntimeError("last_logits differs from the model's forward: the training shortcut is wrong")
        test_logits = model(input_ids=x_te).logits[:, -1, :p]
        final = {
            "test_loss": loss_fn(test_logits, y_te).item(),
            "test_acc": (test_logits.argmax(-1) == y_te).float().mean().item(),
            "train_loss": loss_fn(model(input_ids=x_tr).logits[:, -1, :p], y_tr).item(),
        }

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    grokking.make_tokenizer(p).save_pretrained(args.out)
    (args.out / "curves.json").write_text(json.dumps(curves) + "\n")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = {
        "settings": settings,
        "steps": step,
        "test_acc_passed_at_step": passed_at,
        "wall_time_s": round(wall, 1),
        "torch_threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "final": final,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))

    plot_curves(curves, passed_at, args.plot)
    if not args.no_mlflow:
        log_mlflow(args, curves, record)


def plot_curves(curves: dict[str, list[float]], passed_at: int | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(curves["step"], curves["train_loss"], label="train loss")
    ax.plot(curves["step"], curves["test_loss"], label="test loss")
    if passed_at is not None:
        ax.axvline(passed_at, color="grey", ls=":", label="test acc > 99%")
    ax.set_yscale("log")
    ax.set_xlabel("step (full batch)")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Grokking a + b mod 113 (30% of pairs for training)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_mlflow(args: argparse.Namespace, curves: dict[str, list[float]], record: dict) -> None:
    import mlflow

    uri = args.tracking_uri or f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("grokking")
    with mlflow.start_run(run_name=f"mod{args.modulus}-seed{args.seed}"):
        mlflow.log_params({k: v for k, v in record["settings"].items() if k not in ("tracking_uri",)})
        for i, step in enumerate(curves["step"]):
            mlflow.log_metrics({k: curves[k][i] for k in curves if k != "step"}, step=int(step))
        mlflow.log_metrics({"wall_time_s": record["wall_time_s"], "steps": record["steps"]})
        mlflow.log_artifact(str(args.out / "training.json"))
        mlflow.log_artifact(str(args.out / "curves.json"))
    print(f"logged to MLflow at {uri}")


if __name__ == "__main__":
    main()
