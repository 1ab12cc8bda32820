"""Small branded pages the engine answers with itself, rendered once at import."""
import html


def page(title, message, note=""):
    """`note` (plain text, e.g. the request id) is shown small under the message."""
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>{t}</title>"
        "<style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;color:#222}}"
        "small{{color:#888}}</style></head><body><h1>{t}</h1><p>{m}</p>{n}"
        "<small>Gatehouse</small></body></html>"
    ).format(t=title, m=message, n=f"<p><small>{html.escape(note)}</small></p>" if note else "").encode("utf-8")


NOT_FOUND_PAGE = page("404 Not Found", "There is nothing configured at this address.")
WELCOME_PAGE = page("Gatehouse is running", "This address has no host configured yet.")
# A host naming an access list the snapshot does not have is closed rather than left open.
ACCESS_CLOSED_PAGE = page("403 Forbidden", "This host is protected by an access list that is missing from the "
                                           "proxy's configuration, so it is closed rather than left open.")
STARTING_PAGE = page("503 Service Unavailable", "The proxy is starting and has no configuration yet.")
