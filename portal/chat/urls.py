"""Routes of the chat pages."""

from django.urls import path

from portal.chat import views

app_name = "chat"
urlpatterns = [
    path("chat/", views.chat, name="chat"),
    path("chat/<int:pk>/", views.chat, name="conversation"),
]
