"""``isobox compare`` and ``isobox advise``: measure each isolation level on this host, recommend one.

    workloads.py  the probe scripts the workload runs (markers timed from the host side)
    measure.py    running them natively and through the engine at every level
    claims.py     which usual claims hold here
    report.py     terminal table, HTML with inline SVG charts
    advise.py     the deterministic rules of ``advise``
    runs.py       compare runs in the daemon: progress, results stored in the state root
"""
