"""The SPDY/3 header-compression dictionary.

Transcribed from the byte table in moby/spdystream ``spdy/dictionary.go``
(identical to Go's old ``go.net/spdy`` ``headerDictionaryV3`` and the SPDY
draft 3 spec, section 2.6.10.1): 66 length-prefixed header words, then a
block of raw text. Its length (1423) and Adler-32 (the DICTID every peer puts
in its zlib header) are checked by the tests against real kubectl traffic.
"""

from __future__ import annotations

import struct

_WORDS = [
    *(
        "options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control connection "
    "content-base content-encoding content-language content-length content-location "
    "content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status"
    ).split(),
    "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
]

_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    "502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found"
    "500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)

HEADER_DICTIONARY: bytes = b"".join(
    struct.pack(">I", len(w)) + w.encode("ascii") for w in _WORDS
) + _TAIL.encode("ascii")

# zlib.adler32(HEADER_DICTIONARY): the DICTID in every SPDY/3 header block.
HEADER_DICTIONARY_ADLER32 = 0xE3C6A7C2
