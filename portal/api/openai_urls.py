"""Routes of the OpenAI-compatible API, mounted at ``/v1/``."""

from django.urls import path, re_path

from portal.api import embeddings, openai

app_name = "openai"
urlpatterns = [
    path("models", openai.models, name="models"),
    path("models/<str:model_id>", openai.model, name="model"),
    path("chat/completions", openai.chat_completions, name="chat_completions"),
    path("completions", openai.completions, name="completions"),
    path("embeddings", embeddings.embeddings, name="embeddings"),
    re_path(r"^.*$", openai.not_found),
]
