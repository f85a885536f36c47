"""E-mail address syntax checks and normalisation, fast enough for lists of millions.

The local part is checked with a regular expression (plain ASCII dot-atom: the workers
submit without SMTPUTF8, so nothing else could be sent) and the domain with email-validator
once per distinct domain (cached), which also turns an internationalised domain into its
ASCII (punycode) form.
"""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

# RFC 5322 dot-atom of atext characters.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


class InvalidAddress(ValueError):
    """The address is not usable; the message says why in plain words."""


@lru_cache(maxsize=65536)
def _domain(domain: str) -> str:
    """The normalised domain, or InvalidAddress. `.test` domains are allowed (local stacks use them)."""
    try:
        result = validate_email(f"x@{domain}", check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    return result.ascii_domain.lower()


def normalise_address(raw: str) -> str:
    """Strip, check the syntax and lower-case the whole address; raises InvalidAddress."""
    address = raw.strip()
    if not address:
        raise InvalidAddress("the address is empty")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise InvalidAddress("an address needs a part before and after an @-sign")
    if len(address) > 254:
        raise InvalidAddress("the address is longer than 254 characters")
    if not local.isascii():
        raise InvalidAddress("letters to addresses with non-ASCII characters before the @-sign cannot be sent")
    if len(local) > 64:
        raise InvalidAddress("the part before the @-sign is longer than 64 characters")
    if not _LOCAL_RE.fullmatch(local):
        try:  # for its precise explanation
            validate_email(address, check_deliverability=False, test_environment=True)
        except EmailNotValidError as exc:
            raise InvalidAddress(str(exc)) from None
        raise InvalidAddress("the part before the @-sign has characters that are not allowed")
    return f"{local.lower()}@{_domain(domain)}"
