"""Running FastSwitch deployments on this machine, and comparing them.

Each service is a child process ``python -m fastswitch serve SERVICE ...flags``::

    runtime dir (private, removed on stop)       listens on
    ├── kvstore.sock  kvstore.log                 unix://RUNDIR/kvstore.sock
    ├── worker-0.sock worker-0.log  ...           unix://RUNDIR/worker-i.sock
    └── scheduler.log                             127.0.0.1:PORT   (the public API)

Start order: KV store (wait healthy) -> scheduler and workers (wait healthy) -> every worker joined
(the scheduler's GetStats lists N workers). A child that exits during start fails the start at
once with the tail of its log. Stop order: scheduler, workers, KV store (which removes its shared
memory arena), each SIGTERM then SIGKILL after ``stop_timeout_s``; every child is reaped.
Children run in their own process group, so a terminal's Ctrl-C reaches only the launcher, which
then stops them in order.

Parts, by job:

* :mod:`~fastswitch.deploy.config` -- :class:`DeploymentConfig` (frozen), the errors;
* :mod:`~fastswitch.deploy.flags` -- config + layout -> each service's flags;
* :mod:`~fastswitch.deploy.ports` -- free ports, a port's availability;
* :mod:`~fastswitch.deploy.placement` -- the device of each worker;
* :mod:`~fastswitch.deploy.preflight` -- one-line refusals before any child starts;
* :mod:`~fastswitch.deploy.children` -- one child: spawn, watch, log tail, stop, shm sweep;
* :mod:`~fastswitch.deploy.deployment` -- :class:`Deployment`, the orchestration;
* :mod:`~fastswitch.deploy.bridge` -- asyncio start-up run from blocking code;
* :mod:`~fastswitch.deploy.variants` -- the same workload against a deployment per variant;
* :mod:`~fastswitch.deploy.compare` -- ``fastswitch-bench compare``.
"""

from fastswitch.deploy.children import Child
from fastswitch.deploy.config import DeploymentConfig, DeploymentError, StartRefused
from fastswitch.deploy.deployment import Deployment
from fastswitch.deploy.flags import (
    SERVICES,
    ChildSpec,
    CommandBuilder,
    Layout,
    child_specs,
    serve_command,
)
from fastswitch.deploy.ports import free_port, free_ports, port_is_free

__all__ = [
    "SERVICES",
    "Child",
    "ChildSpec",
    "CommandBuilder",
    "Deployment",
    "DeploymentConfig",
    "DeploymentError",
    "Layout",
    "StartRefused",
    "child_specs",
    "free_port",
    "free_ports",
    "port_is_free",
    "serve_command",
]
