from django.contrib import admin

from .models import DeadHost, Location, ProxyHost, RedirectionHost, Settings, Stream


class LocationInline(admin.TabularInline):
    model = Location
    extra = 0


@admin.register(ProxyHost)
class ProxyHostAdmin(admin.ModelAdmin):
    list_display = ("__str__", "enabled", "updated_at")
    inlines = [LocationInline]


admin.site.register([RedirectionHost, DeadHost, Stream, Settings])
