"""Default check run inside a simulated node (tests/simnode.sh, EZPZ_SIM_CHECK).

Prints one JSON object: the hostname, a description of every entry under /tmp (type, mode,
size, sha256 for files, target for symlinks) and the result of each command in
EZPZ_SIM_RUN (a JSON list of argv lists), so tests can assert on a node's /tmp after the
rank's command ran and before its private /tmp disappears.
"""

import hashlib
import json
import os
import socket
import stat
import subprocess


def describe(root: str) -> dict:
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = {"mode": stat.S_IMODE(st.st_mode)}
            if stat.S_ISLNK(st.st_mode):
                entry.update(type="symlink", target=os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entry.update(type="dir")
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
                entry.update(type="file", size=st.st_size, sha256=h.hexdigest())
            else:
                entry.update(type="other")
            tree[rel] = entry
        # do not descend into symlinked directories (os.walk does not by default)
    return tree


def main() -> None:
    runs = []
    for argv in json.loads(os.environ.get("EZPZ_SIM_RUN", "[]")):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            runs.append({"argv": argv, "rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr})
        except OSError as exc:
            runs.append({"argv": argv, "rc": -1, "stdout": "", "stderr": str(exc)})
    print(json.dumps({"host": socket.gethostname(), "tmp": describe("/tmp"), "runs": runs}))


if __name__ == "__main__":
    main()
