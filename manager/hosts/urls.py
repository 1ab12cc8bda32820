from django.urls import path

from . import views

app_name = "hosts"


def _routes(prefix, name, views_):
    return [
        path(prefix, views_["list"], name=f"{name}_list"),
        path(f"{prefix}add/", views_["add"], name=f"{name}_add"),
        path(f"{prefix}<int:pk>/edit/", views_["edit"], name=f"{name}_edit"),
        path(f"{prefix}<int:pk>/toggle/", views_["toggle"], name=f"{name}_toggle"),
        path(f"{prefix}<int:pk>/delete/", views_["delete"], name=f"{name}_delete"),
    ]


urlpatterns = [
    *_routes("", "proxy", views.proxy),
    path("location-row/", views.location_row, name="proxy_location_row"),
    *_routes("redirections/", "redirection", views.redirection),
    *_routes("404/", "dead", views.dead),
    *_routes("streams/", "stream", views.stream),
]
