"""Moved to :mod:`portal.generation.prompts`; kept only for ``bench/chat_concurrency.py``, which imports it
(delete this file once that import reads ``from portal.generation.prompts import chat_prompt``)."""

from portal.generation.prompts import chat_prompt

__all__ = ["chat_prompt"]
