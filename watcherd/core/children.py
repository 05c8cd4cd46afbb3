"""Child processes that the code which started them waits for itself.

A command's leader (`dispatch.process.ProcessGroup`) and a listing helper
(`pollers.lister`) each wait for their child by pid. The orphan reaper
(`dispatch.process.Reaper`, when the daemon is PID 1 or a subreaper) reaps the zombie
children that nobody waits for, and must leave these alone. If it reaped one behind its
starter's back, the starter's later `wait()` or `kill()` would act on a pid the kernel may
have given to another process by then.
"""

from __future__ import annotations

__all__ = ["WAITED"]

# Pids: added right after the spawn, discarded once waited for. A set's add and discard are
# atomic under the GIL, so threads may share it.
WAITED: set[int] = set()
