"""Apply a configuration document in one transaction: all or nothing.

`import_yaml(text, replace=False)` parses and validates the whole document (schema), then,
inside one `transaction.atomic()`, checks what needs the database and applies it. Any
error raises `DocumentInvalid` with every error and its path; nothing is changed.

Identity (what an item of the document updates rather than creates):
- access lists, DNS providers and certificates: by name;
- streams: by listen port + protocol;
- hosts of every kind: a document host replaces every existing host, of any kind, that
  shares a domain with it. The first of those of the same kind is updated in place (it
  keeps its id and owner); the others are deleted.
Merge (the default) leaves everything else alone; `replace=True` deletes everything the
document does not name and resets settings the document leaves out.
"""
from collections import Counter

from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.utils import timezone

from manager.access.models import AccessList, AccessListUser, AccessRule
from manager.certificates.models import Certificate, DnsProvider
from manager.hosts.models import DeadHost, Location, ProxyHost, RedirectionHost, Settings, Stream
from manager.lib import validators
from manager.lib.validators import Invalid

from .schema import DNS_KIND_KEYS, ConfigError, DocumentInvalid, hosts, load_yaml, parse_document

HOST_MODELS = {"proxy_host": ProxyHost, "redirection_host": RedirectionHost, "dead_host": DeadHost}
PROXY_FIELDS = ("domains", "enabled", "upstreams", "lb_policy", "health_check", "passive_health", "lb_sticky",
                "websockets", "connect_timeout", "response_timeout", "max_body_size", "force_https", "http2", "hsts",
                "hsts_subdomains", "hsts_preload", "compression", "cache", "rate_limit", "headers",
                "security_headers", "hide_upstream_identity", "cors", "forward_auth", "block_exploits")
REDIRECTION_FIELDS = ("domains", "enabled", "to", "code", "preserve_path")
DEAD_FIELDS = ("domains", "enabled")
LOCATION_FIELDS = ("position", "path", "upstreams", "cache", "headers", "compression", "rate_limit")


class Summary:
    """What an import did: counts per kind and action."""

    KINDS = ("settings", "access lists", "DNS providers", "certificates", "proxy hosts", "redirection hosts", "404 hosts", "streams")

    def __init__(self):
        self.counts = Counter()

    def add(self, kind, action, count=1):
        self.counts[kind, action] += count

    def lines(self):
        result = []
        for kind in self.KINDS:
            parts = [f"{self.counts[kind, action]} {action}" for action in ("created", "updated", "deleted")
                     if self.counts[kind, action]]
            if parts:
                result.append(f"{kind}: {', '.join(parts)}")
        return result or ["nothing to change"]


def import_yaml(text, replace=False, dry_run=False):
    return import_document(load_yaml(text), replace=replace, dry_run=dry_run)


def import_document(data, replace=False, dry_run=False):
    """Validate `data` (parsed YAML) and apply it; returns a Summary or raises DocumentInvalid."""
    doc, errors = parse_document(data)
    if errors:
        raise DocumentInvalid(errors)
    with transaction.atomic():
        errors = _check_against_database(doc, replace)
        if errors:
            raise DocumentInvalid(errors)
        summary = _apply(doc, replace)
        if dry_run:
            transaction.set_rollback(True)
    return summary


# -- checks that need the database ----------------------------------------------------


def _check_against_database(doc, replace):
    errors = []
    certificates = {c["name"] for c in doc["certificates"]}
    access_lists = {a["name"] for a in doc["access_lists"]}
    if not replace:
        certificates |= set(Certificate.objects.values_list("name", flat=True))
        access_lists |= set(AccessList.objects.values_list("name", flat=True))
    where = "this document" if replace else "this document or the database"
    for host in doc["proxy_hosts"]:
        if host["certificate"] is not None and host["certificate"] not in certificates:
            errors.append(ConfigError(f"{host['at']}.ssl.certificate", f"no certificate named {host['certificate']!r} in {where}"))
        if host["access_list"] is not None and host["access_list"] not in access_lists:
            errors.append(ConfigError(f"{host['at']}.access_list", f"no access list named {host['access_list']!r} in {where}"))
    for cert in doc["certificates"]:
        if cert["certificate_pem"] is not None and cert["key_pem"] is None:
            errors.extend(_keep_existing_key(cert))
    providers = {p["name"] for p in doc["dns_providers"]}
    if not replace:
        providers |= set(DnsProvider.objects.values_list("name", flat=True))
    for cert in doc["certificates"]:
        if cert["dns_provider"] is not None and cert["dns_provider"] not in providers:
            errors.append(ConfigError(f"{cert['at']}.dns_provider", f"no DNS provider named {cert['dns_provider']!r} in {where}"))
    for provider in doc["dns_providers"]:
        errors.extend(_keep_existing_secrets(provider))
    return errors


