"""Response compression (gzip, br, zstd) negotiated per response, streamed per upstream read.

Built once per snapshot: `build_route_compression(host)` gives a `RouteCompression` (the
host's enabled encodings and each location's override: a location's `compression` that is
not None replaces the host's list for its path, `[]` turns it off there) or None when no
path of the host compresses, so a host without compression pays one attribute check per
response (`route.compression is not None` in `upstream_head`) and, per body piece and per
upstream read, the check that its request has no encoder.

Per response (`RouteCompression.response(...)`, called from the protocols' `upstream_head`,
HTTP/1.1 and HTTP/2 alike, and so also for answers the cache serves through that path):

1. the encodings enabled for the request path; none -> untouched;
2. the response must have a compressible Content-Type (`compressible()`: text/*, JSON,
   JavaScript, XML, the +json / +xml suffixes, SVG, WebAssembly, fonts that are not
   already compressed, ...; the list of nginx/Caddy defaults) and no
   `Cache-Control: no-transform`; otherwise untouched;
3. such a response always gets `Vary: Accept-Encoding` (merged into an existing Vary,
   never twice, never next to `Vary: *`), even when this client gets identity: a cache
   in front must not hand one client's encoding to another;
4. it is compressed only when: not HEAD, status not 1xx/204/206/304, the request has no
   Range header, the response has no Content-Encoding other than identity, the body is at
   least `MIN_LENGTH` bytes when Content-Length is known (an unknown length is compressed),
   the client can take a body of unknown length (HTTP/1.1 chunked or HTTP/2; HTTP/1.0
   clients get identity rather than a close-delimited body that would cost them their
   keep-alive connection) and `choose()` finds an encoding the client accepts;
5. compressing, the headers change: Content-Length goes (HTTP/1.1 answers chunked, HTTP/2
   without content-length), `Content-Encoding: <name>` is added, a strong ETag becomes
   weak (`W/"..."`: the bytes differ from the identity representation's), Accept-Ranges
   goes (ranges of the encoded body are not offered).

Negotiation (`parse_accept_encoding`, `choose`; RFC 9110 §12.5.3): codings are
case-insensitive, `x-gzip` is gzip, a coding's weight is its own q, else the q of `*`, else
0; q=0 refuses. The highest q wins; ties go to the server's preference zstd > br > gzip
among the encodings enabled for the path. An explicitly listed `identity` with a higher q
than the best coding wins (identity). No Accept-Encoding, or an empty one, means identity.
A malformed header (bad token, q outside 0..1 with at most three decimals, parameters
other than q) means no compression, never an error. Choices are memoised per
(Accept-Encoding value, enabled list) in a bounded dict on the route, since browsers send
a handful of distinct values.

Levels (moderate, for on-the-fly work on the reactor thread): gzip 5 (zlib, wbits=31 for
the gzip wrapper; the ratio of 6 to 9 for a fraction of the CPU, about nginx/Caddy's
choice), br 4 (brotli quality 4: still faster than gzip 6 on text with a better ratio;
5 and up cost noticeably more per byte and 10-11 are for static pre-compression), zstd 3
(the library's default level: fastest of the three at a ratio between gzip and br).
Measured figures: docs/performance.md, "## Compression". Memory per response being
compressed, measured: gzip ~256 KiB, br ~0.85 MiB, zstd ~1 MiB (freed at the end).

Streaming and flushing: each upstream body piece is fed to the encoder as it arrives and
whatever the encoder emits is sent at once; the encoder buffers at most one block, so a
body of any size streams in bounded memory. When the response length is unknown (chunked
or close-delimited upstream: event streams, long polls, progressive pages) the encoder is
flushed (zlib Z_SYNC_FLUSH, brotli flush, zstd FLUSH_BLOCK) once per upstream read, at the
protocol's uncork -- not per piece: a read carrying many small chunks is compressed as one
run, so a chatty upstream does not pay a flush (a few bytes and a reset of the block) per
chunk, while no byte waits longer than the read it came with. A body with a known
Content-Length is not flushed before its end (better ratio, less CPU): it is a download,
not an interactive stream. `finish()` at upstream_done ends the stream (gzip trailer,
brotli/zstd last block).

State (the chosen encoder) lives on the request / HTTP/2 stream, never on the upstream
connection, and the choice is made once per response, not per piece.
"""
import re
import zlib

