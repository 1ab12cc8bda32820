"""Hosts the engine serves: proxy hosts (with locations), redirections, 404 hosts, streams,
plus the global settings, the configuration revision, and the upstream errors the engine records.

Structured values (upstreams, header rules, cache, rate limit) are stored in their
canonical form as produced by `manager.lib.validators` / `manager.configuration.schema`;
scalars are plain fields.
"""
import datetime
import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone

from manager.lib import validators

log = logging.getLogger(__name__)


class HostBase(models.Model):
    domains = models.JSONField(default=list, help_text="Exact names or *.wildcards, lower-case ASCII.")
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    kind = "host"

    class Meta:
        abstract = True
        ordering = ["id"]

    def __str__(self):
        return ", ".join(self.domains) or f"{self.kind} #{self.pk}"

    def describe(self):
        return f"{self.kind} '{self}'" + (f" (#{self.pk})" if self.pk else "")

    def clean(self):
        if not isinstance(self.domains, list) or not self.domains:
            raise ValidationError({"domains": "at least one domain name is required"})
        errors, cleaned = [], []
        for name in self.domains:
            try:
                cleaned.append(validators.hostname(name))
            except validators.Invalid as exc:
                errors.append(str(exc))
        if len(set(cleaned)) != len(cleaned):
            errors.append("a domain name is listed twice")
        if not errors and self.enabled:
            errors = [conflict.message() for conflict in domain_conflicts(cleaned, exclude=self)]
        if errors:
            raise ValidationError({"domains": errors})
        self.domains = cleaned


class ProxyHost(HostBase):
    POLICY_CHOICES = [(p, p) for p in ("round_robin", "least_conn", "ip_hash", "random", "first")]

    kind = "proxy host"

    upstreams = models.JSONField(default=list, help_text="[{scheme, host, port, weight}], in order.")
    lb_policy = models.CharField(max_length=16, choices=POLICY_CHOICES, default="round_robin")
    health_check = models.JSONField(null=True, blank=True,
                                    help_text="{path, interval, timeout, expect: [low, high], healthy, unhealthy} or null.")
    passive_health = models.JSONField(null=True, blank=True, help_text="{failures, window, cooldown} or null.")
    lb_sticky = models.JSONField(null=True, blank=True, help_text="{cookie, max_age} or null.")
    websockets = models.BooleanField(default=False)
    certificate = models.ForeignKey("certificates.Certificate", null=True, blank=True, on_delete=models.PROTECT, related_name="proxy_hosts")
    force_https = models.BooleanField(default=False)
    http2 = models.BooleanField(default=False)
    hsts = models.BooleanField(default=False)
    hsts_subdomains = models.BooleanField(default=False)
    hsts_preload = models.BooleanField(default=False)
    access_list = models.ForeignKey("access.AccessList", null=True, blank=True, on_delete=models.PROTECT, related_name="proxy_hosts")
    compression = models.JSONField(default=list, blank=True)
    cache = models.JSONField(null=True, blank=True, help_text="{enabled, default_ttl, stale_if_error} or null.")
    cache_generation = models.PositiveBigIntegerField(
        default=0, help_text="State, not configuration: incremented by 'Purge cache'; the engine drops "
                             "entries stored under an older generation. Not exported.")
    rate_limit = models.JSONField(null=True, blank=True, help_text="{requests, per, key, burst} or null.")
    headers = models.JSONField(null=True, blank=True, help_text="{request: {set, remove}, response: {set, remove}}.")
    security_headers = models.BooleanField(default=False)
    hide_upstream_identity = models.BooleanField(default=False)
    cors = models.JSONField(null=True, blank=True,
                            help_text="{origins, methods, headers, expose, credentials, max_age} or null.")
    forward_auth = models.JSONField(null=True, blank=True, help_text="{url, response_headers, timeout} or null.")
    block_exploits = models.BooleanField(default=False)
    connect_timeout = models.FloatField(default=5.0, help_text="seconds")
    response_timeout = models.FloatField(default=60.0, help_text="seconds")
    max_body_size = models.BigIntegerField(null=True, blank=True, help_text="bytes; empty = unlimited")

    def clean(self):
        super().clean()
        if not self.upstreams:
            raise ValidationError({"upstreams": "at least one upstream is required"})

    def caches(self):
        """Whether any response of this host may be cached (the host's or a location's cache
        enabled): what the dashboard's "Purge cache" is for."""
        if self.cache and self.cache.get("enabled"):
            return True
        return any(loc.cache and loc.cache.get("enabled") for loc in self.locations.all())

    def has_health_checks(self):
        return bool(self.health_check or self.passive_health)


