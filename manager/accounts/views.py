"""Accounts: login (throttled), the one-time setup page, and users (administrators only).

Every change writes an audit entry; passwords never appear in it. Mutating views are
POST-only; an administrator cannot disable or delete themselves or the last administrator.
"""
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from manager.audit.log import record

from . import access
from .forms import FirstAdminForm, ProfileForm, ThrottledLoginForm, UserForm, last_admin
from .models import KINDS, Profile

User = get_user_model()


def _no_user_yet():
    return not User.objects.exists()


class LoginView(auth_views.LoginView):
    authentication_form = ThrottledLoginForm

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "setup_open": _no_user_yet()}


def setup(request):
    """Create the first administrator; exists only while there is no user at all."""
    if not _no_user_yet():
        raise Http404("setup is done")
    form = FirstAdminForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            if not _no_user_yet():
                raise Http404("setup is done")
            user = form.save(commit=False)
            user.is_superuser = user.is_staff = True
            user.save()
            record(user, "created", user, kind="user", after=_snapshot(user))
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.username}: you are the administrator.")
        return redirect("dashboard:overview")
    return render(request, "accounts/setup.html", {"form": form})


def _snapshot(user):
    """What the audit log keeps of a user: never the password."""
    data = {"username": user.username, "is_superuser": user.is_superuser, "is_active": user.is_active}
    if not user.is_superuser:
        rights = access.profile(user)
        data["visibility"] = rights.visibility
        data.update({kind: getattr(rights, kind) for kind in KINDS})
    return data


def _admin_only(view):
    def checked(request, *args, **kwargs):
        access.require_admin(request.user)
        return view(request, *args, **kwargs)
    checked.__name__, checked.__doc__ = view.__name__, view.__doc__
    return login_required(checked)


@_admin_only
def user_list(request):
    users = User.objects.order_by("username").select_related("gatehouse_profile")
    return render(request, "accounts/user_list.html", {"users": users})


@_admin_only
def user_create(request):
    return _edit(request, User())


@_admin_only
def user_edit(request, pk):
    return _edit(request, get_object_or_404(User, pk=pk))


def _edit(request, user):
    creating = user.pk is None
    before = None if creating else _snapshot(user)
    profile = Profile() if creating else access.profile(user)
    data = request.POST if request.method == "POST" else None
    form = UserForm(data, instance=user, editor=request.user)
    rights = ProfileForm(data, instance=profile)
    if data is not None and form.is_valid() and rights.is_valid():
        with transaction.atomic():
            user = form.save()
            rights.instance.user = user
            rights.save()
            user._gatehouse_profile = rights.instance
            record(request.user, "created" if creating else "updated", user, kind="user",
                   before=before, after=_snapshot(user))
        messages.success(request, f"User {user.username} {'created' if creating else 'saved'}.")
        return redirect("accounts:list")
    return render(request, "accounts/user_form.html", {"form": form, "rights_form": rights, "account": user,
                                                       "creating": creating})


def _removable(request, user, what):
    """None when `user` may be disabled/deleted by the request's user, else the reason."""
    if user.pk == request.user.pk:
        return f"You cannot {what} yourself."
    if user.is_superuser and user.is_active and last_admin(user):
        return f"{user.username} is the last administrator."
    return None


@_admin_only
@require_POST
def user_toggle(request, pk):
    user = get_object_or_404(User, pk=pk)
    what = "disable" if user.is_active else "enable"
    problem = _removable(request, user, what) if user.is_active else None
    if problem:
        messages.error(request, problem)
        return redirect("accounts:list")
    before = _snapshot(user)
    with transaction.atomic():
        user.is_active = not user.is_active
        user.save(update_fields=["is_active"])
        record(request.user, f"{what}d", user, kind="user", before=before, after=_snapshot(user))
    messages.success(request, f"User {user.username} {what}d.")
    return redirect("accounts:list")


@_admin_only
@require_POST
def user_delete(request, pk):
    user = get_object_or_404(User, pk=pk)
    problem = _removable(request, user, "delete")
    if problem:
        messages.error(request, problem)
        return redirect("accounts:list")
    with transaction.atomic():
        record(request.user, "deleted", user, kind="user", before=_snapshot(user))
        user.delete()
    messages.success(request, f"User {user.username} deleted.")
    return redirect("accounts:list")
