"""python3 -m fuseplan_torch export | run | sweep (docs/pytorch.md).

Bad input is one line naming the flag or file, exit code 2; no output file is touched.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import jobs
from .heap import add_heap_flag


def _add_layer_times_flag(parser: argparse.ArgumentParser) -> None:
    """`--layer-times`, as `export --profile` and `run --profile` take it."""
    parser.add_argument("--layer-times", default="whole-pass", choices=["whole-pass", "as-timed"],
                        help="--profile: scale the layers' forward times to the whole model's forward, and their "
                             "backward times alike (whole-pass), or keep each layer's time as timed alone (as-timed)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage first)
        print("fuseplan_torch: " + message, file=sys.stderr)
        sys.exit(2)


def _int_to(most: int):
    """An argparse type: an integer no larger than `most` (the commands check the lower bounds
    and name the flag; past `most` torch overflows or the run would not end)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("invalid int value: '%s'" % text)
        if value > most:
            raise argparse.ArgumentTypeError("must be at most %d (got %s)" % (most, text))
        return value
    return parse


SEED_MAX = 2 ** 62  # seeds of ranks and batches are offsets of it
COUNT_MAX = 1000000  # steps, runs, iterations
RANKS_MAX = 1024  # processes on one machine
THREADS_MAX = 4096
BATCH_MAX = 1 << 20


def _input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("factory", help="module factory, package.module:function (e.g. torchvision.models:resnet50)")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 3,224,224 or 128 (token ids); or --inputs")
    p.add_argument("--inputs", help="instead of --input-shape: package.module:function called as function(batch, "
                                    "generator), returning a batch of the forward's inputs: a tensor, a tuple of "
                                    "them passed in order (token ids and an attention mask), or a dict of them passed "
                                    "by keyword (as Hugging Face's data collators make)")
    p.add_argument("--input-dtype", default="float", choices=["float", "long"], help="float images or long token ids")
    p.add_argument("--vocab", type=_int_to(2 ** 31 - 1), default=0,
                   help="long inputs: token ids are drawn below this (required)")
    p.add_argument("--seed", type=_int_to(SEED_MAX), default=1, help="weights and synthetic data")
    p.add_argument("--name", default="", help="model name in the files (default: the factory's function name)")


def main(argv: Optional[List[str]] = None) -> int:
    ap = _Parser(prog="python3 -m fuseplan_torch", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ex = sub.add_parser("export", help="a module as fuseplan.model/1, optionally with measured layer times")
    _input_flags(ex)
    ex.add_argument("--out", required=True, help="model file to write")
    ex.add_argument("--profile", help="also time every layer and write fuseplan.profile/1 here")
    ex.add_argument("--batch", type=_int_to(BATCH_MAX), default=8, help="--profile: samples per timed batch")
    ex.add_argument("--warmup", type=_int_to(COUNT_MAX), default=3, help="--profile: untimed runs per layer")
    ex.add_argument("--steps", type=_int_to(COUNT_MAX), default=10,
                    help="--profile: timed runs per layer (the median is kept)")
    ex.add_argument("--device", default="cpu",
                    help="--profile: where the layers are timed: cpu, or cuda / cuda:N (a GPU; with --ranks 1)")
    ex.add_argument("--threads", type=_int_to(THREADS_MAX), default=0,
                    help="torch threads (default: torch's; with --ranks: cores / ranks)")
    ex.add_argument("--ranks", type=_int_to(RANKS_MAX), default=1,
                    help="--profile: time on this many processes side by side, as a data-parallel job of that many "
                         "ranks loads this machine, keeping the slowest rank's time per layer")
    _add_layer_times_flag(ex)
    add_heap_flag(ex)

    run = sub.add_parser("run", help="train on N local ranks (gloo or NCCL) with a plan (PlanDDP) or torch DDP, measured")
    _input_flags(run)
    run.add_argument("--plan", default="", help="fuseplan.plan/1 to follow (PlanDDP); without it: torch DDP")
    run.add_argument("--bucket-cap-mb", type=float, default=25.0, help="without --plan: DDP's bucket_cap_mb")
    run.add_argument("--engine", default="auto", choices=["auto", "reducer", "hooks"],
                     help="--plan: PlanDDP's bucketing: torch's C++ Reducer (DDP's) or a Python hook per tensor; "
                          "auto takes the Reducer where this torch has it")
    run.add_argument("--gradient-as-bucket-view", action="store_true",
                     help="each .grad a view of its bucket (DDP's gradient_as_bucket_view, for PlanDDP and DDP): "
                          "saves the copy back and a gradient's memory; on the CPU freed gradients fault pages in "
                          "again (docs/pytorch.md)")
    run.add_argument("--ranks", type=_int_to(RANKS_MAX), default=2, help="processes on this machine")
    run.add_argument("--backend", default="gloo", choices=jobs.BACKENDS,
                     help="process group: gloo (CPU) or nccl (rank r on GPU r)")
    run.add_argument("--batch", type=_int_to(BATCH_MAX), default=0,
                     help="samples per rank (default: the plan's, else 8)")
    run.add_argument("--warmup", type=_int_to(COUNT_MAX), default=3, help="untimed optimizer steps")
    run.add_argument("--iterations", type=_int_to(COUNT_MAX), default=10,
                     help="timed optimizer steps (with the plan's accumulate: each of its micro-batches)")
    run.add_argument("--threads", type=_int_to(THREADS_MAX), default=0,
                     help="torch threads per rank (default: cores / ranks)")
    run.add_argument("--report", help="--plan: write the measured fuseplan.report/1 here")
    run.add_argument("--profile", help="--plan: also write this run's layer profile (fuseplan.profile/1) here, "
                                       "timed in the same job right before the measured steps, on every rank side "
                                       "by side, for `fuseplan verify --profile`")
    _add_layer_times_flag(run)
    add_heap_flag(run)

    sw = sub.add_parser("sweep", help="time the allreduce of gloo or NCCL on N local ranks (fuseplan.sweep/1 for "
                                      "`fuseplan calibrate`)")
    sw.add_argument("--ranks", type=_int_to(RANKS_MAX), default=2)
    sw.add_argument("--backend", default="gloo", choices=jobs.BACKENDS,
                    help="process group: gloo (CPU) or nccl (rank r on GPU r)")
    sw.add_argument("--sizes", default="4K:64M", help="bytes from:to, doubling (K, M suffixes)")
    sw.add_argument("--iterations", type=_int_to(COUNT_MAX), default=10)
    sw.add_argument("--threads", type=_int_to(THREADS_MAX), default=1)
    sw.add_argument("--out", required=True)
    add_heap_flag(sw)

    a = ap.parse_args(argv)
    try:
        if a.command == "export":
            jobs.export_command(a)
        elif a.command == "run":
            jobs.run_command(a)
        else:
            jobs.sweep_command(a)
    except jobs.UsageError as e:
        print("fuseplan_torch: " + jobs.one_line(str(e)), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
