#!/usr/bin/python3
"""Runs every example command of README.md and docs/*.md (their ```sh blocks).

Each block runs as one bash script (set -e) in a fresh temporary directory, so a block
may use the files its earlier lines wrote; `fuseplan`, `fuseplan-exec`, `mpirun` and
`scripts/...` resolve to this build and source tree (`build/release/cli` in a block is
replaced by the build's cli directory). The test fails when a command that runs fails.

What does not run, and why, is printed:
  - ./scripts/quickstart.sh and ./scripts/test.sh: they are this run's own set-up;
  - GPU commands (--backend cuda) where no GPU is visible (nvidia-smi);
  - scripts/plot_whatif.py without python3-matplotlib;
  - blocks that run fuseplan-exec in a build without MPI (no executor is built);
  - blocks with mpirun unless --with-mpi (the CTest suite `docs_commands_mpi`, label slow,
    run alone); they measure this machine, so a failing one runs once more, said so.
Training commands without --max-steps or --epochs limits are capped at 3 steps
(--max-steps 3 --no-eval appended): the command line and its set-up are checked, not
the hours of training; FUSEPLAN_DOCS_FULL=1 runs them as written.

usage: docs_commands.py SOURCE_DIR BIN_DIR [--with-mpi | --only-mpi]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

FENCE = re.compile(r"^[ \t]*```(sh|bash)\n(.*?)^[ \t]*```", re.S | re.M)
FIXTURES = {  # files the docs' examples read as if the user had them: name -> source-tree file
    "all_reduce_perf.log": "tests/data/nccl-tests/h100-ndr-2x8.txt",
}


def blocks(source):
    docs = os.path.join(source, "docs")
    files = ["README.md"] + sorted(
        os.path.join("docs", f) for f in os.listdir(docs) if f.endswith(".md"))
    for rel in files:
        with open(os.path.join(source, rel)) as f:
            text = f.read()
        for m in FENCE.finditer(text):
            line_no = text[: m.start()].count("\n") + 2
            yield rel, line_no, m.group(2)


def commands(body):
    """Logical lines (continuations joined), comments stripped."""
    out, cur = [], ""
    for raw in body.split("\n"):
        line = raw.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        cmd = re.sub(r"\s+#.*$", "", cur).strip()
        if cmd and not cmd.startswith("#"):
            out.append(cmd)
        cur = ""
    return out


def workdir(source):
    """A fresh directory with the fixtures, scripts/, python/ and configs/ the examples use."""
    work = tempfile.mkdtemp(prefix="fuseplan-docs-")
    for name, src in FIXTURES.items():
        shutil.copy(os.path.join(source, src), os.path.join(work, name))
    for d in ("scripts", "python", "configs"):
        os.symlink(os.path.join(source, d), os.path.join(work, d))
    return work


def gpu_visible():
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def has_matplotlib():
    return subprocess.run(["/usr/bin/python3", "-c", "import matplotlib"], capture_output=True).returncode == 0


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    source, bindir = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else ""
    full = os.environ.get("FUSEPLAN_DOCS_FULL") == "1"
    gpu, mpl = gpu_visible(), has_matplotlib()
    has_exec = os.path.exists(os.path.join(bindir, "fuseplan-exec"))
    # The PyTorch examples' python3 is Debian's (python3-torch), as docs/pytorch.md says,
    # whatever python3 comes first on this PATH.
    shim = tempfile.mkdtemp(prefix="fuseplan-docs-bin-")
    os.symlink("/usr/bin/python3", os.path.join(shim, "python3"))
    ran = skipped = failed = 0
    for rel, line_no, body in blocks(source):
        cmds = commands(body)
        uses_mpi = any("mpirun" in c for c in cmds)
        if (mode == "--only-mpi") != uses_mpi and mode != "--with-mpi":
            continue
        if not has_exec and any("fuseplan-exec" in c for c in cmds):
            # A build without MPI has no executor: the whole block (its later lines read
            # what the executor wrote).
            print(f"skipped  {rel}:{line_no}: {len(cmds)} commands  (fuseplan-exec is not built: no MPI)")
            skipped += len(cmds)
            continue
        script = ["set -eo pipefail"]
        for c in cmds:
            why = None
            if c.startswith("./scripts/quickstart.sh") or c.startswith("./scripts/test.sh"):
                why = "this run's own set-up"
            elif "--backend cuda" in c and not gpu:
                why = "no GPU visible"
            elif "plot_whatif.py" in c and not mpl:
                why = "python3-matplotlib is not installed"
            if why:
                print(f"skipped  {rel}:{line_no}: {c}  ({why})")
                skipped += 1
                continue
            c = c.replace("build/release/cli", bindir)
            if (not full and "fuseplan-exec train" in c and "--max-steps" not in c):
                c += " --max-steps 3 --no-eval"
            script.append(f"echo '+ {c}' >&2")
            script.append(c)
            ran += 1
        if len(script) == 1:
            continue
        work = workdir(source)
        env = dict(os.environ, PATH=os.pathsep.join([bindir, shim, os.environ["PATH"]]),
                   FUSEPLAN_PROGRESS="0",
                   OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
        r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True)
        if r.returncode != 0 and uses_mpi:
            # Blocks with mpirun measure this machine (a sweep, then calibrate on it): on a
            # loaded machine calibrate may refuse a fit as degenerate, as documented. Once
            # more, from scratch, said in the output.
            print(f"retry    {rel}:{line_no} (exit {r.returncode}; it measures this machine)")
            shutil.rmtree(work, ignore_errors=True)
            work = workdir(source)
            r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            failed += 1
            tail = "\n".join((r.stdout + r.stderr).strip().split("\n")[-15:])
            print(f"FAILED   {rel}:{line_no} (exit {r.returncode}):\n{tail}\n")
        else:
            print(f"ok       {rel}:{line_no}: {len(script) // 2} commands")
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(shim, ignore_errors=True)
    print(f"\n{ran} commands run, {skipped} skipped, {failed} blocks failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
