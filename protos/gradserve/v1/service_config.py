"""The gRPC service config every gradserve client uses: retry UNAVAILABLE, with backoff.

Every GradientService call is a pure function of its request, so a call that failed with
UNAVAILABLE (a server killed or draining behind a load balancer, a connection refused) is
safe to send again, and gRPC's own retry machinery does it (gRFC A6): no client hand-writes
a retry loop. The policy lives in ``service_config.json`` beside the protos, the one copy
that the Python SDK reads here and the other clients embed (each language's generate script
copies it, and their regeneration tests check the copy).
"""

import json
from importlib.resources import files

SERVICE_CONFIG_JSON = files(__package__).joinpath("service_config.json").read_text()
RETRY_POLICY = json.loads(SERVICE_CONFIG_JSON)["methodConfig"][0]["retryPolicy"]
