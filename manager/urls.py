from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from manager.accounts import views as account_views

urlpatterns = [
    path("login/", account_views.LoginView.as_view(), name="login"),
    path("setup/", account_views.setup, name="setup"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("certificates/", include("manager.certificates.urls")),
    path("hosts/", include("manager.hosts.urls")),
    path("access-lists/", include("manager.access.urls")),
    path("users/", include("manager.accounts.urls")),
    path("audit/", include("manager.audit.urls")),
    path("settings/", include("manager.configuration.urls")),
    path("", include("manager.dashboard.urls")),
]
