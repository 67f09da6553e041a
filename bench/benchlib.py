"""What the bench scripts share: the fuseplan binary they drive, checked before any work."""
import os
import sys


def require_binary(path: str, prog: str) -> None:
    """Exits 2 with one line naming --bin unless `path` is an executable file."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        print(f"{prog}: --bin: {path} is not an executable (build first: cmake --build --preset release)",
              file=sys.stderr)
        sys.exit(2)
