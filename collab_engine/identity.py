"""Who is on the other end of a connection, as far as the server can vouch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """A user, as the server knows it.

    An authenticated identity comes from a verified token: its `user_id` and `name`
    are stamped into the user's awareness states. An anonymous identity is made up
    per connection (`anonymous:<n>`): its id is stamped, but the display name is the
    client's own choice, since there is nothing to check it against.
    """

    user_id: str
    name: str
    groups: tuple[str, ...] = ()
    anonymous: bool = False

    @classmethod
    def anonymous_for(cls, number: int) -> Identity:
        """The anonymous identity of connection `number`."""
        return cls(user_id=f"anonymous:{number}", name=f"Anonymous {number}", anonymous=True)
