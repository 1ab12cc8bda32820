from django.urls import path

from . import views

app_name = "settings"

urlpatterns = [
    path("", views.settings_page, name="page"),
    path("export/", views.export, name="export"),
    path("import/", views.import_preview, name="import"),
    path("import/apply/", views.import_apply, name="import_apply"),
]