class Location(models.Model):
    proxy_host = models.ForeignKey(ProxyHost, on_delete=models.CASCADE, related_name="locations")
    position = models.PositiveIntegerField(default=0)
    path = models.CharField(max_length=1024)
    upstreams = models.JSONField(default=list, blank=True, help_text="empty = the host's upstreams")
    cache = models.JSONField(null=True, blank=True)
    headers = models.JSONField(null=True, blank=True)
    compression = models.JSONField(null=True, blank=True)
    rate_limit = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["proxy_host", "path"], name="location_path_unique")]

    def __str__(self):
        return self.path


class RedirectionHost(HostBase):
    CODE_CHOICES = [(301, "301 Moved Permanently"), (302, "302 Found"), (307, "307 Temporary Redirect"), (308, "308 Permanent Redirect")]

    kind = "redirection host"

    to = models.CharField(max_length=2048, validators=[])
    code = models.PositiveSmallIntegerField(choices=CODE_CHOICES, default=301)
    preserve_path = models.BooleanField(default=True)

    def clean(self):
        super().clean()
        try:
            self.to = validators.web_url(self.to)
        except validators.Invalid as exc:
            raise ValidationError({"to": str(exc)}) from None


class DeadHost(HostBase):
    kind = "404 host"


class Stream(models.Model):
    PROTOCOL_CHOICES = [("tcp", "TCP"), ("udp", "UDP")]

    listen = models.PositiveIntegerField()
    protocol = models.CharField(max_length=3, choices=PROTOCOL_CHOICES, default="tcp")
    upstream_host = models.CharField(max_length=255)
    upstream_port = models.PositiveIntegerField()
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"{self.protocol}/{self.listen} → {validators.format_host_port(self.upstream_host, self.upstream_port)}"

    def clean(self):
        errors = {}
        for field, check in (("listen", validators.port), ("upstream_port", validators.port), ("upstream_host", validators.upstream_host)):
            try:
                setattr(self, field, check(getattr(self, field)))
            except validators.Invalid as exc:
                errors[field] = str(exc)
        if not errors and self.enabled:
            clash = Stream.objects.filter(enabled=True, listen=self.listen, protocol=self.protocol).exclude(pk=self.pk).first()
            if clash:
                errors["listen"] = f"{self.protocol} port {self.listen} is already used by stream #{clash.pk} ({clash})"
        if errors:
            raise ValidationError(errors)


class Settings(models.Model):
    """The global settings: one row, pk=1."""

    TLS_FALLBACK_CHOICES = [("self_signed", "A self-signed default certificate"), ("reject", "Refuse the handshake (unrecognized_name)")]
    DEFAULT_SITE_CHOICES = [("404", "404 page"), ("444", "Close the connection"), ("redirect", "Redirect"), ("html", "Custom page"), ("welcome", "Welcome page")]

    default_site_action = models.CharField(max_length=8, choices=DEFAULT_SITE_CHOICES, default="welcome")
    default_site_to = models.CharField(max_length=2048, blank=True)
    default_site_body = models.TextField(blank=True)
    acme_email = models.EmailField(blank=True)
    acme_directory = models.URLField(max_length=2048, default="https://acme-v02.api.letsencrypt.org/directory")
    acme_ca_bundle = models.CharField(max_length=1024, blank=True, help_text="PEM file trusted for a private ACME server's API (pebble, step-ca).")
    tls_fallback = models.CharField(max_length=16, choices=TLS_FALLBACK_CHOICES, default="self_signed",
                                    help_text="What an HTTPS client naming no known host gets.")
    trusted_proxies = models.JSONField(default=list, blank=True)
    cache_memory_bytes = models.BigIntegerField(default=64 * 1024 * 1024,
                                                help_text="Memory for cached responses, all hosts together.")
    cache_disk_bytes = models.BigIntegerField(default=0, help_text="Disk for cached responses; 0 = no disk tier.")

    class Meta:
        verbose_name_plural = "settings"

    def __str__(self):
        return "Settings"

    @classmethod
    def load(cls):
        """The row, created if missing: for code that is about to change the settings."""
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj

    @classmethod
    def current(cls):
        """The settings for reading: never writes (an unsaved default when the row is missing),
        so the engine and exports never bump the configuration revision."""
        return cls.objects.filter(pk=1).first() or cls(pk=1)


