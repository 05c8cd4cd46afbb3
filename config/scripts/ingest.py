"""Example step: record the path and size of the file that triggered the run."""

import os
import sys
from pathlib import Path

path = sys.argv[1]
out = Path(".watcherd") / "ingested.log"
out.parent.mkdir(exist_ok=True)
line = f"{os.environ['WATCHERD_RUN_ID']} {path} {os.path.getsize(path)} bytes\n"
with out.open("a") as f:
    f.write(line)
print(line, end="")
