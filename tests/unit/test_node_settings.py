"""A node's id and URL (api/settings.py): defaults and what is refused."""

from __future__ import annotations

import socket

from api.settings import Settings, default_node_url, in_container, node_problem


def test_default_node_id_is_the_host_name_with_the_port_outside_a_container() -> None:
    s = Settings.from_env({"CWEB_PORT": "18123"})
    assert s.node_id == ""  # resolved once the port is final (flags override the env)
    s.port = 18124
    s.resolved()
    expected = socket.gethostname() if in_container() else f"{socket.gethostname()}:18124"
    assert s.node_id == expected
    assert s.node_url == "http://127.0.0.1:18124"


def test_explicit_node_id_and_url_are_kept() -> None:
    s = Settings.from_env({"CWEB_NODE_ID": "edge-1", "CWEB_NODE_URL": "http://10.0.0.7:8080"}).resolved()
    assert (s.node_id, s.node_url) == ("edge-1", "http://10.0.0.7:8080")
    assert node_problem(s) is None


def test_default_url_of_a_wildcard_listener_is_an_address_of_the_host() -> None:
    url = default_node_url("0.0.0.0", 8080, tls=True)
    assert url.startswith("https://") and url.endswith(":8080") and "0.0.0.0" not in url
    assert default_node_url("::1", 9000, tls=False) == "http://[::1]:9000"


def test_node_ids_that_could_split_a_header_or_urls_with_a_path_are_refused() -> None:
    for bad in ("a\r\nX-Evil: 1", "", " lead", "x" * 129, "semi;colon"):
        s = Settings(node_id=bad or "\n")
        assert "CWEB_NODE_ID" in (node_problem(s) or ""), bad
    for bad in ("ftp://h:1", "http://h:1/path", "http://h :1"):
        assert "CWEB_NODE_URL" in (node_problem(Settings(node_url=bad)) or ""), bad
