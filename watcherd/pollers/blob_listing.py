"""A blob listing committed page by page: the continuation marker and each page's deletes.

SPEC §4 "Large containers". A listing is processed one page at a time and each page is
committed with the marker of the next, so a listing interrupted by a crash resumes from its
last committed page, and memory holds one page beside the snapshot.

The service lists names in order, so page k covers the names after the previous page's last
name up to its own last name (the last page: up to the end). A snapshot name in that range
that the page did not list is gone: each page carries its own deletes, and nothing waits for
the end of the listing. Names compare as the service orders them: by UTF-16 code units
(Azurite, and .NET's ordinal order), which UTF-8 bytes agree with unless names hold both a
character above U+FFFF (an emoji) and one in U+E000–U+FFFF (full-width forms): only then are
the names keyed (`listing_order`, `needs_order`). A page that still deletes a name a later
page lists again (a service ordering otherwise) has it put back, not run as new (`blob`).

Pure: no I/O.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

__all__ = ["ListingMarker", "listing_order", "needs_order", "range_deletes"]

Order = Callable[[bytes], bytes]

_HIGH = re.compile(rb"[\xee-\xf4]")  # UTF-8 lead bytes of U+E000 and above


def listing_order(name: bytes) -> bytes:
    """A name's key in the service's listing order: its UTF-16 code units."""
    return name.decode("utf-8", "surrogateescape").encode("utf-16-be", "surrogatepass")


def needs_order(names: Sequence[bytes]) -> bool:
    """Whether byte order may differ from the listing's among `names` (then they are keyed
    by `listing_order`): some name holds a character at U+E000 or above (one kind of the
    two whose orders differ; the other, above U+FFFF, also starts with such a byte)."""
    return _HIGH.search(b"/".join(names)) is not None


@dataclass(frozen=True, slots=True)
class ListingMarker:
    """Where an interrupted listing resumes.

    Attributes:
        token: the service's continuation marker for the next page.
        after: the last name the committed pages covered (their deletes went that far), or
            None when no page listed a name yet.
        baseline: the interrupted listing is the baseline (its rest starts nothing unless
            `initial = "fire"`, and events wait until it ends).
    """

    token: str
    after: bytes | None
    baseline: bool

    def encode(self) -> str:
        """The marker as stored with the snapshot."""
        after = None if self.after is None else self.after.hex()
        return json.dumps({"v": 1, "token": self.token, "after": after, "baseline": self.baseline})

    @classmethod
    def decode(cls, text: str | None) -> ListingMarker | None:
        """A stored marker, or None when there is none (or it is not one of ours)."""
        if not text:
            return None
        try:
            doc = json.loads(text)
            after = doc["after"]
            marker = cls(
                token=str(doc["token"]),
                after=None if after is None else bytes.fromhex(after),
                baseline=bool(doc["baseline"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return marker if marker.token else None


def range_deletes(
    known: Sequence[bytes],
    after: bytes | None,
    end: bytes | None,
    listed: Container[bytes],
    current: Container[bytes],
    order: Order | None = None,
) -> list[bytes]:
    """The snapshot names a page shows gone.

    Args:
        known: the snapshot's names when the listing started, sorted (by `order` if given).
        after: the previous page's last name (None: from the start).
        end: this page's last name (None: to the end, for the last page).
        listed: the names this page listed.
        current: the snapshot now (a name it no longer has is not deleted twice).
        order: the listing's key of a name (`listing_order`), None for byte order.

    Returns:
        The names in (after, end] that the page did not list, in name order.
    """
    if order is None:
        lo = 0 if after is None else bisect.bisect_right(known, after)
        hi = len(known) if end is None else bisect.bisect_right(known, end, lo)
    else:
        lo = 0 if after is None else bisect.bisect_right(known, order(after), key=order)
        hi = len(known) if end is None else bisect.bisect_right(known, order(end), lo, key=order)
    return [n for n in known[lo:hi] if n not in listed and n in current]
