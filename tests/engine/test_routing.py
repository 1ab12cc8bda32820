import pytest

from proxy_engine.balancer import UpstreamGroup, smooth_weighted_cycle
from proxy_engine.routing import Router, normalize_host
from proxy_engine.snapshot import Upstream, parse_snapshot
from tests.engine.support import document


@pytest.fixture
def router():
    return Router(parse_snapshot(document()))


@pytest.mark.parametrize("raw, expected", [
    (b"App.Example.TEST", b"app.example.test"),
    (b"app.example.test:8080", b"app.example.test"),
    (b"app.example.test.", b"app.example.test"),
    (b"app.example.test.:80", b"app.example.test"),
    (b"[::1]:8080", b"[::1]"),
    (b" app.example.test ", b"app.example.test"),
])
def test_normalize_host_strips_case_port_and_trailing_dot(raw, expected):
    assert normalize_host(raw) == expected


def test_exact_host_routes_to_its_proxy_host(router):
    route = router.route(b"app.example.test")
    assert route.kind == "proxy" and route.host.id == 1


def test_wildcard_matches_exactly_one_extra_label(router):
    assert router.route(b"one.apps.example.test").kind == "proxy"
    assert router.route(b"two.one.apps.example.test") is router.default
    assert router.route(b"apps.example.test") is router.default


def test_unknown_host_gets_the_default_site(router):
    assert router.route(b"nobody.test") is router.default
    assert router.default.status == 404


def test_longest_location_prefix_wins(router):
    route = router.route(b"app.example.test")
    assert route.select(b"/static/big/x.png").upstreams[0].host == "10.0.1.30"
    assert route.select(b"/static/x.png").upstreams[0].host == "10.0.1.20"
    assert route.select(b"/staticx").upstreams[0].host == "10.0.1.10"
    assert route.select(b"/inherit/a") is route.group


def test_redirection_host_preserves_path_and_query_or_not():
    doc = document()
    doc["redirection_hosts"].append({"id": 6, "domains": ["flat.example.test"], "to": "https://x.test/landing",
                                     "code": 308, "preserve_path": False})
    router = Router(parse_snapshot(doc))
    assert router.route(b"old.example.test").location(b"/a/b?c=d") == b"https://new.example.test/a/b?c=d"
    flat = router.route(b"flat.example.test")
    assert (flat.code, flat.location(b"/a?b")) == (308, b"https://x.test/landing")


def test_dead_host_answers_404(router):
    route = router.route(b"gone.example.test")
    assert (route.kind, route.status) == ("static", 404)


@pytest.mark.parametrize("site, kind, status, close", [
    ({"action": "444"}, "static", 444, True),
    ({"action": "html", "body": "<p>hi</p>"}, "static", 200, False),
    ({"action": "welcome"}, "static", 200, False),
    ({"action": "redirect", "to": "https://home.test/"}, "redirect", 302, None),
])
def test_every_default_site_action(site, kind, status, close):
    doc = document()
    doc["settings"]["default_site"] = site
    route = Router(parse_snapshot(doc)).route(b"nobody.test")
    assert route.kind == kind
    assert getattr(route, "status", getattr(route, "code", None)) == status
    if close is not None:
        assert route.close is close


def test_smooth_weighted_round_robin_interleaves_by_weight():
    a, b = Upstream("http", "a", 1, 1), Upstream("http", "b", 1, 2)
    assert smooth_weighted_cycle((a, b)) == (b, a, b)
    group = UpstreamGroup((a, b))
    picks = [group.pick().host for _ in range(6)]
    assert picks.count("b") == 4 and picks.count("a") == 2


def test_a_host_whose_access_list_is_missing_is_closed_and_one_with_a_known_list_is_enforced():
    from proxy_engine.routing import Router
    from proxy_engine.snapshot import parse_snapshot
    from tests.engine.support import document

    doc = document()
    doc["proxy_hosts"][0]["access_list"] = "family"
    route = Router(parse_snapshot(doc)).route(b"app.example.test")
    assert (route.kind, route.status) == ("static", 403)
    assert b"access list" in route.body
    doc["access_lists"] = [{"name": "family", "rules": [{"action": "allow", "source": "all"}]}]
    route = Router(parse_snapshot(doc)).route(b"app.example.test")
    assert route.kind == "proxy" and route.access.name == "family"
