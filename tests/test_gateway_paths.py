"""The gateway's path allow-list and route matching: tables, and a property over any path."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway._paths import BadPath, Match, Router, WrongMethod, is_token, split_path
from natsmesh import HttpRoute

TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")

ROUTES = (
    HttpRoute(method="GET", path="/products", target="catalog.list"),
    HttpRoute(method="GET", path="/products/{id}", target="catalog.get"),
    HttpRoute(method="GET", path="/products/featured", target="catalog.featured"),
    HttpRoute(method="DELETE", path="/products/{id}", target="catalog.remove"),
    HttpRoute(method="POST", path="/orders", target="orders.place", timeout=5),
    HttpRoute(method="GET", path="/orders/{id}/lines/{line}", target="orders.line"),
    HttpRoute(method="GET", path="/", target="catalog.index"),
)


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("/", ()),
        ("/catalog/get", ("catalog", "get")),
        ("/a-b_c/D9", ("a-b_c", "D9")),
        ("/" + "x" * 64, ("x" * 64,)),
    ],
)
def test_allowed_paths_split_into_segments(path: str, segments: tuple[str, ...]) -> None:
    assert split_path(path) == segments


@pytest.mark.parametrize(
    "path",
    [
        "/a.b/c",  # a dot would split one token into two
        "/a/*",
        "/a/>",
        "/*/get",
        "/>/get",
        "/a b/c",
        "/a\tb/c",
        "/a\r\nb/c",
        "/a\nb",
        "/a\x00b/c",
        "/../catalog/get",
        "/catalog/../get",
        "/./get",
        "/catalog//get",
        "/catalog/get/",
        "//",
        "/" + "x" * 65,
        "/é/get",  # letters outside ASCII
        "/%2A/get",  # what an undecoded escape would look like: '%' is not allowed either
        "catalog/get",
        "/" + "/".join(["a"] * 17),
        "/" + "a" * 1100,
    ],
)
def test_everything_else_is_a_bad_path(path: str) -> None:
    with pytest.raises(BadPath) as caught:
        split_path(path)
    assert path.strip("/") not in caught.value.reason or not path.strip("/")  # never echoed


def test_table_routes_match_with_parameters_and_literals_first() -> None:
    router = Router(ROUTES)
    assert router.match("GET", ("products", "7")) == Match(
        "catalog", "get", {"id": "7"}, None, "/products/{id}"
    )
    # The literal wins over the parameter, whatever the order of the table.
    featured = router.match("GET", ("products", "featured"))
    assert isinstance(featured, Match)
    assert featured.endpoint == "featured"
    deleted = router.match("DELETE", ("products", "7"))
    assert isinstance(deleted, Match)
    assert deleted.target == "catalog.remove"
    line = router.match("GET", ("orders", "o-1", "lines", "3"))
    assert isinstance(line, Match)
    assert line.params == {"id": "o-1", "line": "3"}
    orders = router.match("POST", ("orders",))
    assert isinstance(orders, Match)
    assert orders.timeout == 5
    index = router.match("GET", ())
    assert isinstance(index, Match)
    assert index.endpoint == "index"


def test_a_path_of_other_methods_is_a_wrong_method_with_what_is_allowed() -> None:
    router = Router(ROUTES)
    assert router.match("PUT", ("products", "7")) == WrongMethod(("GET", "DELETE"))
    assert router.match("GET", ("orders",)) == WrongMethod(("POST",))


def test_the_default_route_is_post_service_endpoint_after_the_table() -> None:
    router = Router(ROUTES)
    default = router.match("POST", ("pricing", "quote"))
    assert default == Match("pricing", "quote", by_default=True)
    assert default is not None
    assert default.target == "pricing.quote"
    # GET /products/{id} is the table's; POST /products/7 falls to the default route
    posted = router.match("POST", ("products", "7"))
    assert isinstance(posted, Match)
    assert posted.by_default
    assert router.match("GET", ("pricing", "quote")) == WrongMethod(("POST",))
    assert router.match("POST", ("a", "b", "c")) is None
    closed = Router(ROUTES, default_route=False)
    assert closed.match("POST", ("pricing", "quote")) is None
    assert closed.match("GET", ("products", "7")) == router.match("GET", ("products", "7"))


def test_resolve_returns_bad_paths_and_remembers_answers() -> None:
    router = Router(ROUTES)
    first = router.resolve("GET", "/products/9")
    assert router.resolve("GET", "/products/9") is first
    bad = router.resolve("GET", "/products/9.5")
    assert isinstance(bad, BadPath)
    assert bad.__traceback__ is None
    for n in range(5000):  # the memo is bounded
        router.resolve("POST", f"/s/e{n}")
    assert len(router._memo) <= 4096


# Paths as a client can send them: any text, with the characters that matter made likely.
_CHARS = st.sampled_from(list("ab/._-*> \t\r\n\x00%é9Z$:{}?#"))
_PATHS = st.one_of(
    st.text(),
    st.lists(_CHARS, max_size=40).map("".join),
    st.lists(st.text(_CHARS, max_size=8), max_size=5).map(lambda parts: "/" + "/".join(parts)),
)


@given(path=_PATHS, method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_any_path_is_refused_or_maps_to_a_subject_of_allowed_tokens(path: str, method: str) -> None:
    found = Router(ROUTES).resolve(method, path)
    if isinstance(found, Match):
        subject = f"mesh.{found.service}.{found.endpoint}"
        tokens = subject.split(".")
        assert len(tokens) == 3
        assert all(TOKEN.fullmatch(token) for token in tokens), subject
        assert all(is_token(value) for value in found.params.values())
    else:
        assert found is None or isinstance(found, BadPath | WrongMethod)
