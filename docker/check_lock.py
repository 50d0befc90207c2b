"""Check an image's Python packages against the lock files: every installed distribution the locks pin
must have the pinned version (docker/Dockerfile.overlay runs this after it brings an older image to
this commit's locks, so a refreshed image cannot silently keep an old pin).

    python check_lock.py requirements.lock [requirements-deepspeed.lock ...]
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(paths: list[str]) -> int:
    pins: dict[str, str] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if m := _PIN.match(line.strip()):
                    pins[_norm(m.group(1))] = m.group(2)
    wrong = []
    for dist in importlib.metadata.distributions():
        name = _norm(dist.metadata["Name"])
        if name in pins and dist.version != pins[name]:
            wrong.append(f"{name} {dist.version} (the lock pins {pins[name]})")
    if wrong:
        print("packages differ from the lock files:\n  " + "\n  ".join(sorted(wrong)), file=sys.stderr)
        return 1
    print(f"{len(pins)} pins checked: the installed packages match the lock files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
