"""The gradserve server: op registry, vectorized engine, gRPC servicer and CLI."""
