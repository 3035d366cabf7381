"""Who may watch: the token, Origin, Host and cross-site rules, in one object. No I/O.

:class:`AccessPolicy` answers one question for a request, WebSocket upgrade or plain HTTP
alike: may it watch, and if not, why (:class:`Refusal`). The WebSocket side closes the
connection with :attr:`Refusal.close_code`, the HTTP side answers :attr:`Refusal.http_status`.

The rules, in order:

1. **Token.** With a token, the request must carry it (``?token=`` or
   ``Authorization: Bearer``), compared in constant time: ``token required`` /
   ``invalid token`` (1008 / 401 with ``WWW-Authenticate: Bearer``).
2. **Host (DNS rebinding).** A server listening on loopback only accepts only ``Host`` names of
   this machine (``localhost``, ``127.x.y.z``, ``[::1]``), as received (a trusted proxy sends
   its upstream's name): ``host not allowed`` (1008 / 403).
3. **Origin.** A browser page's ``Origin`` must be the server's own (same host as the one the
   client asked for, ``X-Forwarded-Host`` through a trusted proxy) or listed in
   ``allowed_origins`` (``"*"``: any): ``origin not allowed`` (1008 / 403).
4. **Cross-site embedding.** A request without Origin that a browser marks
   ``Sec-Fetch-Site: cross-site`` or ``same-site`` (an ``<img>`` on another page) is refused
   unless other origins are allowed: ``cross-site request not allowed`` (1008 / 403).

Which client a request is (its address, scheme and host through trusted proxies) is decided
here too, by :func:`camstream.web.proxy.resolve`.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol

from .. import logs
from ..protocol import CloseCode
from .proxy import ClientView, Network, is_trusted, resolve

__all__ = ["AccessPolicy", "Refusal", "RequestLike", "is_loopback_name"]

_VIEW_ATTRIBUTE = "_camstream_client_view"  # (policy, ClientView) kept on a request by client_of
_CSP_ORIGIN = re.compile(r"https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
"""An allowed origin that can go in a CSP source list as it is (lower-cased already)."""
_TOKEN_REMEDY = {  # never the token's text, whichever token was offered
    "token required": "the server has a token (--token, CAMSTREAM_TOKEN, Streamer(token=...)); "
    "the client must send it as ?token= or Authorization: Bearer",
    "invalid token": "the client sent a token that is not the server's (--token, "
    "CAMSTREAM_TOKEN, Streamer(token=...))",
}


class RequestLike(Protocol):
    """What the policy reads of a request (``transport.Request`` has it)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def remote_address(self) -> tuple[str, int]: ...

    @property
    def origin(self) -> str | None: ...


@dataclass(frozen=True)
class Refusal:
    """Why a request may not watch.

    Attributes:
        reason: the words sent to the client (close reason or response body).
        unauthenticated: True for a missing or wrong token (HTTP 401), False for a request
            from the wrong place (HTTP 403).
    """

    reason: str
    unauthenticated: bool = False
    remedy: str = field(default="", compare=False)
    """For the server's log: what was refused and what lifts it (the option to set). Client
    text in it is escaped (:func:`camstream.logs.printable`); it never holds a token."""

    @classmethod
    def for_origin(cls, origin: str) -> Refusal:
        """The refusal of a page of ``origin`` (as the browser sent it)."""
        shown = logs.printable(origin)
        return cls("origin not allowed", remedy=(
            f"a page of {shown}; to admit it: --allow-origin {shown} "
            f"(Streamer(allowed_origins=[...]))"
        ))

    @property
    def log_text(self) -> str:
        """The reason with its remedy, for one log line."""
        return f"{self.reason} ({self.remedy})" if self.remedy else self.reason

    @property
    def close_code(self) -> int:
        """The WebSocket close code: 1008 (policy violation) for every refusal."""
        return CloseCode.POLICY_VIOLATION

    @property
    def http_status(self) -> int:
        """401 for the token rule, 403 for the others."""
        return 401 if self.unauthenticated else 403


