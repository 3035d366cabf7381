"""Response headers of the HTTP endpoints: caching, framing, and which pages may read them.

- **The viewer page** (:func:`page_headers`): a Content-Security-Policy under which it loads
  nothing from elsewhere, ``Referrer-Policy: no-referrer`` (its URL may hold the token), and
  no framing by other sites: ``frame-ancestors 'self'`` plus the allowed origins, and
  ``X-Frame-Options: SAMEORIGIN`` for browsers without ``frame-ancestors`` (browsers that have
  it ignore ``X-Frame-Options``). Inside a frame the page is same-origin and would be admitted,
  so a page that framed it could hold viewer places (and see the camera) on its visitors'
  machines.
- **The frame endpoints** (:func:`frame_headers`; ``/snapshot.jpg``, ``/stream.mjpg``,
  ``/stats.json``, ``/healthz``): never cached; ``Cross-Origin-Resource-Policy: same-origin``
  (``cross-origin`` when other origins are allowed); ``Vary: Origin``; and for a page of an
  allowed origin, CORS: ``Access-Control-Allow-Origin`` naming that origin, so it can
  ``fetch()`` them. Pages of other origins get no CORS header: the browser keeps the response
  from them.
- **CORS preflights** (:func:`preflight`): ``OPTIONS`` from an allowed origin (a ``fetch()``
  with ``Authorization: Bearer``) is answered 204 with the methods and headers it may use.
"""

from __future__ import annotations

from typing import Mapping

from .policy import AccessPolicy, RequestLike

__all__ = ["CORS_PATHS", "frame_headers", "no_store", "page_headers", "preflight"]

CORS_PATHS = frozenset({
    "/snapshot.jpg", "/stream.mjpg", "/stats.json", "/healthz", "/cameras.json",
})
"""The endpoints pages of allowed origins may read with ``fetch()``."""

_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate", "Pragma": "no-cache"}
_PAGE_CSP = (
    # The page is one file with inline script and style; it may talk to its own server only
    # (ws:/wss: are listed because older browsers do not count them as 'self').
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'"
)
_PREFLIGHT_MAX_AGE_S = 600


def no_store() -> dict[str, str]:
    """Headers that keep a response out of every cache."""
    return dict(_NO_STORE)


def page_headers(policy: AccessPolicy) -> dict[str, str]:
    """Headers of the viewer page (and any HTML camstream serves)."""
    return {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": f"{_PAGE_CSP}; frame-ancestors {policy.frame_ancestors}",
        "X-Frame-Options": "SAMEORIGIN",
    }


def frame_headers(policy: AccessPolicy, request: RequestLike) -> dict[str, str]:
    """Headers of a frame endpoint's responses to ``request``, refusals included (so a page of
    an allowed origin can read why it was refused)."""
    corp = "cross-origin" if policy.other_origins_allowed else "same-origin"
    headers = {**_NO_STORE, "Cross-Origin-Resource-Policy": corp, "Vary": "Origin"}
    origin = policy.cors_origin(request)
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = "Retry-After, WWW-Authenticate"
    return headers


def preflight(policy: AccessPolicy, request: RequestLike) -> tuple[int, bytes, dict[str, str]]:
    """The answer to an ``OPTIONS`` request on a frame endpoint: status, body, headers.

    From an allowed origin: 204 with ``GET`` / ``HEAD`` and the ``Authorization`` header
    allowed (cached by the browser for 10 minutes). From another origin: 403 without any
    CORS header, so the browser refuses the request it wanted to make. Without ``Origin``
    (not a preflight): 204 with ``Allow``.
    """
    headers: Mapping[str, str]
    if request.origin is None:
        return 204, b"", {"Allow": "GET, HEAD, OPTIONS"}
    origin = policy.cors_origin(request)
    if origin is None:
        return 403, b"origin not allowed\n", {"Vary": "Origin"}
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, HEAD",
        "Access-Control-Allow-Headers": "Authorization",
        "Access-Control-Max-Age": str(_PREFLIGHT_MAX_AGE_S),
        "Vary": "Origin, Access-Control-Request-Headers",
    }
    if request.headers.get("access-control-request-private-network", "").lower() == "true":
        # Chromium's Private Network Access: a public page asking for a local server.
        headers = {**headers, "Access-Control-Allow-Private-Network": "true"}
    return 204, b"", dict(headers)
