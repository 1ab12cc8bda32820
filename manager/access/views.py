"""Access list pages: list (searchable), create, edit, delete; the same views, access rules
and audit entries as the host pages (manager.hosts.views). An access list a host uses
cannot be deleted."""
from manager.hosts.views import Kind, views_for

from .forms import AccessListForm
from .models import AccessList

ACCESS_LISTS = Kind("access_lists", AccessList, AccessListForm, "list", "Access lists", "access list",
                    ("Name", "Users", "Rules", "Satisfy", ""), "access/_row.html", namespace="access")

access_lists = views_for(ACCESS_LISTS)
