"""The names of gradserve's spans and span attributes, shared by ``tracing`` (which the
servicer uses whether tracing is on or off) and ``otel_spans`` (imported only when on)."""

SERVICE = "gradserve.v1.GradientService"
PLAN_CACHE = "gradserve.plan_cache"  # "hit" or "miss", on the compiling span
NODES, ROWS, STATUS = "gradserve.nodes", "gradserve.rows", "gradserve.status"
