"""`python3 -m fuseplan_torch ARGS` for the tests, without paying torch's import per call.

Importing torch takes about 1.7 s of CPU here, more than most refusals the tests check. This
server imports torch and the command line once, then forks a child per request: the child
calls the same `main(argv)` that `python3 -m fuseplan_torch` calls, with its standard output
and error sent to files, and exits with the code the command would have exited with (an
uncaught exception prints its traceback and exits 1, as Python does). A fork starts from the
state right after the import, so one request cannot leak flags, threads or seeds into the
next. Ranks that `run` starts are spawned, fresh interpreters, as they are from the shell.

Protocol: one JSON object per line on standard input, {"args": [...], "cwd": path or null,
"stdout": path, "stderr": path}; one line back per request, {"rc": code}.
"""
import json
import os
import sys
import traceback

import torch  # noqa: F401  (the import this server exists to pay once)
from fuseplan_torch.__main__ import main


def _exit_code(code) -> int:
    """The exit code of SystemExit(code), as the interpreter gives it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(request) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    code = 1
    try:
        if request["cwd"]:
            os.chdir(request["cwd"])
        sys.argv = ["python3 -m fuseplan_torch", *request["args"]]
        code = _exit_code(main(request["args"]))
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
