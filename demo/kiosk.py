"""The demo panels' kiosk program: stays up for the lesson instead of opening a browser
(the agent logs each lesson event)."""

from __future__ import annotations

import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(60)
