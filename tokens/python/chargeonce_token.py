"""Signs ChargeOnce order tokens on a storefront's server: what the edge checks
before it forwards an order (README, "Order tokens"; protocol/src/token.rs is
the reference). Standard library only.

    from chargeonce_token import sign_order_token
    token = sign_order_token(
        {"order_ref": "ord_1042", "amount": 1999, "currency": "usd",
         "customer": "cus_1", "expires_at": int(time.time()) + 900},
        os.environ["ORDER_TOKEN_SECRET"])

Format: ``v1.<payload>.<mac>``; payload is base64url (no padding) of the claims
as JSON, in this order and without spaces; mac is base64url of HMAC-SHA256 over
``chargeonce-order-token.v1.<payload>``.
"""

import base64
import hashlib
import hmac
import json

__all__ = ["MIN_SECRET_BYTES", "OrderTokenError", "sign_order_token"]

#: The shortest secret the edge accepts, in bytes (token::MIN_SECRET_LEN).
MIN_SECRET_BYTES = 32

#: The largest amount every signer holds exactly (JavaScript's 2^53 - 1).
MAX_WHOLE = 2**53 - 1

_CLAIMS = ("order_ref", "amount", "currency", "customer", "expires_at")
_STRINGS = ("order_ref", "currency", "customer")


class OrderTokenError(ValueError):
    """Claims or a secret the edge would never accept; ``field`` names which."""

    def __init__(self, field, message):
        super().__init__(f"order token: {field} {message}")
        self.field = field


def sign_order_token(claims, secret):
    """Signs ``claims`` (a mapping of order_ref, amount, currency, customer and
    expires_at) with ``secret`` (str, taken as UTF-8, or bytes) and returns the
    token. Raises OrderTokenError for a secret under 32 bytes, an amount that is
    not a positive whole number (of at most 2^53 - 1), or a missing, extra or
    mistyped claim."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_SECRET_BYTES:
        raise OrderTokenError("secret", f"must be at least {MIN_SECRET_BYTES} bytes")
    # ensure_ascii=False: serde_json writes non-ASCII characters as they are.
    text = json.dumps(_checked(claims), separators=(",", ":"), ensure_ascii=False)
    payload = _base64url(text.encode("utf-8"))
    mac = hmac.new(bytes(key), f"chargeonce-order-token.v1.{payload}".encode("ascii"), hashlib.sha256)
    return f"v1.{payload}.{_base64url(mac.digest())}"


def _checked(claims):
    if not isinstance(claims, dict):
        raise OrderTokenError("claims", "must be a dict")
    for name in claims:
        if name not in _CLAIMS:
            raise OrderTokenError(name, "is not a claim the edge knows")
    for name in _STRINGS:
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise OrderTokenError(name, "must be a non-empty string")
    for name in ("amount", "expires_at"):
        value = claims.get(name)
        # bool is an int in Python; the edge reads true as no number at all.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_WHOLE:
            raise OrderTokenError(name, f"must be a positive whole number up to 2^53 - 1, not {value!r}")
    return {name: claims[name] for name in _CLAIMS}


def _base64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