def _keep_existing_secrets(provider):
    """A DNS provider without its secret keeps the secret of the existing provider of its
    name and kind (a file exported without --include-secrets re-imports here)."""
    errors = []
    existing = DnsProvider.objects.filter(name=provider["name"], kind=provider["kind"]).first()
    for field in DnsProvider.SECRET_FIELDS[provider["kind"]]:
        if provider[field] is not None:
            continue
        kept = getattr(existing, field, "") if existing else ""
        if not kept:
            errors.append(ConfigError(f"{provider['at']}.{field}",
                                      f"required: no existing {provider['kind']} DNS provider named "
                                      f"{provider['name']!r} has one to keep (export with --include-secrets "
                                      "to carry secrets)"))
        provider[field] = kept
    return errors


def _keep_existing_key(cert):
    """A certificate without key_pem keeps the key of the existing certificate of its name."""
    existing = Certificate.objects.filter(name=cert["name"]).exclude(key_pem="").first()
    path = f"{cert['at']}.key_pem"
    if existing is None:
        return [ConfigError(path, f"required: no existing certificate named {cert['name']!r} has a key to keep "
                                  "(export with --include-secrets to carry keys)")]
    try:
        validators.certificate_with_key(cert["certificate_pem"], existing.key_pem)
    except Invalid as exc:
        return [ConfigError(path, f"the key kept from the existing certificate {cert['name']!r} does not fit: {exc}")]
    cert["key_pem"] = existing.key_pem
    return []


# -- applying -------------------------------------------------------------------------


def _apply(doc, replace):
    summary = Summary()
    _apply_settings(doc["settings"], replace, summary)
    providers = _apply_dns_providers(doc["dns_providers"], summary)
    certificates = _apply_certificates(doc["certificates"], providers, summary)
    access_lists = _apply_access_lists(doc["access_lists"], summary)
    _apply_hosts(doc, replace, certificates, access_lists, summary)
    _apply_streams(doc["streams"], replace, summary)
    if replace:
        _delete(Certificate.objects.exclude(pk__in=[c.pk for c in certificates.values()]), "certificates", summary)
        _delete(AccessList.objects.exclude(pk__in=[a.pk for a in access_lists.values()]), "access lists", summary)
        _delete(DnsProvider.objects.exclude(pk__in=[p.pk for p in providers.values()]), "DNS providers", summary)
    return summary


def _delete(queryset, kind, summary):
    for obj in queryset:
        obj.delete()
        summary.add(kind, "deleted")


def _apply_settings(values, replace, summary):
    if values is None and not replace:
        return
    config = Settings.load()
    if values is None:
        values = {field.name: field.get_default() for field in Settings._meta.concrete_fields if field.name != "id"}
    for field, value in values.items():
        setattr(config, field, value)
    config.save()
    summary.add("settings", "updated")


def _apply_dns_providers(items, summary):
    result = {}
    for item in items:
        provider = DnsProvider.objects.filter(name=item["name"]).first()
        summary.add("DNS providers", "updated" if provider else "created")
        fresh = DnsProvider(name=item["name"], kind=item["kind"])   # other kinds' fields back to defaults
        if provider is not None:
            fresh.pk, fresh.created_at = provider.pk, provider.created_at
        for key in DNS_KIND_KEYS[item["kind"]]:
            setattr(fresh, key, item[key])
        fresh.save()
        result[fresh.name] = fresh
    return result


