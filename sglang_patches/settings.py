"""Environment switches, parsed strictly: a malformed value is an error, never a guess.

* ``GEMMA4_KERNELS_DISABLE=1``   every patch off.
* ``GEMMA4_KERNELS_PATCHES=a,b`` allow-list (also turns on patches that are off by
  default); ``-name`` entries deny; ``all`` allows every patch.
* ``GEMMA4_KERNELS_STRICT=1``    a skipped or failed patch is an error.
* A patch's own switch (e.g. the seed's ``SGLANG_GEMMA4_YOCO=0``) forces it on/off.

Precedence: DISABLE > deny > the patch's own switch > allow-list > the patch default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(var: str, value: str | None, default: bool = False) -> bool:
    """Parse an on/off environment value; raise ``ValueError`` naming ``var`` if malformed."""
    if value is None:
        return default
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(
        f"{var}={value!r} is not an on/off value; use one of 1/0, true/false, yes/no, on/off"
    )


@dataclass(frozen=True)
class Settings:
    disable_all: bool = False
    allow: frozenset[str] | None = None  # None: no allow-list given
    deny: frozenset[str] = frozenset()
    strict: bool = False

    @classmethod
    def from_env(
        cls, known_names: Iterable[str], environ: Mapping[str, str] | None = None
    ) -> Settings:
        env = os.environ if environ is None else environ
        known = list(known_names)
        allow, deny = _parse_patch_list(env.get("GEMMA4_KERNELS_PATCHES"), known)
        return cls(
            disable_all=parse_bool("GEMMA4_KERNELS_DISABLE", env.get("GEMMA4_KERNELS_DISABLE")),
            allow=allow,
            deny=deny,
            strict=parse_bool("GEMMA4_KERNELS_STRICT", env.get("GEMMA4_KERNELS_STRICT")),
        )

    def decide(
        self,
        name: str,
        default_on: bool,
        switch_var: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> tuple[bool, str]:
        """(enabled, why) for one patch."""
        env = os.environ if environ is None else environ
        if self.disable_all:
            return False, "GEMMA4_KERNELS_DISABLE=1"
        if name in self.deny:
            return False, f"denied by GEMMA4_KERNELS_PATCHES (-{name})"
        if switch_var is not None and switch_var in env:
            on = parse_bool(switch_var, env[switch_var])
            return on, f"{switch_var}={env[switch_var]}"
        if self.allow is not None:
            if name in self.allow:
                return True, "listed in GEMMA4_KERNELS_PATCHES"
            return False, "not listed in GEMMA4_KERNELS_PATCHES"
        if default_on:
            return True, "on by default"
        how = f"GEMMA4_KERNELS_PATCHES={name}"
        if switch_var is not None:
            how = f"{switch_var}=1 or {how}"
        return False, f"off by default; enable with {how}"


def _parse_patch_list(
    value: str | None, known: list[str]
) -> tuple[frozenset[str] | None, frozenset[str]]:
    if value is None or not value.strip():
        return None, frozenset()
    explicit: set[str] = set()
    deny: set[str] = set()
    allow_all = False
    for raw in value.split(","):
        token = raw.strip()
        if not token:
            continue
        negative = token.startswith("-")
        name = token[1:].strip() if negative else token
        if name == "all" and not negative:
            allow_all = True
            continue
        if name not in known:
            raise ValueError(
                f"GEMMA4_KERNELS_PATCHES names unknown patch {name!r}; "
                f"valid names: {', '.join(known)} (prefix '-' to deny, 'all' for every patch)"
            )
        (deny if negative else explicit).add(name)
    if explicit & deny:
        raise ValueError(
            f"GEMMA4_KERNELS_PATCHES both allows and denies {sorted(explicit & deny)}; pick one"
        )
    if allow_all:
        return frozenset(known), frozenset(deny)
    return (frozenset(explicit) if explicit else None), frozenset(deny)
