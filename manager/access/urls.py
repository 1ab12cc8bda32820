from django.urls import path

from .views import access_lists

app_name = "access"

urlpatterns = [
    path("", access_lists["list"], name="list_list"),
    path("add/", access_lists["add"], name="list_add"),
    path("<int:pk>/edit/", access_lists["edit"], name="list_edit"),
    path("<int:pk>/delete/", access_lists["delete"], name="list_delete"),
]
