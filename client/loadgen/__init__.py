"""The load generator and benchmark harness behind ``fastswitch-bench``.

Plain modules (no gRPC) build workloads and compute figures; :mod:`.runner` alone talks to a
server, through a :mod:`.transport` (the SDK's gRPC, or the HTTP door); :mod:`.compare` alone
starts deployments (through the launcher).

=============  ================================================================
dists          length and time distributions (``lognormal:80,1.0``, ...)
arrivals       Poisson and gamma arrival times
traces         Azure and Mooncake trace readers; hash-id -> token blocks
priorities     per-tenant priority levels changing over time
workloads      WorkloadSpec -> Workload (sessions of turns), scaling and clipping
runner         runs a workload against a server; RequestRecords
transport      what the runner needs of a server; the gRPC transport (the SDK)
http_transport the OpenAI-compatible HTTP door; sse: its event stream
http_client    a lean keep-alive HTTP/1.1 client (asyncio protocols, httptools)
ready          --wait-workers
stats          percentiles, Jain's index, SLO attainment, service over time
summary        a run's figures (Summary) and the headline figures of compare
report         the table and the JSON; progress: the live bar; plots: PNGs
cli, compare   ``fastswitch-bench`` and ``fastswitch-bench compare``
=============  ================================================================
"""