class ConfigRevision(models.Model):
    """One row (pk=1) whose counter grows with every committed configuration change."""

    revision = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)


class UpstreamError(models.Model):
    """A request the engine could not get answered by a proxy host's upstream (502, 504, ...)
    or whose client left before the answer (499), with its full cause. Written by the engine
    (`record`, in batches from `runproxy`), read by the dashboard, looked up by the request
    id the error page showed. Only the latest `KEEP_PER_HOST` rows per host are kept."""

    KEEP_PER_HOST = 200

    proxy_host = models.ForeignKey(ProxyHost, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="upstream_errors")
    request_id = models.CharField(max_length=64, db_index=True)
    upstream = models.CharField(max_length=300, help_text="host:port the engine tried.")
    status = models.PositiveSmallIntegerField()
    cause = models.CharField(max_length=200, help_text="What the error page said.")
    detail = models.CharField(max_length=1000, blank=True, help_text="The underlying error.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["proxy_host", "-created_at"], name="upstream_error_host_latest")]

    def __str__(self):
        return f"{self.status} {self.cause} ({self.request_id})"

    @classmethod
    def record(cls, events, dropped=0):
        """Store engine events (`proxy_engine.events.UpstreamErrorEvent`) and prune old rows
        of the hosts they concern, in one transaction. Events of hosts deleted meanwhile are
        kept without a host."""
        if dropped:
            log.warning("the engine dropped %s upstream error event(s): its buffer was full", dropped)
        if not events:
            return
        known = set(ProxyHost.objects.filter(pk__in={e.host_id for e in events}).values_list("pk", flat=True))
        rows = [cls(proxy_host_id=e.host_id if e.host_id in known else None, request_id=e.request_id[:64],
                    upstream=e.upstream[:300], status=e.status, cause=e.cause[:200], detail=e.detail[:1000],
                    created_at=datetime.datetime.fromtimestamp(e.timestamp, tz=datetime.timezone.utc))
                for e in events]
        with transaction.atomic():
            cls.objects.bulk_create(rows)
            for host_id in {row.proxy_host_id for row in rows}:
                rows_of_host = cls.objects.filter(proxy_host_id=host_id) if host_id is not None else (
                    cls.objects.filter(proxy_host__isnull=True))
                stale = list(rows_of_host.order_by("-created_at", "-id")
                             .values_list("pk", flat=True)[cls.KEEP_PER_HOST:])
                if stale:
                    cls.objects.filter(pk__in=stale).delete()


HOST_MODELS = (ProxyHost, RedirectionHost, DeadHost)


class DomainConflict:
    def __init__(self, domain, host):
        self.domain, self.host = domain, host

    def message(self):
        return f"{self.domain} is already used by {self.host.describe()}"


def domain_conflicts(domains, exclude=None):
    """Which of `domains` an enabled host of any kind (other than `exclude`) already claims."""
    wanted = set(domains)
    conflicts = []
    for model in HOST_MODELS:
        hosts = model.objects.filter(enabled=True)
        if exclude is not None and exclude.pk is not None and isinstance(exclude, model):
            hosts = hosts.exclude(pk=exclude.pk)
        for host in hosts.only("id", "domains"):
            for name in host.domains:
                if name in wanted:
                    conflicts.append(DomainConflict(name, host))
    return conflicts


class EngineNode(models.Model):
    """One engine worker's report (upserted by `runproxy` after every swap or failed load and
    as a heartbeat every 30 s): the revision it serves and its last load/parse error. A row
    not updated for `GONE_AFTER` belongs to a worker that is gone."""

    GONE_AFTER = datetime.timedelta(minutes=2)

    name = models.CharField(max_length=200, unique=True, help_text="host name and process id")
    served_revision = models.BigIntegerField(null=True, blank=True)
    served_at = models.DateTimeField(null=True, blank=True, help_text="when it began serving that revision")
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    error_hosts = models.JSONField(default=list, blank=True, help_text="ids of the proxy hosts the error names")
    upstream_health = models.JSONField(
        default=dict, blank=True,
        help_text='{"<host id>": {"<host>:<port>": {"state": "up"|"down", "since": unix time, "reason": str}}}')
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} (revision {self.served_revision})"

    @classmethod
    def live(cls, now=None):
        return cls.objects.filter(updated_at__gte=(now or timezone.now()) - cls.GONE_AFTER)

    @classmethod
    def report(cls, name, revision, error=None, hosts=(), now=None, health=None):
        """Upsert the row of worker `name`; `error` None means no error since `revision`.
        `health` (the engine's upstream states, see `clean_health`) replaces the stored one;
        None leaves it as it is (a report that carries none)."""
        now = now or timezone.now()
        with transaction.atomic():
            node, _ = cls.objects.get_or_create(name=name)
            if health is not None:
                node.upstream_health = clean_health(health)
            if revision != node.served_revision:
                node.served_revision, node.served_at = revision, now
            if error:
                if error != node.last_error:
                    node.last_error_at = now
                node.last_error, node.error_hosts = error[:5000], [h for h in hosts if isinstance(h, int)]
            else:
                node.last_error, node.last_error_at, node.error_hosts = "", None, []
            node.updated_at = now
            node.save()
        return node


