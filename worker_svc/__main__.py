import sys

from worker_svc.server import main

sys.exit(main())
