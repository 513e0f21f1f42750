"""Model labels (proxy/dataplane/instrument.py): one label per model whatever the client
calls it, and a cap that neither invented names nor an outage can fill."""

from __future__ import annotations

import json
import threading

import requests
from werkzeug import Request, Response

from tests.conftest import free_port
from tests.ollama_fake import chat_chunks, ndjson, stream_response

MODEL = "llama3.2"


def test_unknown_and_invented_model_names_do_not_mint_series(httpserver, proxy_for):
    def handler(request: Request) -> Response:
        model = json.loads(request.get_data())["model"]
        if model.startswith("real-"):
            return stream_response([ndjson(chat_chunks(model, ["a"]))])
        return Response(json.dumps({"error": f"model '{model}' not found"}), status=404,
                        content_type="application/json")

    httpserver.expect_request("/api/chat").respond_with_handler(handler)
    with proxy_for(model_label_cap=3) as p:
        with requests.Session() as http:
            for i in range(50):
                http.post(f"{p.url}/api/chat", json={"model": f"guess-{i}", "messages": []})
            for i in range(5):
                http.post(f"{p.url}/api/chat", json={"model": f"real-{i}", "messages": []})
        models = {dict(k[1])["model"] for k in p.scrape() if k[0] == "ollama_proxy_requests_total"}
        assert models == {"unknown", "real-0:latest", "real-1:latest", "real-2:latest", "other"}
        assert p.value("ollama_proxy_requests_total", model="unknown") == 50
        assert p.value("ollama_proxy_requests_total", model="other") == 2


def test_concurrent_first_requests_for_one_model_share_one_label(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for(model_label_cap=1) as p:
        threads = [threading.Thread(target=requests.post, args=(f"{p.url}/api/chat",),
                                    kwargs={"json": {"model": MODEL, "messages": []}}) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert p.value("ollama_proxy_requests_total", model=f"{MODEL}:latest") == 10


def test_a_new_model_name_that_never_succeeded_keeps_no_label(proxy_for):
    with proxy_for(upstream=f"http://127.0.0.1:{free_port()}", model_label_cap=1) as p:
        for i in range(5):
            requests.post(f"{p.url}/api/chat", json={"model": f"name-{i}", "messages": []})
        models = {dict(k[1])["model"] for k in p.scrape() if k[0] == "ollama_proxy_requests_total"}
        assert models == {"unknown"}  # an outage does not fill the cap with unconfirmed names


def test_a_model_with_and_without_its_latest_tag_is_one_label(httpserver, proxy_for):
    # Ollama lists models with their tag (so does the exporter): the proxy's label matches.
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for() as p:
        for name in (MODEL, f"{MODEL}:latest"):
            r = requests.post(f"{p.url}/api/chat", json={"model": name, "messages": []})
            assert r.headers["X-Sidecar-Model"] == name  # what the client asked, forwarded as is
        models = {dict(k[1])["model"] for k in p.scrape() if k[0] == "ollama_proxy_requests_total"}
        assert models == {f"{MODEL}:latest"}
