"""Keep gRPC C-core's log lines off the user's stderr: the SDK says what went wrong itself.

C-core logs failed TLS handshakes and the like straight to stderr (``I1207 ...
ssl_transport_security.cc:2563] Handshake failed ...``), beside the SDK's one-line error.
It reads ``GRPC_VERBOSITY`` once, when grpc is first imported, so this module runs before
any other SDK module imports grpc; a user who sets the variable keeps their own setting.
When the program imported grpc before gradserve.client, C-core has read it already.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