def _apply_certificates(items, providers, summary):
    result = {}
    for item in items:
        cert = Certificate.objects.filter(name=item["name"]).first()
        summary.add("certificates", "updated" if cert else "created")
        cert = cert or Certificate(name=item["name"])
        cert.provider = item["provider"]
        cert.domains = item["domains"]
        cert.challenge = item["challenge"] if item["provider"] == "letsencrypt" else "http"
        cert.dns_provider = _lookup(DnsProvider, providers, item["dns_provider"]) if cert.challenge == "dns" else None
        if item["certificate_pem"] is not None:
            cert.certificate_pem, cert.key_pem, cert.chain_pem = item["certificate_pem"], item["key_pem"], item["chain_pem"]
            leaf = validators.certificate_chain(cert.certificate_pem)[0]
            cert.expires_at = leaf.not_valid_after_utc
            cert.status = "valid" if cert.expires_at > timezone.now() else "expired"
            cert.last_error = ""
        elif cert.pk is None:
            cert.status = "pending"
        cert.save()
        result[cert.name] = cert
    return result


def _apply_access_lists(items, summary):
    result = {}
    for item in items:
        access_list = AccessList.objects.filter(name=item["name"]).first()
        summary.add("access lists", "updated" if access_list else "created")
        access_list = access_list or AccessList(name=item["name"])
        access_list.satisfy, access_list.pass_auth = item["satisfy"], item["pass_auth"]
        access_list.save()
        access_list.users.all().delete()
        access_list.rules.all().delete()
        for user in item["users"]:
            hashed = user["password_hash"] if "password_hash" in user else make_password(user["password"])
            AccessListUser.objects.create(access_list=access_list, username=user["username"], password_hash=hashed)
        for position, rule in enumerate(item["rules"]):
            AccessRule.objects.create(access_list=access_list, position=position, **rule)
        result[access_list.name] = access_list
    return result


def _existing_hosts():
    return [host for model in HOST_MODELS.values() for host in model.objects.order_by("id")]


def _apply_hosts(doc, replace, certificates, access_lists, summary):
    existing = _existing_hosts()
    reused, replaced = {}, set()
    for index, host in enumerate(hosts(doc)):
        wanted = set(host["domains"])
        for old in existing:
            if not wanted.intersection(old.domains):
                continue
            replaced.add(old)
            if index not in reused and old not in reused.values() and type(old) is HOST_MODELS[host["kind"]]:
                reused[index] = old
    kept = set(reused.values())
    doomed = [old for old in existing if old not in kept and (replace or old in replaced)]
    for old in doomed:
        old.delete()
        summary.add(_kind_label(type(old)), "deleted")
    for index, host in enumerate(hosts(doc)):
        model = HOST_MODELS[host["kind"]]
        obj = reused.get(index) or model()
        summary.add(_kind_label(model), "updated" if obj.pk else "created")
        fields = {ProxyHost: PROXY_FIELDS, RedirectionHost: REDIRECTION_FIELDS, DeadHost: DEAD_FIELDS}[model]
        for field in fields:
            setattr(obj, field, host[field])
        if model is ProxyHost:
            obj.certificate = _lookup(Certificate, certificates, host["certificate"])
            obj.access_list = _lookup(AccessList, access_lists, host["access_list"])
        obj.save()
        if model is ProxyHost:
            obj.locations.all().delete()
            for location in host["locations"]:
                Location.objects.create(proxy_host=obj, **{field: location[field] for field in LOCATION_FIELDS})


def _lookup(model, from_document, name):
    if name is None:
        return None
    return from_document.get(name) or model.objects.get(name=name)


def _kind_label(model):
    return {ProxyHost: "proxy hosts", RedirectionHost: "redirection hosts", DeadHost: "404 hosts"}[model]


def _apply_streams(items, replace, summary):
    kept = []
    for item in items:
        stream = Stream.objects.filter(listen=item["listen"], protocol=item["protocol"]).order_by("id").first()
        summary.add("streams", "updated" if stream else "created")
        stream = stream or Stream(listen=item["listen"], protocol=item["protocol"])
        stream.upstream_host, stream.upstream_port, stream.enabled = item["upstream_host"], item["upstream_port"], item["enabled"]
        stream.save()
        kept.append(stream.pk)
    identities = {(item["listen"], item["protocol"]) for item in items}
    for stream in Stream.objects.exclude(pk__in=kept):
        if replace or (stream.listen, stream.protocol) in identities:
            stream.delete()
            summary.add("streams", "deleted")
