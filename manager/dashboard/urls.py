from django.urls import path

from . import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("hosts/<int:pk>/status/", views.host_status, name="host_status"),
    path("hosts/<int:pk>/status/test/", views.host_probe, name="host_probe"),
    path("hosts/<int:pk>/status/purge/", views.host_purge, name="host_purge"),
    path("lookup/", views.lookup, name="lookup"),
]
