import sys

from scheduler_svc.server import main

sys.exit(main())
