"""Counts kept by key (calls by connection or token, bytes or slots by connection)."""


def add_count(counts: dict, key: str, change: int) -> None:
    """Change ``counts[key]`` by ``change``, dropping a key whose count reaches 0, so that
    the dict holds only the keys that hold something (a connection gone leaves no entry)."""
    count = counts.get(key, 0) + change
    if count:
        counts[key] = count
    else:
        counts.pop(key, None)
