"""Access lists: basic-auth users (hashed passwords) and IP allow/deny rules."""
from django.conf import settings
from django.db import models


class AccessList(models.Model):
    SATISFY_CHOICES = [("any", "Any (IP rule or login)"), ("all", "All (IP rule and login)")]

    name = models.CharField(max_length=100, unique=True)
    satisfy = models.CharField(max_length=3, choices=SATISFY_CHOICES, default="any")
    pass_auth = models.BooleanField(default=False, help_text="Pass the Authorization header to the upstream.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class AccessListUser(models.Model):
    access_list = models.ForeignKey(AccessList, on_delete=models.CASCADE, related_name="users")
    username = models.CharField(max_length=150)
    password_hash = models.CharField(max_length=256)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["access_list", "username"], name="access_user_unique")]

    def __str__(self):
        return self.username


class AccessRule(models.Model):
    ACTION_CHOICES = [("allow", "Allow"), ("deny", "Deny")]

    access_list = models.ForeignKey(AccessList, on_delete=models.CASCADE, related_name="rules")
    position = models.PositiveIntegerField(default=0)
    action = models.CharField(max_length=5, choices=ACTION_CHOICES)
    source = models.CharField(max_length=64, help_text="An IP, a CIDR, or 'all'.")

    class Meta:
        ordering = ["position", "id"]

    def __str__(self):
        return f"{self.action} {self.source}"
