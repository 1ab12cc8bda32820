from django.urls import path

from . import views

app_name = "certificates"

urlpatterns = [
    path("", views.certificate_list, name="list"),
    path("upload/", views.certificate_upload, name="upload"),
    path("request/", views.certificate_request, name="request"),
    path("request/check/", views.certificate_probe, name="probe"),
    path("<int:pk>/renew/", views.certificate_renew, name="renew"),
    path("<int:pk>/", views.certificate_detail, name="detail"),
    path("<int:pk>/delete/", views.certificate_delete, name="delete"),
    path("dns/", views.dns_provider_list, name="dns_list"),
    path("dns/add/", views.dns_provider_add, name="dns_add"),
    path("dns/<int:pk>/delete/", views.dns_provider_delete, name="dns_delete"),
]
