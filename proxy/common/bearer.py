"""``Authorization: Bearer <token>``, read once and compared in constant time.

The data plane's gateway keys and the admin API's token used to be parsed by two copies
of the same three lines; one of them is now the only place a credential is read.
"""

from __future__ import annotations

import hmac
from typing import Iterable


def bearer_token(header: str | None) -> bytes | None:
    """The token of a Bearer ``Authorization`` header, or None for any other scheme."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def token_matches(header: str | None, accepted: Iterable[bytes]) -> bool:
    """Whether the header carries one of ``accepted``. Every key is compared, so the time
    taken says nothing about which key (or how much of one) matched."""
    given = bearer_token(header)
    ok = False
    for key in accepted:
        ok |= hmac.compare_digest(given if given is not None else b"", key)
    return ok and given is not None
