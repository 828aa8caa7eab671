"""scripts/mnist-evaluation: the protocol's full-test-set figure (KT where it decided, fixed-N
CERTIFY on the images KT left undecided at the cap) and how far an interrupted CERTIFY on
those images got, from a hand-made run folder whose answer is known."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mnist-evaluation"


@pytest.fixture(scope="module")
def evaluation():
    return load_script(SCRIPT)


# Four images at r = 0 and 1: image 0 certified at both; image 1 certified at 0, undecided
# at 1; image 2 undecided at 0, not certified at 1; image 3 not certified at either.
DECISIONS = [(0, 0.0, "certified", 1), (0, 1.0, "certified", 1),
             (1, 0.0, "certified", 1), (1, 1.0, "undecided", 0),
             (2, 0.0, "undecided", 0), (2, 1.0, "not-certified", 0),
             (3, 0.0, "not-certified", 0), (3, 1.0, "not-certified", 0)]


def decisions(run: Path):
    from smoothmix.analysis import read_decisions

    return read_decisions(run / "decide_gaussian.tsv")


def write_run(run: Path, certify_undecided: list[tuple[int, int, float]] | None) -> None:
    run.mkdir(parents=True)
    rows = ["idx\tlabel\ttested\tat_radius\tdecision\tcertified_correct\tsamples\ttime"]
    rows += [f"{i}\t7\t7\t{r}\t{d}\t{c}\t100\t0.1" for i, r, d, c in DECISIONS]
    (run / "decide_gaussian.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if certify_undecided is not None:
        rows = ["idx\tlabel\tpredict\tradius\tcorrect\tundecided_at\ttime"]
        rows += [f"{i}\t7\t7\t{radius}\t{correct}\t0.0\t6.5"
                 for i, correct, radius in certify_undecided]
        (run / "certify_undecided_gaussian.tsv").write_text("\n".join(rows) + "\n",
                                                            encoding="utf-8")


def test_undecided_images_take_certifys_answer_once_it_covers_them(evaluation, tmp_path):
    run = tmp_path / "2026-01-01-mnist-1.00-full"
    # CERTIFY: image 1 certified at radius 1.2 (>= 1), image 2 correct at radius 0.3 (>= 0).
    write_run(run, [(1, 1, 1.2), (2, 1, 0.3)])
    figures, done, pending = evaluation.with_undecided(run, "gaussian", decisions(run))
    # r = 0: images 0, 1 (KT) and 2 (CERTIFY) of 4; r = 1: images 0 (KT) and 1 (CERTIFY).
    assert figures == [0.75, 0.5]
    assert (done, pending) == (2, 2)
    cell = evaluation.kt_cell(run, "gaussian", {"certified": [70.0, 40.0]}, [0.0, 1.0])
    assert cell == "75.00 [KT 50.00] (70.00) / 50.00 [KT 25.00] (40.00)"


def test_a_wrong_or_too_small_certify_answer_does_not_count(evaluation, tmp_path):
    run = tmp_path / "2026-01-01-mnist-1.00-full"
    write_run(run, [(1, 1, 0.9), (2, 0, 2.0)])  # below r = 1; a wrong class
    figures, _, _ = evaluation.with_undecided(run, "gaussian", decisions(run))
    assert figures == [0.5, 0.25]  # KT alone: nothing added


@pytest.mark.parametrize("certified", [None, [(2, 1, 0.3)]])
def test_kt_alone_until_certify_covers_every_undecided_image(evaluation, tmp_path, certified):
    run = tmp_path / "2026-01-01-mnist-1.00-full"
    write_run(run, certified)
    figures, done, pending = evaluation.with_undecided(run, "gaussian", decisions(run))
    assert figures is None and pending == 2 and done == (0 if certified is None else 1)
    cell = evaluation.kt_cell(run, "gaussian", {}, [0.0, 1.0])
    progress = "" if certified is None else " (CERTIFY on the undecided images: 1 of 2)"
    assert cell == "KT 50.00 / KT 25.00" + progress
