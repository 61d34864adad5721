"""Forms of the Users page and the account pages."""

from __future__ import annotations

from django import forms
from django.contrib.auth import authenticate, get_user_model, password_validation
from django.utils.translation import gettext_lazy as _

from backupsite.roles import role_of
from backupsite.users import ROLE_CHOICES
from backupsite.validators import validate_no_control_chars

User = get_user_model()


class UserForm(forms.ModelForm):
    """Create (invite) a user, or change one's address, name and role."""

    role = forms.ChoiceField(label=_("Role"), choices=ROLE_CHOICES, widget=forms.RadioSelect)

    class Meta:
        model = User
        fields = ["username", "email", "first_name", "last_name"]
        labels = {"email": _("E-mail address")}
        help_texts = {"email": _("Invitations, password resets and the administrators' change e-mails go here.")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["email"].required = True
        for name in ("first_name", "last_name"):
            self.fields[name].validators.append(validate_no_control_chars)
        if self.instance.pk is not None:
            self.fields["username"].disabled = True
            self.fields["username"].help_text = _("A user name cannot be changed (the audit log is kept by it).")
            self.initial.setdefault("role", role_of(self.instance))

    def clean_email(self):
        email = self.cleaned_data["email"].strip()
        others = User.objects.filter(email__iexact=email).exclude(pk=self.instance.pk)
        if others.exists():
            raise forms.ValidationError(_("Another user has this address already."))
        return email


class NewUserForm(UserForm):
    INVITE, PASSWORD = "invite", "password"
    how = forms.ChoiceField(
        label=_("Password"),
        choices=[
            (INVITE, _("E-mail an invitation: the user chooses a password through a link")),
            (PASSWORD, _("Set a first password now (tell the user; they can change it later)")),
        ],
        initial=INVITE,
        widget=forms.RadioSelect,
    )
    password1 = forms.CharField(
        label=_("First password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password2 = forms.CharField(
        label=_("First password, again"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self):
        data = super().clean()
        if data.get("how") == self.PASSWORD:
            first, second = data.get("password1") or "", data.get("password2") or ""
            if not first:
                self.add_error("password1", _("Type the first password, or send an invitation instead."))
            elif first != second:
                self.add_error("password2", _("The two passwords differ."))
            else:
                candidate = User(username=data.get("username", ""), email=data.get("email", ""))
                try:
                    password_validation.validate_password(first, candidate)
                except forms.ValidationError as exc:
                    self.add_error("password1", exc)
        return data


class SudoForm(forms.Form):
    password = forms.CharField(
        label=_("Your password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )

    def __init__(self, *args, request, **kwargs):
        self.request = request
        super().__init__(*args, **kwargs)

    def clean_password(self):
        password = self.cleaned_data["password"]
        user = self.request.user
        # Through authenticate(): django-axes counts a wrong password here like a failed login.
        confirmed = authenticate(self.request, username=user.get_username(), password=password)
        if confirmed is None or confirmed.pk != user.pk:
            raise forms.ValidationError(_("That is not your password."))
        return password


class ForgotPasswordForm(forms.Form):
    email = forms.EmailField(
        label=_("E-mail address"), max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
