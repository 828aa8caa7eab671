"""`smoothmix attack`: empirical robustness of the smoothed classifier, a thin shell over
:func:`smoothmix.empirical.attack_dataset`."""

from __future__ import annotations

import argparse

from smoothmix.cli.certify import add_run_options, prepare_run, report
from smoothmix.core import check_predict_args
from smoothmix.empirical import (
    ATTACK_N,
    ATTACK_NOISE,
    ATTACK_STEPS,
    attack_dataset,
    check_attack_args,
)

__all__ = ["register", "run_attack"]


def register(subparsers: argparse._SubParsersAction) -> None:
    attack = subparsers.add_parser(
        "attack",
        help="attack the smoothed classifier (PGD on its soft version), then PREDICT there",
        description="For every --skip-th example: PREDICT at x; SmoothAdv's PGD attack on the "
        "smoothed soft classifier in the l2 ball of --epsilon (--num-noise draws, "
        "--num-steps steps); PREDICT at the attacked point. Writes idx label predict "
        "correct time adv_predict distance adv_outcome (kept the label / abstained / changed "
        "to another class at the attacked point); `smoothmix analyze` puts these shares "
        "next to the certified accuracy at epsilon and the share of certified images whose "
        "class changed (bounded by alpha_CERTIFY + alpha_PREDICT; abstentions are not "
        "bounded). Resumes like certify.",
    )
    add_run_options(attack, with_n0=False, n_default=ATTACK_N)  # --n: PREDICT's samples
    attack.add_argument("--epsilon", type=float, required=True,
                        help="l2 radius of the attack, in [0, 1] pixel units")
    attack.add_argument("--num-steps", type=int, default=ATTACK_STEPS,
                        help=f"PGD steps (step 2*epsilon/steps; default {ATTACK_STEPS})")
    attack.add_argument("--num-noise", type=int, default=ATTACK_NOISE,
                        help="noise draws for the smoothed soft classifier (default "
                        f"{ATTACK_NOISE})")
    attack.set_defaults(func=run_attack)


def run_attack(args: argparse.Namespace) -> int:
    check_attack_args(args.epsilon, args.num_steps, args.num_noise)
    check_predict_args(args.n, args.alpha, args.batch)
    model, dataset, spec = prepare_run(args)
    out = attack_dataset(model, dataset, spec, args.out, epsilon=args.epsilon,
                         num_steps=args.num_steps, num_noise=args.num_noise, n=args.n,
                         alpha=args.alpha)
    report("attack", out)
    return 0
