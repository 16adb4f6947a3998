"""Credentials never leave the process: the password of every URL in a text is masked wherever that text
is printed, logged, published or served (``rtsp://admin:***@camera/stream``).

A password may sit in any setting that can hold a URL (a stream's ``url``, a GStreamer ``pipeline``, a
camera's ``device``), in the file or in an ``NFNET_*`` variable, and reach an error through a value quoted
in it, a reload's list of changes, a source's own error, a stream's status. Masking the whole text where it
leaves the process covers every such path at once.
"""

from __future__ import annotations

import re

# scheme://user:password@ — the password runs to the token's last "@" (an unescaped "@" in a password is
# common); a token ends at whitespace or a quote (a URL quoted in a repr, a JSON string).
_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s'\"/@:]*):[^\s'\"]*@")


def mask_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1:***@", text)
