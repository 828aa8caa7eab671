"""Does oversubscribing the cores inflate the CPU seconds of training? (issue 27, item 7)

The demo once took 62 minutes on 2 cores shared with another job, against about 6 on idle
cores: 3.3x the CPU seconds of an idle run, not just twice the wall time. A likely cause is
OpenMP's busy-waiting: a torch process whose threads outnumber the cores it actually gets
spins while it waits for its other threads, burning CPU time that does no work.

This runs the demo's SmoothMix training step (its preset, batch and warm-up:
``smoothmix.demo.probe``'s step) ``--steps`` times in worker processes, in four set-ups,
and reports wall and CPU seconds per step of each worker:

1. ``alone``: one worker with ``--threads`` threads (the idle reference);
2. ``shared``: two workers at once, each with ``--threads`` threads (2x oversubscribed on a
   machine with ``--threads`` cores), OpenMP's default wait policy;
3. ``shared, passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
4. ``shared, half threads``: two workers, each with half the threads (no oversubscription).

If (2) costs well above (1) in CPU seconds per step while (3) and (4) do not, the spinning
is the cause, and ``--threads`` (or ``OMP_WAIT_POLICY=PASSIVE``) is the cure.

    python benchmarks/oversubscription.py [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(steps: int, threads: int) -> None:
    """One worker: ``steps`` SmoothMix training steps of the demo; prints JSON timings."""
    import torch

    from smoothmix.demo import DemoBudget, _train_step
    from smoothmix.device import resolve_device
    from smoothmix.reproduce.experiments import get_experiment

    torch.set_num_threads(threads)
    budget = DemoBudget()
    device = resolve_device("cpu")
    x = torch.rand(budget.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (budget.batch_size,))
    step = _train_step(get_experiment(budget.experiment()).preset_name("smoothmix"), budget,
                       device, x, y)
    for _ in range(3):  # warm-up
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    print(json.dumps({"wall": (time.perf_counter() - wall) / steps,
                      "cpu": (time.process_time() - cpu) / steps}))


def run(count: int, steps: int, threads: int, env: dict[str, str]) -> list[dict[str, float]]:
    """``count`` workers started together; their timings."""
    cmd = [sys.executable, __file__, "--worker", "--steps", str(steps), "--threads",
           str(threads)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **env}) for _ in range(count)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.threads)
        return
    import torch

    from smoothmix.execution import describe_cpu

    default = {k: v for k, v in os.environ.items() if k == "OMP_WAIT_POLICY"}
    os.environ.pop("OMP_WAIT_POLICY", None)
    half = max(1, args.threads // 2)
    setups = [("alone", 1, args.threads, {}),
              ("alone, passive", 1, args.threads, {"OMP_WAIT_POLICY": "PASSIVE"}),
              ("shared", 2, args.threads, {}),
              ("shared, passive", 2, args.threads, {"OMP_WAIT_POLICY": "PASSIVE"}),
              ("shared, half threads", 2, half, {})]
    print(f"{describe_cpu()}, {os.cpu_count()} cpus, torch {torch.__version__}; the demo's "
          f"SmoothMix step (batch {64}), {args.steps} steps per worker; OMP_WAIT_POLICY "
          f"unset unless named (was {default or 'unset'})\n")
    print("| set-up | workers x threads | wall s/step (each) | CPU s/step (each) | CPU vs alone |")
    print("|---|---|---|---|---|")
    reference = None
    for name, count, threads, env in setups:
        timings = run(count, args.steps, threads, env)
        cpu = sum(t["cpu"] for t in timings) / len(timings)
        reference = reference or cpu  # "alone", the first set-up
        walls = ", ".join(f"{t['wall']:.3f}" for t in timings)
        cpus = ", ".join(f"{t['cpu']:.3f}" for t in timings)
        print(f"| {name} | {count} x {threads} | {walls} | {cpus} | {cpu / reference:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
