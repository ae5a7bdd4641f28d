"""Whether the Hugging Face hub can be reached from here, asked once per process before anything downloads.

Offline, `huggingface_hub` and `datasets` retry each file for about a minute with a warning per try (66 s before the
README's TOFU command failed on a machine without network); one TCP connection with a short timeout says the same at
once, so the harness can name what to give instead (data.root, original.path, HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_by_choice() -> bool:
    """The user said so: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is 1/true/yes."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_VARIABLES)


@functools.lru_cache(maxsize=1)
def _connect(host: str, port: int, timeout: float) -> str | None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({type(exc).__name__}: {exc})"


def why_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used from here (the offline variables, or no connection to $HF_ENDPOINT or
    huggingface.co within `timeout` seconds); None when it can. The connection is tried once per process."""
    if offline_by_choice():
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _connect(url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80), timeout)
