"""Routes of the chat pages."""

from django.urls import path

from portal.chat import views

app_name = "chat"
urlpatterns = [
    path("chat/", views.chat, name="chat"),
    path("chat/<int:pk>/", views.chat, name="conversation"),
    path("chat/<int:pk>/rename/", views.rename, name="rename"),
    path("chat/<int:pk>/delete/", views.delete, name="delete"),
    path("chat/<int:pk>/export.<str:fmt>", views.export_conversation, name="export"),
    path("chat/lib/<str:name>", views.library, name="library"),
]
