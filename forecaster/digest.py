"""The digest of a whole model directory, so a deployment can pin exactly what it serves.

`sha256:<hex>` of, for every regular file under the directory in the order of its relative path
(POSIX, UTF-8, sorted bytewise): the path, a NUL, the content's length as 8 big-endian bytes, and the
content. Paths and lengths are hashed so no two directories share a stream of bytes; the card's
per-artifact hashes cannot catch a swapped directory whose card was swapped with it.

`python -m forecaster.digest DIR` prints it; training prints it when it writes a model.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

PREFIX = "sha256:"


def files_of(model_dir: Path) -> list[tuple[bytes, Path]]:
    """(relative path as UTF-8 bytes, path) of every regular file, sorted; symlinks to files count as files."""
    found = []
    for root, dirs, names in os.walk(model_dir):
        dirs.sort()
        for name in names:
            path = Path(root, name)
            if path.is_file():
                found.append((path.relative_to(model_dir).as_posix().encode("utf-8", "surrogateescape"), path))
    return sorted(found)


def of_directory(model_dir: str | Path) -> str:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a directory")
    digest = hashlib.sha256()
    for relative, path in files_of(model_dir):
        digest.update(relative + b"\0" + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return PREFIX + digest.hexdigest()


def normalized(expected: str) -> str:
    """`sha256:<hex>` or bare hex, any case, as of_directory writes it; ValueError if neither."""
    text = expected.strip().lower()
    hexdigits = text[len(PREFIX):] if text.startswith(PREFIX) else text
    if len(hexdigits) != 64 or any(c not in "0123456789abcdef" for c in hexdigits):
        raise ValueError(f"{expected!r} is not a sha256 digest (sha256:<64 hex digits>)")
    return PREFIX + hexdigits


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m forecaster.digest MODEL_DIR", file=sys.stderr)
        return 2
    try:
        print(of_directory(argv[0]))
    except OSError as exc:
        print(f"no digest: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
