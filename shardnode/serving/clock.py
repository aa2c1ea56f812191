"""The wall clock of the shard-pod processes' housekeeping, with the same test seam as the operator's.

``$CHRONOSHARD_CLOCK_OFFSET_FILE`` names a file holding seconds to add to the wall clock: e2e tests move a real
process's clock forward (for example so the shadow's history ages into the cold tier and is exported) without
waiting an hour. Production deployments never set it; the local cluster passes it to its containers only when its
node agent was started with it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

CLOCK_OFFSET_ENV = "CHRONOSHARD_CLOCK_OFFSET_FILE"

log = logging.getLogger(__name__)


def wall_time() -> float:
    """``time.time()``, shifted by the seconds in ``$CHRONOSHARD_CLOCK_OFFSET_FILE`` when that is set."""
    now = time.time()
    path = os.environ.get(CLOCK_OFFSET_ENV)
    if path:
        try:
            now += float(Path(path).read_text().strip() or 0)
        except (OSError, ValueError):
            log.warning("ignoring the unreadable clock offset file %s", path)
    return now
