"""The gRPC edge: servicer, request decoding, reply packing, auth, admission, metrics, logs."""
