"""Images per second of one SmoothMix training step: smoothmix vs the reference step.

The workload is the MNIST / LeNet recipe at sigma = 0.5 (docs/MATH.md §3.6): m = 4 noise draws,
T = 4 search steps of length 1.0, 64 images x 4 noise copies per optimiser step, SGD
(lr 0.01, momentum 0.9, weight decay 1e-4). Both contestants start from the same weights,
see the same batches and run on the same machine in one process; their timed rounds are
interleaved so that load from other processes hits both alike.

* ``reference``: a straightforward transcription of the public SmoothMix training step
  (``code/train.py`` of jh-jeong/smoothmix): a Python loop over the m noise draws with one
  forward of 64 images each in every search step, the two loss forwards on the
  concatenated copies, and ``loss.item()`` after every step.
* ``smoothmix``: :class:`smoothmix.methods.smoothmix.SmoothMix` -- all m*64 noisy copies in one
  forward per search step, the x0 and x_mix copies in one joint forward, no host sync.
* ``smoothmix --cuda-graphs`` (CUDA only): the same step captured as a CUDA graph and
  replayed per batch (:mod:`smoothmix.training.graphs`; its warm-up steps are untimed).
* ``--compile``: also the smoothmix step on the model wrapped in ``torch.compile`` (inductor;
  as ``smoothmix train --compile`` wraps it), in fp32 and in bf16; compilation happens in the
  untimed warm-up steps.
* ``smoothmix (train default)``: the same step on the model in channels_last memory format,
  which ``smoothmix train`` uses for image models unless ``--no-channels-last``; that variant
  is shown too, and, for a fair reading, the reference
  step on that model too.

``--arch cifar_resnet110`` times the CIFAR-10 recipe at sigma = 0.5 instead (m = 2, T = 4,
step 1.0, eta 5, 128 images x 2 copies per step, lr 0.1) on random weights, images and labels
(fine for speed; batch norm makes the loss forwards separate, as in the reference).

Usage: ``python benchmarks/train_throughput.py [--steps 40] [--threads N] [--device cpu]
[--arch lenet|cifar_resnet110] [--batch B] [--compile] [--precision fp32,bf16]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from smoothmix.data import load_dataset
from smoothmix.device import resolve_device
from smoothmix.execution import PRECISIONS, describe_cpu
from smoothmix.methods import create_method
from smoothmix.models import create_model, model_defaults
from smoothmix.training.graphs import StepGraph

# The published recipes at sigma = 0.5 (docs/MATH.md §3.6): m, T, alpha, eta, images per step, lr.
RECIPES = {
    "lenet": dict(m=4, T=4, alpha=1.0, eta=5.0, batch=64, lr=0.01),
    "cifar_resnet110": dict(m=2, T=4, alpha=1.0, eta=5.0, batch=128, lr=0.1),
}
SIGMA, K = 0.5, 10
# Set from the chosen recipe in main() (the reference step reads them as its globals).
M, T, ALPHA, ETA, BATCH = 4, 4, 1.0, 5.0, 64


# ---- the reference step, transcribed (kept deliberately unoptimised) -------------------
def _requires_grad_(model, flag):
    for p in model.parameters():
        p.requires_grad_(flag)


def _reference_attack(model, inputs, labels, noises, steps, alpha):
    if inputs.min() < 0 or inputs.max() > 1:
        raise ValueError("Input values should be in the [0, 1] range.")

    def _batch_l2norm(x):
        return torch.norm(x.reshape(x.size(0), -1), dim=1)

    adv = inputs.detach()
    init = inputs.detach()
    for i in range(steps):
        if i == 0:  # mix_step = 0
            init = adv.detach()
        adv.requires_grad_()
        softmax = [F.softmax(model(adv + noise), dim=1) for noise in noises]
        avg_softmax = sum(softmax) / len(noises)
        logsoftmax = torch.log(avg_softmax.clamp(min=1e-20))
        loss = F.nll_loss(logsoftmax, labels, reduction="sum")
        grad = torch.autograd.grad(loss, [adv])[0]
        grad = grad / (_batch_l2norm(grad).view(-1, 1, 1, 1) + 1e-8)
        adv = torch.clamp(adv + alpha * grad, 0, 1).detach()
    return init, adv


def reference_step(model, optimizer, inputs, targets, warmup_v):
    noises = [torch.randn_like(inputs) * SIGMA for _ in range(M)]
    _requires_grad_(model, False)
    model.eval()
    inputs, inputs_adv = _reference_attack(model, inputs, targets, noises, T, ALPHA)
    model.train()
    _requires_grad_(model, True)

    logits_c = model(torch.cat([inputs + noise for noise in noises], dim=0))
    targets_c = targets.repeat(M)
    clean_avg_sm = sum(F.softmax(c, dim=1) for c in torch.chunk(logits_c, M, dim=0)) / M
    loss_xent = F.cross_entropy(logits_c, targets_c, reduction="none")

    _eye = torch.eye(K, device=inputs.device)
    _unif = _eye.mean(0, keepdim=True)
    lam = torch.rand(inputs.size(0), device=inputs.device) / 2
    in_mix = (1 - lam).view(-1, 1, 1, 1) * inputs + lam.view(-1, 1, 1, 1) * inputs_adv
    targets_mix = (1 - lam).view(-1, 1) * clean_avg_sm + lam.view(-1, 1) * _unif

    logits_mix_c = F.log_softmax(model(torch.cat([in_mix + n for n in noises], dim=0)), dim=1)
    ind_correct = (torch.topk(clean_avg_sm, 1)[1][:, 0] == targets).float().repeat(M)
    loss_mixup = F.kl_div(logits_mix_c, targets_mix.repeat(M, 1), reduction="none").sum(1)
    loss = loss_xent.mean() + ETA * warmup_v * (ind_correct * loss_mixup).mean()
    loss_value = loss.item()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss_value


# ---- ours ---------------------------------------------------------------------------
def smoothmix_step(method, model, optimizer, inputs, targets, epoch):
    out = method(model, inputs, targets, epoch)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out.metrics["loss"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CONTESTANTS = {
    # name: (step function, channels_last model); "bf16" steps run under bf16 autocast
    "reference": ("reference", False),
    "smoothmix (train default)": ("smoothmix", True),
    "smoothmix --precision bf16": ("bf16", True),
    "smoothmix --no-channels-last": ("smoothmix", False),
    "reference + channels_last": ("reference", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per contestant")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contestant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--arch", default="lenet", choices=sorted(RECIPES),
                        help="lenet: MNIST recipe on real MNIST; cifar_resnet110: CIFAR-10 "
                        "recipe on random weights and inputs")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default: the recipe's, 64 / 128)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the smoothmix step on a torch.compile'd model (fp32, bf16)")
    parser.add_argument("--precision", default="fp32,bf16",
                        help="comma-separated precisions to time smoothmix in (fp32 always: "
                        "the ratios are to it)")
    args = parser.parse_args()
    precisions = set(args.precision.split(","))
    if not precisions <= set(PRECISIONS):
        parser.error(f"--precision takes {' and '.join(PRECISIONS)}, not {args.precision}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    global M, T, ALPHA, ETA, BATCH
    recipe = RECIPES[args.arch]
    M, T, ALPHA, ETA = recipe["m"], recipe["T"], recipe["alpha"], recipe["eta"]
    BATCH = args.batch or recipe["batch"]
    torch.manual_seed(0)

    n_batches = args.warmup + args.steps
    if args.arch == "lenet":
        data = load_dataset("mnist", "train")
        images = data.images[: n_batches * BATCH].to(device).float().div_(255)
        labels = data.labels[: n_batches * BATCH].to(device)
    else:  # random images and labels: the step's cost does not depend on them
        shape = model_defaults(args.arch).input_shape
        images = torch.rand((n_batches * BATCH, *shape), device=device)
        labels = torch.randint(0, K, (n_batches * BATCH,), device=device)
    batches = list(zip(images.split(BATCH), labels.split(BATCH), strict=True))

    init = create_model(args.arch).state_dict()
    models, optimizers = {}, {}
    if device.type == "cuda":  # the replayable step (--cuda-graphs): CUDA only
        CONTESTANTS["smoothmix --cuda-graphs"] = ("graphs", True)
    compiled = ("smoothmix --compile", "smoothmix --compile bf16") if args.compile else ()
    if args.compile:
        CONTESTANTS[compiled[0]] = ("smoothmix", True)
        CONTESTANTS[compiled[1]] = ("bf16", True)
    if "bf16" not in precisions:  # e.g. a CPU without bf16 hardware, where it is emulated
        for name in [n for n, (kind, _) in CONTESTANTS.items() if kind == "bf16"]:
            del CONTESTANTS[name]
    for name, (kind, channels_last) in CONTESTANTS.items():
        model = create_model(args.arch).to(device)
        model.load_state_dict(init)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = model.train()
        # As `smoothmix train`: the fused SGD kernel on CUDA; the reference's plain SGD.
        fused = {"fused": True} if kind != "reference" and device.type == "cuda" else {}
        optimizers[name] = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=0.9,
                                           weight_decay=1e-4, **fused)
    method = create_method("smoothmix", SIGMA, K, num_noise=M, num_steps=T, step_size=ALPHA,
                           eta=ETA)
    epoch = 9  # warm-up weight 1, as in most of training
    # The optimiser holds the raw model's parameters; the compiled wrapper shares them.
    steppers = {name: torch.compile(model) if name in compiled else model
                for name, model in models.items()}
    graphs = {name: StepGraph(models[name], method, optimizers[name])
              for name, (kind, _) in CONTESTANTS.items() if kind == "graphs"}

    def run(name, batch):
        x, y = batch
        if CONTESTANTS[name][1]:
            x = x.contiguous(memory_format=torch.channels_last)
        if CONTESTANTS[name][0] == "reference":
            return reference_step(models[name], optimizers[name], x, y, 1.0)
        if CONTESTANTS[name][0] == "graphs":
            return graphs[name].step(x, y, {}, epoch)[0][0]
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=CONTESTANTS[name][0] == "bf16"):
            return smoothmix_step(method, steppers[name], optimizers[name], x, y, epoch)

    for name in models:
        for batch in batches[: args.warmup]:
            run(name, batch)
    _sync(device)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # Rounds interleave the contestants so that load from other processes hits all alike;
    # the median step time discards the steps that such load stretched.
    wall = {name: [] for name in models}
    cpu = {name: 0.0 for name in models}
    timed = batches[args.warmup :]
    per_round = -(-len(timed) // args.rounds)
    for r in range(args.rounds):
        chunk = timed[r * per_round : (r + 1) * per_round]
        for name in models:
            cpu_start = time.process_time()
            for batch in chunk:
                start = time.perf_counter()
                run(name, batch)
                _sync(device)
                wall[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - cpu_start

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{describe_cpu()}, {torch.get_num_threads()} threads")
    workload = "MNIST LeNet" if args.arch == "lenet" else f"{args.arch} (random weights/data)"
    print(f"SmoothMix training step, {workload}, sigma={SIGMA}, m={M}, T={T}, "
          f"{BATCH} images x {M} noise copies per step, SGD; {len(timed)} timed steps each; "
          f"device {device} ({where}); torch {torch.__version__}")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  1-minute load average {load_before:.2f} before, {load_after:.2f} after the timed "
          f"steps (other processes on these cores slow both contestants, unevenly)")
    median = {name: statistics.median(times) for name, times in wall.items()}
    base, fp32 = median["reference"], median["smoothmix (train default)"]
    print(f"  {'contestant':28s} {'images/s':>9s} {'median ms/step':>15s} {'CPU ms/step':>12s} "
          f"{'vs reference':>13s} {'vs smoothmix fp32':>18s}")
    for name in models:
        print(f"  {name:28s} {BATCH / median[name]:9.1f} {1000 * median[name]:15.1f} "
              f"{1000 * cpu[name] / len(timed):12.1f} {base / median[name]:12.2f}x "
              f"{fp32 / median[name]:17.2f}x")
    if "bf16" in precisions:
        print("  goals on a CPU with AMX: bf16 >= 2x smoothmix fp32 and >= 3x the reference "
              "(reported without a goal on AVX-512-BF16-only CPUs)")


if __name__ == "__main__":
    main()
