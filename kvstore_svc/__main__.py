"""``python -m kvstore_svc [flags]``: the KV store process (see ``kvstore_svc.server``)."""

from kvstore_svc.server import main

raise SystemExit(main())
