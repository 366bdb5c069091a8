"""The chat client's urllib plumbing: an opener that follows no redirect, and a deadline per
exchange.

``build_opener()`` gives the private opener of ``openai_chat.OpenAICaptioner``: proxy settings
read from the environment when it is built, no global opener picked up, and no redirect
followed (urllib's default would resend the ``Authorization`` header to whatever address a
3xx names). A request given a ``deadline`` attribute (a ``Deadline``) gets a connection whose
socket the deadline watches from the moment it is connected, so ``deadline_s`` bounds the
whole exchange, however slowly the server sends. ``origin(url)`` names a URL's origin for
messages.
"""

from __future__ import annotations

import functools
import http.client
import os
import socket
import threading
import urllib.parse
import urllib.request

# the name of every thread the client starts (its pool's workers and the deadline timers)
THREAD_NAME_PREFIX = "openai-captioner"


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: the 3xx reaches the caller as an ``HTTPError``, which refuses it.

    urllib would otherwise resend the request, ``Authorization`` header included, to any
    address in ``Location`` (another host, another port, plain http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Deadline:
    """Ends one HTTP exchange ``seconds`` after it began, however slowly the server sends.

    ``timeout_s`` bounds each socket operation, so a server that sends a byte at a time
    keeps a request alive for ever. A timer shuts the connection down at the deadline, which
    ends a blocked connect-tunnel, TLS handshake or read at once. It shuts down its own
    duplicate of the socket's descriptor (same connection, a descriptor nobody else closes),
    so it can never touch a descriptor number that was closed and reused meanwhile."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._copies: list[socket.socket] = []
        self._closed = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.name = f"{THREAD_NAME_PREFIX}-deadline"
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            for copy in self._copies:
                copy.close()
            self._copies.clear()

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock``'s connection at the deadline (at once if it has passed)."""
        with self._lock:
            if self._closed:
                return
            try:
                copy = socket.socket(fileno=os.dup(sock.fileno()))
            except OSError:
                return
            self._copies.append(copy)
            if self.expired:
                _shut(copy)

    def _expire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = True
            for copy in self._copies:
                _shut(copy)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side


class _WatchedConnection:
    """An ``http.client`` connection whose socket ``deadline`` watches from the moment it is
    connected (before any proxy tunnel or TLS handshake)."""

    def __init__(self, *args, deadline: Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        self._create_connection = self._create_watched

    def _create_watched(self, *args, **kwargs) -> socket.socket:
        sock = socket.create_connection(*args, **kwargs)
        self._deadline.watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
    pass


_WATCHED = {
    http.client.HTTPConnection: _WatchedHTTPConnection,
    http.client.HTTPSConnection: _WatchedHTTPSConnection,
}


class _DeadlineOpen:
    """urllib handler mixin: a request with a ``deadline`` attribute gets a watched
    connection."""

    def do_open(self, http_class, req, **kwargs):
        deadline = getattr(req, "deadline", None)
        if deadline is not None and http_class in _WATCHED:
            http_class = functools.partial(_WATCHED[http_class], deadline=deadline)
        return super().do_open(http_class, req, **kwargs)


class _HTTPHandler(_DeadlineOpen, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineOpen, urllib.request.HTTPSHandler):
    pass


def build_opener() -> urllib.request.OpenerDirector:
    """A private opener: proxy settings are read from the environment now, no global opener
    installed elsewhere is picked up, no redirect is followed, and a request's ``deadline``
    is enforced."""
    return urllib.request.build_opener(_RefuseRedirects, _HTTPHandler, _HTTPSHandler)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (no path, query or credentials)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
