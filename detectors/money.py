"""Money as people read it, from integer minor units.

Detectors receive money as ``int`` hundredths (see ``streams/features.py``) and
must not depend on ``streams``, so the one formatting rule they need lives here.
The conversion goes through :class:`~decimal.Decimal`: a float would print
``0.1 + 0.2`` cents wrong long before it printed a large amount wrong.
"""

from __future__ import annotations

from decimal import Decimal


def format_minor(amount_minor: int) -> str:
    """Major units with thousands separators and two decimals.

    Parameters
    ----------
    amount_minor
        An amount in hundredths, as an ``int``.

    Examples
    --------
    >>> format_minor(4_800_000)
    '48,000.00'
    >>> format_minor(5)
    '0.05'
    >>> format_minor(-129_050)
    '-1,290.50'
    >>> format_minor(10**17)
    '1,000,000,000,000,000.00'
    """
    # bool is an int subclass and a float would silently lose cents: refuse both.
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        message = f"amount_minor must be an int of hundredths, not {amount_minor!r}"
        raise TypeError(message)
    return f"{Decimal(amount_minor).scaleb(-2):,.2f}"


def contract_amount(amount_minor: int) -> str:
    """The event contract's form of an amount: major units, a point, two digits, no separators.

    Examples
    --------
    >>> contract_amount(1_234_567), contract_amount(5), contract_amount(-129_050)
    ('12345.67', '0.05', '-1290.50')
    """
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        message = f"amount_minor must be an int of hundredths, not {amount_minor!r}"
        raise TypeError(message)
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), 100)
    return f"{sign}{major}.{minor:02d}"
