"""Profiles: named choices a student picks from when starting a server.

Same shape as kubespawner's ``profile_list`` so that one hub-config idiom
serves both backends: ``display_name``, ``slug``, ``description``,
``default`` and a dict of spawner attributes to override (``spawner_override``
here, ``kubespawner_override`` on the cluster backend).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class ProfileError(ValueError):
    """A profile choice that cannot be honoured; the message is for the user."""


def profile_slug(profile: Mapping) -> str:
    """The profile's slug, derived from its display name if it has none."""
    if profile.get("slug"):
        return str(profile["slug"])
    return "-".join(re.findall(r"[a-z0-9]+", str(profile.get("display_name", "")).lower()))


def check_profiles(profiles: Sequence[Mapping], override_key: str) -> None:
    """Raise ValueError (naming the entry) if ``profiles`` is malformed."""
    seen = set()
    for i, p in enumerate(profiles):
        if not isinstance(p, Mapping) or not p.get("display_name"):
            raise ValueError(f"profile_list[{i}] needs a display_name")
        slug = profile_slug(p)
        if not _SLUG.fullmatch(slug):
            raise ValueError(f"profile_list[{i}] slug {slug!r} is not lower-case-with-dashes")
        if slug in seen:
            raise ValueError(f"profile_list has two profiles with slug {slug!r}")
        seen.add(slug)
        if not isinstance(p.get(override_key, {}), Mapping):
            raise ValueError(f"profile_list[{i}].{override_key} must be a dict")
    if sum(bool(p.get("default")) for p in profiles) > 1:
        raise ValueError("profile_list marks more than one profile as default")


def choose_profile(profiles: Sequence[Mapping], user_options: Mapping) -> Mapping | None:
    """The profile ``user_options`` asks for (or the default); None if there are none.

    Raises ProfileError for an unknown or malformed choice.
    """
    if not profiles:
        if user_options.get("profile"):
            raise ProfileError("This hub offers no profiles, so none can be chosen.")
        return None
    wanted = user_options.get("profile")
    if wanted is None or wanted == "":
        return next((p for p in profiles if p.get("default")), profiles[0])
    if not isinstance(wanted, str):
        raise ProfileError(f"profile must be a name, not {type(wanted).__name__}")
    for p in profiles:
        if profile_slug(p) == wanted:
            return p
    choices = ", ".join(profile_slug(p) for p in profiles)
    raise ProfileError(f"Unknown profile {wanted!r}; choose one of: {choices}.")
