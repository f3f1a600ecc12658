"""Suite-wide settings.

* Hypothesis's per-example deadline (200 ms) measures the machine, not the code: on a shared
  2-core runner a property test that takes 5 ms alone can take 300 ms, so no property test has
  one (speed lives in benchmarks/).
* Deployments the tests start fetch every retained prefix they find
  (``FASTSWITCH_HOST_FETCH=always``, the default of the scheduler's ``--host-fetch``): ``auto``
  weighs the KV store's measured round trip against prefilling, a choice a loaded machine
  flips, and the system tests check reuse itself. The choice is tested in
  tests/scheduler/test_fetch_cost.py and test_host_write.py; a test that wants ``auto`` passes
  the flag.
"""

import os

from hypothesis import settings

settings.register_profile("fastswitch", deadline=None)
settings.load_profile("fastswitch")
os.environ.setdefault("FASTSWITCH_HOST_FETCH", "always")
