"""Example step: append the trigger time and a message to .watcherd/heartbeat.log."""

import os
import sys
from pathlib import Path

out = Path(".watcherd") / "heartbeat.log"
out.parent.mkdir(exist_ok=True)
line = f"{os.environ['WATCHERD_TRIGGER_TIME']} run {os.environ['WATCHERD_RUN_ID']}: {sys.argv[1]}\n"
with out.open("a") as f:
    f.write(line)
print(line, end="")