HEALTH_STATES = ("up", "down")
MAX_HEALTH_HOSTS = 10000
MAX_HEALTH_UPSTREAMS = 1000


def clean_health(health):
    """The engine's health report reduced to what the dashboard reads, every value checked
    (it comes from another process): {"<host id>": {"<host>:<port>": {"state", "since",
    "reason"}}}; anything malformed is dropped rather than stored."""
    result = {}
    if not isinstance(health, dict):
        return result
    for host_id, upstreams in list(health.items())[:MAX_HEALTH_HOSTS]:
        host_key = str(host_id)
        if not host_key.isdigit() or not isinstance(upstreams, dict):
            continue
        entries = {}
        for upstream, state in list(upstreams.items())[:MAX_HEALTH_UPSTREAMS]:
            if not isinstance(upstream, str) or not isinstance(state, dict) or state.get("state") not in HEALTH_STATES:
                continue
            since = state.get("since")
            entries[upstream[:300]] = {
                "state": state["state"],
                "since": float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else None,
                "reason": str(state.get("reason") or "")[:300],
            }
        result[host_key] = entries
    return result


class HostTraffic(models.Model):
    """Requests and errors (status >= 500) of one proxy host in one 10 s bucket, as one engine
    worker (`node`, "<host name>:<pid>") counted them (`proxy_engine.traffic`); written by
    `runproxy`, kept for `KEEP`. Several nodes' rows of a bucket add up."""

    KEEP = datetime.timedelta(hours=24)

    host = models.ForeignKey(ProxyHost, on_delete=models.CASCADE, related_name="traffic")
    node = models.CharField(max_length=200)
    bucket_start = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["host", "bucket_start"]), models.Index(fields=["bucket_start"])]

    def __str__(self):
        return f"host {self.host_id} at {self.bucket_start}: {self.requests} requests, {self.errors} errors"

    @classmethod
    def record(cls, node, bucket_start, counts, now=None):
        """Store one bucket of a node: `counts` is {host_id: (requests, errors)}, `bucket_start`
        epoch seconds. Hosts deleted meanwhile are skipped; rows older than `KEEP` are pruned."""
        now = now or timezone.now()
        start = datetime.datetime.fromtimestamp(bucket_start, tz=datetime.timezone.utc)
        with transaction.atomic():
            existing = set(ProxyHost.objects.filter(pk__in=list(counts)).values_list("pk", flat=True))
            cls.objects.bulk_create([
                cls(host_id=host_id, node=node[:200], bucket_start=start, requests=requests, errors=errors)
                for host_id, (requests, errors) in counts.items() if host_id in existing])
            cls.objects.filter(bucket_start__lt=now - cls.KEEP).delete()
