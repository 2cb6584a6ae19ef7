"""System checks of the chat (``manage.py check``)."""

from __future__ import annotations

from django.core.checks import Warning, register

from portal.chat.libraries import LIBRARIES, NODE_MODULES, library_file


@register()
def check_chat_libraries(app_configs, **kwargs):
    """The chat page's npm libraries are installed (else it cannot render answers): ``make install``."""
    missing = [entry[0] for name, entry in LIBRARIES.items() if library_file(name) is None]
    if not missing:
        return []
    return [
        Warning(
            f"the chat page's libraries are not installed under {NODE_MODULES}: {', '.join(missing)}",
            hint="run `make install` (or `cd frontend && npm ci --ignore-scripts`)",
            id="chat.W001",
        )
    ]
