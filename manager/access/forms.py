"""The access list form. Like the host forms, it is parsed as the configuration file's
`access_lists` item (manager.configuration.schema), so its errors are the import's.

Users are written one per line as `username` (keep the stored password) or
`username:password` (set or replace it); passwords are hashed with make_password and never
shown again, not even when the form comes back with errors."""
from django import forms
from django.contrib.auth.hashers import make_password

from manager.hosts.forms import SchemaForm, lines

from .models import AccessList, AccessListUser, AccessRule

USERS_HELP = ("Basic-auth users, one per line: username:password to set or replace a password, or just username "
              "to keep the stored one. Passwords are stored hashed and never shown.")
RULES_HELP = "One per line, checked in order: allow 192.168.1.0/24, deny 10.0.0.5, deny all."


class AccessListForm(SchemaForm):
    section = "access_lists"
    FIELD_OF = {"name": "name", "satisfy": "satisfy", "pass_auth": "pass_auth", "users": "users", "rules": "rules"}
    MODEL_FIELDS = ("name", "satisfy", "pass_auth")

    name = forms.CharField(max_length=100)
    satisfy = forms.ChoiceField(choices=AccessList.SATISFY_CHOICES, initial="any",
                                help_text="Any: a matching allow rule or a valid login lets the client in. All: both are needed.")
    pass_auth = forms.BooleanField(required=False, label="Pass the Authorization header to the upstream")
    users = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False, help_text=USERS_HELP)
    rules = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False, help_text=RULES_HELP)

    def __init__(self, data=None, *args, instance=None, user=None, **kwargs):
        instance = instance or AccessList()
        if instance.pk and "initial" not in kwargs:
            kwargs["initial"] = {"name": instance.name, "satisfy": instance.satisfy, "pass_auth": instance.pass_auth,
                                 "users": "\n".join(u.username for u in instance.users.all()),
                                 "rules": "\n".join(f"{r.action} {r.source}" for r in instance.rules.all())}
        super().__init__(data, *args, instance=instance, user=user, **kwargs)

    def full_clean(self):
        super().full_clean()
        if self.is_bound and self._errors and "users" in self.data:
            self.data = self.data.copy()
            self.data["users"] = "\n".join(line.partition(":")[0].strip() for line in self.data["users"].splitlines())

    def build(self, cleaned, parsed):
        stored = {u.username: u.password_hash for u in self.instance.users.all()} if self.instance.pk else {}
        users = []
        for line in (cleaned["users"] or "").splitlines():
            if not line.strip():
                continue
            username, has_password, password = line.partition(":")
            username = username.strip()
            if has_password and password:
                users.append({"username": username, "password": password})
            elif username in stored:
                users.append({"username": username, "password_hash": stored[username]})
            else:
                self.add_error("users", f"{username}: a new user needs a password (write {username}:password)")
        rules = []
        for line in lines(cleaned["rules"]):
            action, _, source = line.partition(" ")
            rules.append({action.lower(): source.strip()})
        return {"name": cleaned["name"], "satisfy": cleaned["satisfy"], "pass_auth": cleaned["pass_auth"],
                "users": users, "rules": rules}

    def save(self, owner=None):
        access_list = self.instance
        if access_list.pk is None:
            access_list.owner = owner
        access_list.save()
        access_list.users.all().delete()
        access_list.rules.all().delete()
        for user in self.item["users"]:
            hashed = user.get("password_hash") or make_password(user["password"])
            AccessListUser.objects.create(access_list=access_list, username=user["username"], password_hash=hashed)
        for position, rule in enumerate(self.item["rules"]):
            AccessRule.objects.create(access_list=access_list, position=position, **rule)
        return access_list
