"""Forms of the account pages."""

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User


class SignUpForm(UserCreationForm):
    """Username, optional e-mail, password twice."""

    email = forms.EmailField(required=False)

    class Meta:
        model = User
        fields = ["username", "email"]


class SecretNameForm(forms.Form):
    """The label of a new API key or node token."""

    name = forms.CharField(max_length=100, initial="my machine")
