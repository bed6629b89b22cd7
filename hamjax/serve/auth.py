"""The optional bearer token: read from an environment variable or a file, compared in constant time.

A server that binds anything but loopback requires one
(:class:`hamjax.serve.config.ServeConfig` refuses to start without it).
Clients send ``Authorization: Bearer <token>``; a missing or wrong token gets
401 with ``WWW-Authenticate: Bearer``. The probes (``/healthz``, ``/readyz``)
stay open so an orchestrator needs no secret; ``/metrics`` and the API need it.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hamjax"'}


def read_token(*, env: str | None = None, file: str | os.PathLike | None = None) -> str | None:
    """The token from environment variable ``env`` or from ``file`` (surrounding whitespace stripped), or None.

    Args:
      env: the name of an environment variable holding the token.
      file: a file holding the token (a mounted secret).

    Returns:
      The token, or None when neither is given.

    Raises:
      ValueError: both given, the variable unset or empty, the file unreadable or empty.

    Examples:
      >>> import os
      >>> os.environ["HAMJAX_DOC_TOKEN"] = " s3cret\\n"
      >>> read_token(env="HAMJAX_DOC_TOKEN")
      's3cret'
      >>> read_token() is None
      True
    """
    if env is not None and file is not None:
        raise ValueError("serve: give the token through --token-env or --token-file, not both")
    if env is not None:
        token = os.environ.get(env, "").strip()
        if not token:
            raise ValueError(f"serve: --token-env {env}: the environment variable is unset or empty")
        return token
    if file is not None:
        try:
            token = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"serve: --token-file {file}: cannot read it ({err})") from None
        if not token:
            raise ValueError(f"serve: --token-file {file}: the file is empty")
        return token
    return None


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (always True when no token is set).

    Args:
      header: the request's ``Authorization`` header, or None.
      token: the expected token, or None for an open server.

    Returns:
      True when allowed; the comparison takes the same time wherever the first difference is.

    Examples:
      >>> authorized("Bearer abc", "abc"), authorized("Bearer abd", "abc"), authorized(None, "abc")
      (True, False, False)
      >>> authorized(None, None)
      True
    """
    if token is None:
        return True
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
