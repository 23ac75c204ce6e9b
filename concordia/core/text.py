"""Character classes that text from users and the wire is checked against."""

from __future__ import annotations

import re

#: Every C0 control character and DEL: never in a name, a value or a path.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
