"""One default TLS context per test process, shared by every httpx client made there.

httpx makes a new SSLContext for each client (httpx.get makes a client), loading certifi's
bundle: some 23 ms of CPU each, where a request on loopback takes a fraction of one. The
tests make many short-lived clients (a live server's start asks /healthz every 0.1 s), and
on two cores CPU is what the suite's time is made of. A client asking for the default
verification gets the context it got before, made once; any other (a CA file, a context of
its own, a client certificate) is made as before.
"""

from __future__ import annotations

import functools
import ssl

from httpx._transports import default

_make = default.create_ssl_context


@functools.cache
def _default_context(verify: bool, trust_env: bool) -> ssl.SSLContext:
    return _make(verify=verify, cert=None, trust_env=trust_env)


def _create_ssl_context(
    verify: ssl.SSLContext | str | bool = True, cert: object = None, trust_env: bool = True
) -> ssl.SSLContext:
    if isinstance(verify, bool) and cert is None:
        return _default_context(verify, trust_env)
    return _make(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[arg-type]


def share_default_context() -> None:
    """From now on in this process, clients with the default verification share a context."""
    default.create_ssl_context = _create_ssl_context
