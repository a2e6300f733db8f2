"""quiet_collector: the process's objects are frozen out of the collector and the young generation is larger
(run in a child process: freezing the test process would keep its garbage cycles for good)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mrff_secure.wire.collector import YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parents[2]


def test_quiet_collector_freezes_and_raises_the_young_threshold() -> None:
    code = (
        "import gc, json\n"
        "from mrff_secure.wire.collector import quiet_collector\n"
        "before = (gc.get_freeze_count(), gc.get_threshold())\n"
        "quiet_collector()\n"
        "cycle = []; cycle.append(cycle); del cycle\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(), gc.collect()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    (frozen_before, threshold_before), frozen, threshold, collected = json.loads(out.stdout)
    assert frozen_before == 0 and frozen > 0
    assert threshold[0] == max(threshold_before[0], YOUNG_THRESHOLD)
    assert threshold[1:] == threshold_before[1:]
    assert collected >= 1  # a cycle made after the freeze is still collected
