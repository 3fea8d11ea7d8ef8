"""Process management: the worker supervisor, isolation workers, malloc settings."""