import brotli
import zstandard

ENCODINGS = ("zstd", "br", "gzip")           # server preference, best first
LEVELS = {"gzip": 5, "br": 4, "zstd": 3}
MIN_LENGTH = 1024                            # bodies of a known length below this are not compressed
_MEMO_LIMIT = 256                            # memoised negotiations per route path set

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_QVALUE = re.compile(rb"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")
_OWS = b" \t"

# Compressible media types besides text/* and the +json / +xml suffixes (nginx's gzip_types
# examples and Caddy's encode defaults).
_TYPES = frozenset((
    b"application/json", b"application/javascript", b"application/x-javascript", b"application/ecmascript",
    b"application/xml", b"application/x-ndjson", b"application/ndjson", b"application/jsonl",
    b"application/yaml", b"application/x-yaml", b"application/toml", b"application/graphql",
    b"application/wasm", b"application/x-sh", b"application/x-csh", b"application/rtf",
    b"application/x-tar", b"application/vnd.ms-fontobject", b"application/x-font-ttf",
    b"application/x-font-opentype", b"application/x-font-truetype", b"application/font-sfnt",
    b"font/ttf", b"font/otf", b"font/eot", b"font/opentype", b"font/collection",
    b"image/svg+xml", b"image/x-icon", b"image/vnd.microsoft.icon", b"image/bmp",
))
_type_memo = {}


def compressible(content_type):
    """Whether a Content-Type value (bytes, parameters allowed) is worth compressing."""
    known = _type_memo.get(content_type)
    if known is not None:
        return known
    media = content_type.split(b";", 1)[0].strip(_OWS).lower()
    result = (media.startswith(b"text/") or media in _TYPES
              or media.endswith(b"+json") or media.endswith(b"+xml"))
    if len(_type_memo) < 512:
        _type_memo[content_type] = result
    return result


def parse_accept_encoding(value):
    """{coding (lower-case bytes): q (float)} for an Accept-Encoding value, or None when it
    is malformed. Empty list elements are allowed (RFC 9110 §5.6.1); the first weight
    given for a coding counts; `x-gzip` is `gzip`."""
    result = {}
    for item in value.split(b","):
        item = item.strip(_OWS)
        if not item:
            continue
        coding, semi, params = item.partition(b";")
        coding = coding.rstrip(_OWS).lower()
        if not _TOKEN.match(coding):
            return None
        q = 1.0
        if semi:
            name, eq, qvalue = params.strip(_OWS).partition(b"=")
            if name.rstrip(_OWS).lower() != b"q" or not eq:
                return None
            qvalue = qvalue.lstrip(_OWS)
            if not _QVALUE.match(qvalue):
                return None
            q = float(qvalue)
        if coding == b"x-gzip":
            coding = b"gzip"
        result.setdefault(coding, q)
    return result


def choose(accept, enabled):
    """The encoding (str) to use for a client whose Accept-Encoding value is `accept`
    (bytes, None when absent), among `enabled` (names, any order), or None (identity)."""
    if not accept:
        return None
    weights = parse_accept_encoding(accept)
    if not weights:
        return None
    star = weights.get(b"*", 0.0)
    best = None
    best_q = 0.0
    for name in ENCODINGS:
        if name in enabled:
            q = weights.get(name.encode("ascii"), star)
            if q > best_q:
                best, best_q = name, q
    if best is None:
        return None
    identity = weights.get(b"identity")
    if identity is not None and identity > best_q:
        return None
    return best


