"""NATS subjects for aggregates: ``<prefix>.<device>.<sensor>``.

Escaping rule (it round-trips, and no two (device, sensor) pairs share a subject):

- A character is escaped when it cannot appear in a NATS subject token, or would be ambiguous or
  invisible there: ``.`` (token separator), ``*`` and ``>`` (wildcards), ``%`` (our escape
  character), whitespace (``str.isspace``), and the Unicode categories Cc (control), Cf (format,
  e.g. zero-width joiners), Cs (lone surrogates) and Z* (separators).
- An escaped character becomes ``%XX`` for each byte of its UTF-8 encoding (upper-case hex;
  ``surrogatepass`` for lone surrogates, which Python strings can hold). Everything else, including
  ordinary non-ASCII letters such as ``ü`` or ``温``, stays as it is, so subjects stay readable.
- The empty string becomes the single character ``%``. A lone ``%`` cannot come out of the rule
  above (a literal ``%`` is ``%25``), so it is unambiguous.

Because ``.`` never survives inside an escaped token, a subject splits back into exactly
prefix + 2 tokens, and `unescape_token` inverts `escape_token`, so the mapping is injective.
"""

from __future__ import annotations

import re
import unicodedata

ESCAPE = "%"
EMPTY_TOKEN = "%"
_ALWAYS = frozenset(".*>%")
_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
_HEX = re.compile(r"(?:%[0-9A-F]{2})+")

#: Escaped tokens by raw name. The same (device, sensor) keys recur at every tick, so escaping is
#: paid once per key rather than once per aggregate; the cap bounds memory when keys churn.
#: Names longer than CACHE_NAME_MAX are escaped each time, so the cache's memory stays bounded.
CACHE_MAX = 65536
CACHE_NAME_MAX = 256
_cache: dict[str, str] = {}


def _needs_escape(ch: str) -> bool:
    if ch in _ALWAYS:
        return True
    if ch.isascii():
        # fast path: printable ASCII other than the above is always fine
        return not (" " < ch < "\x7f")
    return ch.isspace() or unicodedata.category(ch) in _CATEGORIES


def _escape(raw: str) -> str:
    if not raw:
        return EMPTY_TOKEN
    out = []
    for ch in raw:
        if _needs_escape(ch):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def escape_token(raw: str) -> str:
    """The subject token for a device or sensor name (see the module docstring for the rule)."""
    token = _cache.get(raw)
    if token is None:
        token = _escape(raw)
        if len(raw) > CACHE_NAME_MAX:
            return token
        if len(_cache) >= CACHE_MAX:
            # LRU-ish: drop the oldest eighth (dicts keep insertion order). Cheap, amortised,
            # and keys that recur every tick are re-added at once.
            for key in list(_cache)[: CACHE_MAX // 8]:
                del _cache[key]
        _cache[raw] = token
    return token


def unescape_token(token: str) -> str:
    """Inverse of `escape_token`. Raises ValueError for a token the rule cannot produce."""
    if token == EMPTY_TOKEN:
        return ""
    if not token:
        raise ValueError("empty subject token")
    pos, out = 0, []
    for m in _HEX.finditer(token):
        out.append(token[pos:m.start()])
        run = bytes.fromhex(m.group().replace("%", ""))
        try:
            out.append(run.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise ValueError(f"bad escape sequence in subject token {token!r}") from None
        pos = m.end()
    out.append(token[pos:])
    raw = "".join(out)
    # reject what escape_token would never produce (stray '%', unescaped '.', lower-case hex...)
    if _escape(raw) != token:
        raise ValueError(f"not an escaped subject token: {token!r}")
    return raw


def validate_prefix(prefix: str) -> str:
    """Returns the prefix if it is one or more valid, literal subject tokens; else ValueError."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("subject prefix must be a non-empty string such as 'agg'")
    for token in prefix.split("."):
        if not token:
            raise ValueError(f"subject prefix {prefix!r} has an empty token "
                             "(leading, trailing or doubled '.')")
        if "*" in token or ">" in token:
            raise ValueError(f"subject prefix {prefix!r} must not contain wildcards ('*', '>')")
        bad = [ch for ch in token if _needs_escape(ch) and ch != "%"]
        if bad:
            raise ValueError(f"subject prefix {prefix!r} contains whitespace or control "
                             f"characters: {bad!r}")
    return prefix


def subject_for(prefix: str, device: str, sensor: str) -> str:
    """``<prefix>.<device>.<sensor>`` with both names escaped. The prefix is trusted here
    (validate it once with `validate_prefix`): this runs once per aggregate."""
    return f"{prefix}.{escape_token(device)}.{escape_token(sensor)}"


def id_token(raw: str) -> str:
    """A name as it appears in a JetStream message id: its subject token, with ``|`` and non-ASCII
    characters percent-encoded as well. Header values stay ASCII, and since ``%`` is always
    escaped this is plain percent-encoding, so it is injective."""
    token = escape_token(raw)
    if token.isascii() and "|" not in token:
        return token
    return "".join(ch if ch.isascii() and ch != "|"
                   else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
                   for ch in token)


def msg_id(device: str, sensor: str, window_end: float) -> str:
    """JetStream deduplication id ``device|sensor|window_end``: one per (key, window), so a
    retried aggregate is stored once. Unambiguous and ASCII-only (`id_token`): no whitespace or
    control character reaches the header."""
    return f"{id_token(device)}|{id_token(sensor)}|{window_end!r}"


def late_msg_id(device: str, sensor: str, n: int | None, t: float, value: float) -> str:
    """JetStream deduplication id of a late reading, ``device|sensor|n|t|value`` (``-`` for a
    reading without a sequence number): a retry, or the same reading delivered twice by MQTT, is
    stored once. The value is in it because a reading without `t` carries the arrival time of
    its socket read, shared by every record of that read, so without `n` (key, t) alone could
    merge two distinct readings. Five fields against an aggregate id's three, so the two never
    collide in a stream that holds both."""
    seq = "-" if n is None else str(int(n))
    return f"{id_token(device)}|{id_token(sensor)}|{seq}|{float(t)!r}|{float(value)!r}"


def parse_subject(prefix: str, subject: str) -> tuple[str, str]:
    """(device, sensor) of a subject built by `subject_for`; ValueError for anything else."""
    head = prefix + "."
    if not subject.startswith(head):
        raise ValueError(f"subject {subject!r} does not start with {head!r}")
    parts = subject[len(head):].split(".")
    if len(parts) != 2:
        raise ValueError(f"subject {subject!r} is not {head}<device>.<sensor>")
    return unescape_token(parts[0]), unescape_token(parts[1])
