"""System checks for the reputation settings."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_reputation_settings(app_configs, **kwargs):
    """Scores live in [0, 1]; decay and suspension windows must be positive."""
    errors = []
    for name in ("REPUTATION_PRIOR", "REPUTATION_THRESHOLD"):
        if not 0.0 <= getattr(settings, name) <= 1.0:
            errors.append(Error(f"{name} must lie in [0, 1]", id="reputation.E001"))
    for name in (
        "REPUTATION_PRIOR_WEIGHT",
        "REPUTATION_HALF_LIFE",
        "REPUTATION_SUSPEND_WINDOW",
        "REPUTATION_DECAY_EVERY",
    ):
        if getattr(settings, name) <= 0:
            errors.append(Error(f"{name} must be positive", id="reputation.E002"))
    if settings.REPUTATION_SUSPEND_FAILURES < 1:
        errors.append(Error("REPUTATION_SUSPEND_FAILURES must be at least 1", id="reputation.E003"))
    return errors