# -- encoders -----------------------------------------------------------------------------

class _Encoder:
    """A streaming encoder: `compress(piece)` returns what can be sent now (often b""),
    `flush()` what was fed since the last flush (only when `streaming`), `finish()` the
    rest with the end of the stream."""
    __slots__ = ("name", "streaming", "pending", "raw")

    def __init__(self, name, streaming):
        self.name = name
        self.streaming = streaming
        self.pending = False
        self.raw = self._new()

    def compress(self, data):
        self.pending = True
        return self._compress(data)

    def flush(self):
        if not (self.pending and self.streaming):
            return b""
        self.pending = False
        return self._flush()

    def finish(self):
        self.pending = False
        return self._finish()


class GzipEncoder(_Encoder):
    __slots__ = ()

    def _new(self):
        return zlib.compressobj(LEVELS["gzip"], zlib.DEFLATED, 31)

    def _compress(self, data):
        return self.raw.compress(data)

    def _flush(self):
        return self.raw.flush(zlib.Z_SYNC_FLUSH)

    def _finish(self):
        return self.raw.flush(zlib.Z_FINISH)


class BrotliEncoder(_Encoder):
    __slots__ = ()

    def _new(self):
        return brotli.Compressor(quality=LEVELS["br"])

    def _compress(self, data):
        return self.raw.process(data)

    def _flush(self):
        return self.raw.flush()

    def _finish(self):
        return self.raw.finish()


_zstd_contexts = []          # finished ZstdCompressors, reused: making a context costs as much as a 16 KiB body
_ZSTD_KEEP = 16


class ZstdEncoder(_Encoder):
    __slots__ = ("context",)

    def _new(self):
        # A context serves one stream at a time: each response takes its own (a free one
        # when there is one; the engine's reactor thread is the only user) and gives it
        # back at the end. A response abandoned midway leaves its context to the GC.
        self.context = _zstd_contexts.pop() if _zstd_contexts else zstandard.ZstdCompressor(level=LEVELS["zstd"])
        return self.context.compressobj()

    def _compress(self, data):
        return self.raw.compress(data)

    def _flush(self):
        return self.raw.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def _finish(self):
        data = self.raw.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        context = self.context
        if context is not None:
            self.context = None
            if len(_zstd_contexts) < _ZSTD_KEEP:
                _zstd_contexts.append(context)
        return data


ENCODERS = {"gzip": GzipEncoder, "br": BrotliEncoder, "zstd": ZstdEncoder}


def encoder(name, streaming=True):
    """A fresh encoder for `name` ("gzip", "br", "zstd")."""
    return ENCODERS[name](name, streaming)


# -- header edits -------------------------------------------------------------------------

def weaken_etag(value):
    """A strong entity tag made weak (`"x"` -> `W/"x"`); a weak one is returned as is."""
    value = value.strip(_OWS)
    return value if value[:2] == b"W/" or not value else b"W/" + value


def _vary_has(values):
    """Whether Vary values (bytes) already cover Accept-Encoding (or are `*`)."""
    for value in values:
        for token in value.split(b","):
            token = token.strip(_OWS).lower()
            if token == b"accept-encoding" or token == b"*":
                return True
    return False


def edit_headers(headers, encoding):
    """The response header triples as sent to the client: Vary merged with Accept-Encoding
    and, when `encoding` (str) is not None, the compression edits (Content-Encoding added,
    identity Content-Encoding / Content-Length / Accept-Ranges dropped, ETag weakened).
    Returns `headers` itself when nothing changes."""
    varies = [value for lname, _, value in headers if lname == b"vary"]
    add_vary = not _vary_has(varies)
    if encoding is None and not add_vary:
        return headers
    out = []
    for triple in headers:
        lname = triple[0]
        if lname == b"vary":
            if add_vary:
                continue                 # merged into one line below
        elif encoding is not None:
            if lname == b"content-length" or lname == b"accept-ranges" or lname == b"content-encoding":
                continue
            if lname == b"etag":
                triple = (lname, triple[1], weaken_etag(triple[2]))
        out.append(triple)
    if add_vary:
        out.append((b"vary", b"Vary", b", ".join(varies + [b"Accept-Encoding"])))
    if encoding is not None:
        out.append((b"content-encoding", b"Content-Encoding", encoding.encode("ascii")))
    return out


