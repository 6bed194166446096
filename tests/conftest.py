"""Shared pytest settings for the whole tests/ directory (kept minimal and generic).

Hypothesis runs under the profile named by ``TOKENSAMPLER_HYPOTHESIS_PROFILE`` (default
``"default"``); ``TOKENSAMPLER_MAX_EXAMPLES`` sets ``max_examples`` for every profile
(default 100). The ``ci`` profile is derandomized so that a CI failure reproduces locally.
"""

from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, settings

# Test helper modules (the float64 oracle in tests/oracle.py) are importable as top-level
# modules whatever pytest's import mode or rootdir is.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# Batches go to rayon's pool from 2**20 logits by default (a measured threshold); the tests
# use smaller batches, so they lower it to keep the pool's code paths (and their thread
# safety) under test. Read once by the extension, before the first batched call.
os.environ.setdefault("TOKENSAMPLER_PARALLEL_MIN", "65536")

MAX_EXAMPLES = int(os.environ.get("TOKENSAMPLER_MAX_EXAMPLES", "100"))

_common = {
    "max_examples": MAX_EXAMPLES,
    # Native calls on V=5000 rows and the numpy oracle are fast but not hypothesis-fast.
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("default", **_common)
settings.register_profile("ci", derandomize=True, print_blob=True, **_common)
settings.load_profile(os.environ.get("TOKENSAMPLER_HYPOTHESIS_PROFILE", "default"))
