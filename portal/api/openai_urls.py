"""Routes of the OpenAI-compatible API, mounted at ``/v1/``."""

from django.urls import path, re_path

from portal.api import openai

app_name = "openai"
urlpatterns = [
    path("models", openai.models, name="models"),
    path("chat/completions", openai.chat_completions, name="chat_completions"),
    path("completions", openai.completions, name="completions"),
    re_path(r"^.*$", openai.not_found),
]
