"""Suite-wide settings. Hypothesis's per-example deadline (200 ms) measures the machine, not the
code: on a shared 2-core runner a property test that takes 5 ms alone can take 300 ms, so no
property test has one (speed lives in benchmarks/)."""

from hypothesis import settings

settings.register_profile("fastswitch", deadline=None)
settings.load_profile("fastswitch")
