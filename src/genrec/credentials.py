"""Where credentials come from (the environment) and where they must never go (the config).

The resolved config is logged to MLflow as params and config.yaml and is a KFP run parameter, shown in the KFP UI:
a password in it would be visible to everyone who can read a run. So a config value that carries one is refused,
and every message that shows a URI shows it redacted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

# scheme://user:password@host (a password in the URI's user info)
_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^/@\s:]*):(?P<password>[^/@\s]+)@", re.IGNORECASE)

WHERE_CREDENTIALS_GO = (
    "credentials never go in the config (it is logged to MLflow and shown in KFP): set them in the environment: "
    "MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for the MLflow server (on Kubernetes "
    "from the Secret the pipeline is compiled with), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for an object store "
    "(see mlflow/README.md)")


def has_password(text: str) -> bool:
    """True when `text` holds a URI with a password in its user info (scheme://user:password@host)."""
    return bool(_URI_PASSWORD.search(text))


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***."""
    return _URI_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", text)


def find_passwords(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the string values in a nested dict/list that carry a password in a URI."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in find_passwords(value, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [k for i, value in enumerate(tree) for k in find_passwords(value, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(tree, str) and has_password(tree) else []


@dataclass(frozen=True)
class TrackingLogin:
    """The MLflow login of this process, read from the environment (as the MLflow client reads it)."""

    username: str
    password: str

    @classmethod
    def from_env(cls) -> "TrackingLogin":
        return cls(os.environ.get("MLFLOW_TRACKING_USERNAME", ""), os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))

    def auth(self) -> tuple[str, str] | None:
        """What `requests` takes as basic auth (None: no login)."""
        return (self.username, self.password) if self.username else None

    def __repr__(self) -> str:  # never print the password by accident
        return f"TrackingLogin(username={self.username!r})"
