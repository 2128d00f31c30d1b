"""File digests (weights files are MD5-checked as Keras publishes them; exported artifacts by SHA-256)."""

import hashlib


def file_digest(path: str, algorithm: str) -> str:
    """The hex digest of a file, read in 1 MB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
