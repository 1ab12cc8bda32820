"""Forms: the throttled login, the first administrator, and users with their rights."""
from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from . import throttle
from .models import KINDS, Profile


class ThrottledLoginForm(AuthenticationForm):
    """Django's login form, refused while the username or client address is throttled."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "throttled": (f"Too many failed logins for this account or from this address: try again in "
                      f"{int(throttle.WINDOW.total_seconds() // 60)} minutes."),
    }

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        address = throttle.client_address(self.request)
        if throttle.blocked(username, address):
            raise forms.ValidationError(self.error_messages["throttled"], code="throttled")
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            throttle.failed(username, address)
            raise
        throttle.succeeded(username)
        return cleaned


class FirstAdminForm(UserCreationForm):
    """The one-time setup page: username and password (Django's password validators)."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)


class UserForm(forms.ModelForm):
    """A dashboard user: username, administrator flag, password (optional when editing)."""

    password = forms.CharField(widget=forms.PasswordInput(render_value=False), required=False, strip=False,
                               help_text="Leave empty to keep the current password.")
    is_superuser = forms.BooleanField(required=False, label="Administrator",
                                      help_text="Manages everything, including users, settings and the audit log.")

    class Meta:
        model = get_user_model()
        fields = ("username", "is_superuser")

    def __init__(self, *args, editor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.editor = editor
        self.was_admin = bool(self.instance.pk and self.instance.is_superuser)
        if self.instance.pk is None:
            self.fields["password"].required = True
            self.fields["password"].help_text = ""

    def clean_password(self):
        password = self.cleaned_data["password"]
        if password:
            probe = self.instance if self.instance.pk else get_user_model()(username=self.data.get("username", ""))
            password_validation.validate_password(password, probe)
        return password

    def clean_is_superuser(self):
        admin = self.cleaned_data["is_superuser"]
        if self.was_admin and not admin:
            if self.instance.pk == getattr(self.editor, "pk", None):
                raise forms.ValidationError("You cannot remove your own administrator rights.")
            if last_admin(self.instance):
                raise forms.ValidationError("This is the last administrator.")
        return admin

    def save(self, commit=True):
        user = super().save(commit=False)
        user.is_staff = user.is_superuser
        if self.cleaned_data["password"]:
            user.set_password(self.cleaned_data["password"])
        if commit:
            user.save()
        return user


class ProfileForm(forms.ModelForm):
    """Rights of a user who is not an administrator: per kind hidden/view/manage, visibility."""

    class Meta:
        model = Profile
        fields = ("visibility",) + KINDS
        widgets = {name: forms.RadioSelect for name in ("visibility",) + KINDS}


def last_admin(user):
    """True when `user` is the only active administrator."""
    return not get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(pk=user.pk).exists()