# -- per route ----------------------------------------------------------------------------

def request_path(target):
    """The path of a request target (origin or absolute form), without the query."""
    if target[:1] != b"/":
        scheme = target.find(b"://")
        if scheme >= 0:
            slash = target.find(b"/", scheme + 3)
            target = b"/" if slash < 0 else target[slash:]
    query = target.find(b"?")
    return target if query < 0 else target[:query]


class Enabled:
    """The encodings enabled for one host or location, with its memo of negotiations."""
    __slots__ = ("names", "memo")

    def __init__(self, names):
        self.names = tuple(n for n in ENCODINGS if n in names)     # preference order, no duplicates
        self.memo = {}

    def choose(self, accept):
        memo = self.memo
        choice = memo.get(accept, ...)
        if choice is ...:
            choice = choose(accept, self.names)
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo[accept] = choice
        return choice


class RouteCompression:
    """A proxy route's compression: `for_path(path)` gives the `Enabled` for a request path
    (longest location prefix with its own list, else the host's) or None (off there)."""
    __slots__ = ("host", "locations")

    def __init__(self, host, locations):
        self.host = host
        self.locations = locations

    def for_path(self, path):
        for prefix, enabled in self.locations:
            if path.startswith(prefix):
                return enabled
        return self.host

    def response(self, target, request_headers, is_head, status, headers, content_length, chunked_ok):
        """(headers for the client, encoder or None) for one response: see the module doc.
        `target` is the request's path (the protocols pass the one routing already took out
        of the target, for which `request_path` is a no-op) or a whole target; `request_headers` are the request's (lower_name, name, value) triples; `headers`
        the upstream response's; `chunked_ok` whether the client takes a body of unknown
        length (HTTP/1.1, HTTP/2)."""
        enabled = self.for_path(request_path(target)) if self.locations else self.host
        if enabled is None or status < 200 or status == 204:
            return headers, None
        content_type = None
        content_encoding = None
        for lname, _, value in headers:
            if lname == b"content-type":
                content_type = value
            elif lname == b"content-encoding":
                value = value.strip(_OWS).lower()
                if value != b"identity":
                    content_encoding = value
            elif lname == b"cache-control" and b"no-transform" in value.lower():
                return headers, None
        if content_type is None or not compressible(content_type):
            return headers, None
        name = None
        if (not is_head and status != 206 and status != 304 and content_encoding is None and chunked_ok
                and (content_length is None or content_length >= MIN_LENGTH)):
            accept = None
            for lname, _, value in request_headers:
                if lname == b"range":
                    accept = None
                    break
                if lname == b"accept-encoding":
                    accept = value if accept is None else accept + b"," + value
            else:
                if accept is not None:
                    name = enabled.choose(accept)
        edited = edit_headers(headers, name)
        if name is None:
            return edited, None
        return edited, ENCODERS[name](name, content_length is None)


def build_route_compression(host):
    """The `RouteCompression` of a `ProxyHost`, or None when no path of it compresses."""
    host_enabled = Enabled(host.compression) if host.compression else None
    any_enabled = host_enabled is not None
    locations = []
    for loc in sorted(host.locations, key=lambda loc: len(loc.path), reverse=True):
        if loc.compression is None:
            enabled = host_enabled
        else:
            enabled = Enabled(loc.compression) if loc.compression else None
            any_enabled = any_enabled or enabled is not None
        locations.append((loc.path.encode("ascii"), enabled))
    if not any_enabled:
        return None
    return RouteCompression(host_enabled, tuple(locations))