class AccessPolicy:
    """The access rules of one server (see the module docstring). Immutable; thread-safe.

    Args:
        token: the token clients must present, or None for none.
        allowed_origins: browser origins admitted besides the server's own pages (``"*"``:
            all), or None for same-origin only.
        listen_host: the address the server listens on (the Host rule applies on loopback).
        trusted_proxies: reverse-proxy networks, as
            :func:`camstream.web.proxy.parse_trusted_proxies` returns them.
        tls: whether the server's own connections are encrypted.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        allowed_origins: Iterable[str] | None = None,
        listen_host: str = "127.0.0.1",
        trusted_proxies: tuple[Network, ...] = (),
        tls: bool = False,
    ) -> None:
        self._token = token
        self._allowed_origins = (
            None if allowed_origins is None
            else frozenset(o.rstrip("/").lower() for o in allowed_origins)
        )
        self._trusted_proxies = trusted_proxies
        self._tls = tls
        self._loopback = _is_loopback_address(listen_host)

    @property
    def has_token(self) -> bool:
        return self._token is not None

    @property
    def loopback(self) -> bool:
        """Whether the server listens on a loopback address only."""
        return self._loopback

    @property
    def other_origins_allowed(self) -> bool:
        """Whether pages of other origins may use the frames (``allowed_origins`` non-empty)."""
        return bool(self._allowed_origins)

    def cors_origin(self, request: RequestLike) -> str | None:
        """The ``Origin`` to answer in ``Access-Control-Allow-Origin``: the request's own, if it
        is an origin ``allowed_origins`` admits (``"*"``: any), so that such a page may read the
        response with ``fetch()``; None otherwise (no CORS header: the browser keeps the
        response from the page). Same-origin pages need none."""
        origin = request.origin
        if origin is None or not self._allowed_origins:
            return None
        origin = origin.strip()
        if not self._origin_allowed(origin.rstrip("/").lower(), self.client_of(request).host):
            return None
        return origin

    @functools.cached_property
    def frame_ancestors(self) -> str:
        """The ``frame-ancestors`` sources of the viewer page: ``'self'`` and the allowed
        origins that are plain ``scheme://host[:port]`` origins (``*`` for ``"*"``), so no
        other site can put the page in a frame (where it would connect as same-origin)."""
        allowed = self._allowed_origins or frozenset()
        if "*" in allowed:
            return "*"
        listed = sorted(o for o in allowed if _CSP_ORIGIN.fullmatch(o))
        return " ".join(["'self'", *listed])

    def refusal(self, request: RequestLike) -> Refusal | None:
        """Why ``request`` may not watch, or None if it may."""
        token_problem = self._token_problem(request)
        if token_problem is not None:
            return Refusal(token_problem, unauthenticated=True, remedy=_TOKEN_REMEDY[token_problem])
        host = request.headers.get("host", "").strip().lower()
        if host and self._loopback and not is_loopback_name(host):
            # A browser sent here through a name that is not this machine's: DNS rebinding.
            return Refusal("host not allowed", remedy=(
                f"Host {logs.printable(host)} is not a name of this machine, which a server on "
                "loopback refuses against DNS rebinding: connect to localhost or 127.0.0.1, or "
                "listen on the network with --host / host="
            ))
        origin = request.origin
        if origin is not None:
            if not self._origin_allowed(origin.rstrip("/").lower(), self.client_of(request).host):
                return Refusal.for_origin(origin)
        elif self._embedded_elsewhere(request):
            return Refusal("cross-site request not allowed", remedy=(
                "an <img> or fetch on a page of another site or port; to let pages of other "
                "origins use the frames: --allow-origin ORIGIN (Streamer(allowed_origins=[...]))"
            ))
        return None

    def authenticated(self, request: RequestLike) -> bool:
        """Whether the request carries the valid token. Always False without a token."""
        return self._token is not None and self._token_problem(request) is None

    def is_trusted_proxy(self, address: str) -> bool:
        """Whether a TCP peer is one of the trusted reverse proxies."""
        return is_trusted(address, self._trusted_proxies)

    def client_of(self, request: RequestLike) -> ClientView:
        """The client behind ``request``: the TCP peer, or the forwarded client if the peer is a
        trusted proxy. The one place that decides which address a connection is (logs,
        ``stats()``, per-address limits).

        The forwarding headers of a request are parsed once: the view is kept on the request
        (for this policy) and every later call returns it. Any thread.
        """
        cached = getattr(request, _VIEW_ATTRIBUTE, None)
        if cached is not None and cached[0] is self:
            return cached[1]  # type: ignore[no-any-return]
        view = resolve(
            request.remote_address[0], request.headers, self._trusted_proxies, tls=self._tls
        )
        try:  # two threads may both get here: both compute the same view
            setattr(request, _VIEW_ATTRIBUTE, (self, view))
        except (AttributeError, TypeError):  # a frozen or slotted request object: no cache
            pass
        return view

    def describe(self, request: RequestLike) -> str:
        """The client's address for logs; ``"<client> via <proxy>"`` through a trusted proxy."""
        client = self.client_of(request)
        if client.via_proxy:
            return f"{client.address} via {request.remote_address[0]}"
        return client.address

    def _token_problem(self, request: RequestLike) -> str | None:
        if self._token is None:
            return None
        offered = request.query.get("token")
        authorization = request.headers.get("authorization", "")
        if offered is None and authorization[:7].lower() == "bearer ":
            offered = authorization[7:].strip()
        if offered is None:
            return "token required"
        if not hmac.compare_digest(offered.encode(), self._token.encode()):
            return "invalid token"
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """Same-origin pages always; other pages only if listed (``"*"``: any page)."""
        try:
            netloc = urllib.parse.urlsplit(origin).netloc
        except ValueError:  # "http://[::1": not an origin any browser sends
            return False
        if netloc == host:
            return True
        allowed = self._allowed_origins
        return allowed is not None and ("*" in allowed or origin in allowed)

    def _embedded_elsewhere(self, request: RequestLike) -> bool:
        """A browser fetch made by a page of another site (or another port of this host), such
        as ``<img src=".../stream.mjpg">``, which carries no Origin header.

        ``same-site`` is refused too: a page on another port is another origin. Pages of other
        origins may embed frames only if some are allowed: their requests carry no Origin, so
        which one is asking cannot be told apart.
        """
        site = request.headers.get("sec-fetch-site", "").strip().lower()
        return site in ("cross-site", "same-site") and not self._allowed_origins


def is_loopback_name(host: str) -> bool:
    """Whether a Host header value names this machine: ``localhost``, ``127.x.y.z``, ``[::1]``."""
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
