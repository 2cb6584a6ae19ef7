"""Forms of the account pages."""

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User


class SignUpForm(UserCreationForm):
    """Username, e-mail (required, one account per address, when accounts verify e-mail), password twice."""

    email = forms.EmailField(required=False)

    class Meta:
        model = User
        fields = ["username", "email"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["email"].required = settings.ACCOUNTS_VERIFY_EMAIL

    def clean_email(self) -> str:
        email = self.cleaned_data.get("email", "").strip()
        if email and User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("an account with this e-mail address already exists")
        return email


class SecretNameForm(forms.Form):
    """The label of a new API key or node token."""

    name = forms.CharField(max_length=100, initial="my machine")
