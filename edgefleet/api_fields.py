"""Field types shared by the management API's schemas.

Every free-text input is bounded and free of control characters: PostgreSQL refuses NUL in text
(a ValueError, i.e. a 500, if it reached a query), and nothing a person types needs the others.
"""

from typing import Annotated

from pydantic import Field, StringConstraints

PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

Text = Annotated[str, StringConstraints(max_length=200, pattern=PRINTABLE)]
LongText = Annotated[str, StringConstraints(max_length=2000, pattern=PRINTABLE)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=PRINTABLE)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=PRINTABLE)]
Word = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")]
# A version by label (``v3``) or by alias (``@production``; ota.aliases.resolve).
VersionRef = Annotated[
    str, StringConstraints(min_length=1, max_length=65, pattern=r"^@?[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[-a-zA-Z0-9_]+$")]
Reason = Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]
Limit = Annotated[int, Field(ge=1, le=200)]
Cursor = Annotated[str, StringConstraints(max_length=600, pattern=r"^[A-Za-z0-9_:.\-]*$")]
