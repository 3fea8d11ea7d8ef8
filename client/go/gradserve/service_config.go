package gradserve

import _ "embed"

// serviceConfig is gRPC's service config for every gradserve client: retry UNAVAILABLE with
// backoff. It is protos/gradserve/v1/service_config.json, copied here by generate.py.
//
//go:embed service_config.json
var serviceConfig string
