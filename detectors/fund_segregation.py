"""Fund segregation: customer money moved into an account the platform owns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from detectors.base import Detector, Features
from detectors.money import format_minor
from detectors.params import optional_int, string_set


class FundSegregation(Detector):
    """Any movement from a customer-fund account into a platform-owned account.

    Customer funds (escrow accounts of lenders and backers, the reserve held
    for wallet balances) must stay apart from the platform's own money. Which
    accounts are which is configuration: ``escrow_accounts`` and
    ``platform_accounts`` list their ``account_id``.

    The score is 1.0 for

    * an event of one of ``event_types`` carried by an escrow account whose
      ``counterparty_id`` or ``merchant_id`` is a platform account (the escrow
      account pays the platform), or
    * an incoming event (``is_inflow``) carried by a platform account whose
      ``counterparty_id`` is an escrow account (the same movement seen from the
      receiving side, when the platform's ledger reports it that way),

    and 0.0 for everything else, whatever the amount: misappropriation does not
    start at a threshold. Stateless: nothing is learnt, no state is kept.

    Parameters
    ----------
    escrow_accounts
        Account ids holding customer funds (escrow, reserve).
    platform_accounts
        Account ids owned by the platform (operations, fees). No id may be in
        both lists.
    event_types
        Event types of an escrow account that move money out of it.

    Examples
    --------
    >>> detector = FundSegregation(escrow_accounts=["escrow-001"],
    ...                            platform_accounts=["platform-ops-001"])
    >>> x = {"event_type": "transfer", "amount_minor": 120_000_000, "account_id": "escrow-001",
    ...      "counterparty_id": "platform-ops-001"}
    >>> detector.score_one(x)
    1.0
    >>> print(*detector.explain_one(x, 1.0))
    transfer of 1,200,000.00 from customer-fund account escrow-001 to platform-owned account platform-ops-001: customer funds must stay segregated
    >>> detector.score_one({**x, "counterparty_id": "acct-0000042"})
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "fund_segregation"

    def __init__(
        self,
        escrow_accounts: Sequence[str] = (),
        platform_accounts: Sequence[str] = (),
        event_types: Sequence[str] = ("transfer", "payment", "withdrawal"),
    ) -> None:
        self._escrow = string_set("escrow_accounts", escrow_accounts)
        self._platform = string_set("platform_accounts", platform_accounts)
        both = self._escrow & self._platform
        if both:
            message = f"accounts cannot be both escrow and platform-owned: {sorted(both)}"
            raise ValueError(message)
        self._types = string_set("event_types", event_types, allow_empty=False)
        self.escrow_accounts = escrow_accounts
        self.platform_accounts = platform_accounts
        self.event_types = event_types

    def _movement(self, x: Features) -> tuple[str, str] | None:
        """``(escrow account, platform account)`` of a forbidden movement, else ``None``."""
        account = x.get("account_id")
        counterparty = x.get("counterparty_id")
        if account in self._escrow and x.get("event_type") in self._types:
            for payee in (counterparty, x.get("merchant_id")):
                if payee in self._platform:
                    return str(account), str(payee)
        if account in self._platform and x.get("is_inflow") and counterparty in self._escrow:
            return str(counterparty), str(account)
        return None

    def score_one(self, x: Features) -> float:
        return 0.0 if self._movement(x) is None else 1.0

    def explain_one(self, x: Features, score: float) -> list[str]:
        movement = self._movement(x)
        if movement is None:
            return [
                f"no movement between the {len(self._escrow)} customer-fund and the"
                f" {len(self._platform)} platform-owned accounts configured"
            ]
        escrow, platform = movement
        amount = optional_int(x.get("amount_minor"))
        what = x.get("event_type") or "movement"
        if amount is not None:
            what = f"{what} of {format_minor(amount)}"
        return [
            f"{what} from customer-fund account {escrow} to platform-owned account {platform}:"
            f" customer funds must stay segregated"
        ]
