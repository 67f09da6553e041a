"""The package under test (python/) and the test helpers (here), for this process and the
ones the tests start (which may run in another directory)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
for path in (HERE, PACKAGE):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ["PYTHONPATH"] = os.pathsep.join([PACKAGE, HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
