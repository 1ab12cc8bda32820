from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("", views.user_list, name="list"),
    path("add/", views.user_create, name="create"),
    path("<int:pk>/", views.user_edit, name="edit"),
    path("<int:pk>/toggle/", views.user_toggle, name="toggle"),
    path("<int:pk>/delete/", views.user_delete, name="delete"),
]
