import sys

from servekit.memcpy_tuning import reexec_with_streaming_memcpy

reexec_with_streaming_memcpy()  # before torch: block-group swaps on the CPU stream (see there)

from worker_svc.server import main  # noqa: E402

sys.exit(main())
