"""bench/published_scaling.py --what-if CLUSTER=FLAGS: the flags reach every prediction on
that cluster and no other. The table runs twice, as shipped and with a faster network on
p100-horovod (--inter-bw); every scaling row of that cluster must move and every other
row must stay as it was, bit for bit. A malformed --what-if is refused (exit 2).

usage: published_what_if.py BENCH_SCRIPT FUSEPLAN_BINARY
"""
import json
import subprocess
import sys


def rows(bench, binary, *extra):
    run = subprocess.run([sys.executable, bench, "--json", "--bin", binary, *extra], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"published_what_if: {' '.join(extra) or 'the shipped table'} failed: {run.stderr.strip()}")
    text = run.stdout
    return {r["case"]: r for r in json.loads(text[text.rindex("\n[\n") + 1:])}


def main():
    bench, binary = sys.argv[1], sys.argv[2]
    shipped = rows(bench, binary)
    faster = rows(bench, binary, "--what-if", "p100-horovod=--inter-bw 30")
    failures = []
    if shipped.keys() != faster.keys():
        failures.append("the two runs list different rows")
    moved = 0
    for case, r in shipped.items():
        w = faster.get(case, {})
        if r.get("cluster") == "p100-horovod":
            moved += 1
            if not w.get("predicted", 0) > r["predicted"]:
                failures.append(f"{case}: a faster network did not raise the predicted efficiency")
        elif w != r:
            failures.append(f"{case}: not on p100-horovod, yet its row changed")
    if moved < 9:
        failures.append(f"only {moved} scaling rows on p100-horovod (expected 9)")
    for bad in ("p100-horovod", "nowhere=--inter-bw 30", "p100-horovod="):
        run = subprocess.run([sys.executable, bench, "--bin", binary, "--what-if", bad], capture_output=True, text=True)
        if run.returncode != 2 or "--what-if" not in run.stderr:
            failures.append(f"--what-if '{bad}' was not refused with exit 2 (exit {run.returncode})")
    for f in failures:
        print("published_what_if: " + f)
    print(f"published_what_if: {moved} rows on p100-horovod moved, {len(shipped) - moved} others unchanged"
          if not failures else f"published_what_if: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
