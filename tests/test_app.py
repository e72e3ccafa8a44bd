"""The dashboard driven through its named API endpoints with gradio_client, on a tiny model:
every endpoint, the error cases, and two visitors at once keeping their own results."""

import threading
import zipfile

import pytest
import torch
from gradio_client import Client


CUSTOM = "hub id or local folder"
PRUNE_DEFAULTS = dict(mode="ratio of groups", scope="local", strategy="block", granularity="kv-group",
                      one_ratio=True, attn_share=0.0, compensate=False, recompute=False, allocation="uniform", a0=0, a1=2, m0=0, m1=2, steps=1,
                      criterion="taylor-element1", aggregation="sum", scale="rank")


def prune_args(amount, **kw):
    d = {**PRUNE_DEFAULTS, **kw}
    return (d["mode"], amount, d["scope"], d["strategy"], d["granularity"], d["one_ratio"], d["attn_share"],
            d["compensate"], d["recompute"], d["allocation"], d["a0"], d["a1"], d["m0"], d["m1"], d["steps"], d["criterion"],
            d["aggregation"], d["scale"])


@pytest.fixture(scope="module")
def server():
    import socket

    import app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    yield app
    app.demo.close()


def client(server):
    return Client(server.demo.local_url, verbose=False)


def test_whole_lesson_on_a_tiny_model(server, tiny_folder, tmp_path):
    c = client(server)
    facts, status, *_ = c.predict(CUSTOM, tiny_folder, api_name="/load_model")
    assert "Loaded" in status
    rows = {r[0]: r[1] for r in facts["data"]}
    assert rows["decoder layers"] == "2" and rows["KV heads (grouped-query attention)"] == "2"
    session = next(iter(s for s in server.REGISTRY._sessions.values() if s.source == tiny_folder))
    original = {k: v.clone() for k, v in session.original.state_dict().items()}

    fig, table = c.predict(1, api_name="/structure")
    assert len(table["data"]) == 3                      # two KV groups + the MLP channel row
    attn, mlp, summary, status = c.predict("taylor-element1", "sum", "builtin", 4, 32, "rank", api_name="/score")
    assert "Scored" in status and {r[0] for r in summary["data"]} == {"attn", "mlp"}
    assert attn is not None and mlp is not None
    *_, text = c.predict(*prune_args(0.5), api_name="/preview")
    assert "Will remove" in text
    *_, text = c.predict(*prune_args(0.5, allocation="sensitivity", compensate=True, recompute=True),
                         api_name="/preview")
    assert "Will remove" in text
    table, widths, _, _, text = c.predict(*prune_args(0.5), api_name="/prune")
    metrics = {r[0]: r for r in table["data"]}
    assert metrics["parameters"][3].startswith("-")     # the parameter count dropped
    assert all(torch.equal(original[k], v) for k, v in session.original.state_dict().items())

    table, text = c.predict(0.5, api_name="/contrast")
    metrics = {r[0]: r for r in table["data"]}
    assert metrics["parameters"][3] in ("+0.0%", "")    # sparsity alone does not shrink the model
    assert metrics["non-zero parameters"][3].startswith("-")

    fig, status = c.predict("quick", 5, 1e-3, 1.0, "builtin", api_name="/recover")
    assert "Stopped after 5 steps" in status
    assert "Merged" in c.predict(api_name="/merge")
    o, p, l, speed = c.predict("The Leaning Tower of Pisa is known for", 8, False, 0, False, api_name="/compare")
    assert o and p and l and "tokens/s" in speed
    table, fig = c.predict(["original", "pruned", "pruned + LoRA"], ["ptb"], ["arc_easy"], 4, 10,
                           api_name="/evaluate")
    assert [r[0] for r in table["data"]] == ["original", "pruned", "pruned + LoRA"]
    archive, recipe, adapter, note = c.predict("pruned + LoRA", api_name="/export")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
    assert any(n.endswith("config.json") for n in names) and any(n.endswith(".safetensors") for n in names)
    assert adapter and recipe


@pytest.mark.parametrize("call, match", [
    (("taylor-element1", "sum", "builtin", 4, 32, "rank", "/score"), "No model loaded"),
])
def test_nothing_loaded_yet(server, call, match):
    with pytest.raises(Exception, match=match):
        client(server).predict(*call[:-1], api_name=call[-1])


def test_errors_are_messages(server, tiny_folder, tmp_path):
    c = client(server)
    c.predict(CUSTOM, tiny_folder, api_name="/load_model")
    with pytest.raises(Exception, match="does not exist"):
        c.predict(CUSTOM, "./no/such/model", api_name="/load_model")
    with pytest.raises(Exception, match="nobody-xyz/not-a-model"):
        c.predict(CUSTOM, "nobody-xyz/not-a-model", api_name="/load_model")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    (gpt2 / "tokenizer_config.json").write_text("{}")
    with pytest.raises(Exception, match="not supported|could not load"):
        c.predict(CUSTOM, str(gpt2), api_name="/load_model")
    fig, table = c.predict(0, api_name="/structure")      # failed loads lost nothing
    assert len(table["data"]) == 3
    with pytest.raises(Exception, match="greater than maximum|between 0 and 0.95"):
        c.predict(*prune_args(0.99), api_name="/prune")
    with pytest.raises(Exception, match="empty"):
        c.predict("   ", 8, False, 0, False, api_name="/compare")
    with pytest.raises(Exception, match="greater than maximum|max_new_tokens"):
        c.predict("Hi", 100000, False, 0, False, api_name="/compare")
    with pytest.raises(Exception, match="prune"):
        c.predict("quick", 5, 1e-3, 1.0, "builtin", api_name="/recover")
    with pytest.raises(Exception, match="prune"):
        c.predict("pruned", api_name="/export")


def test_two_visitors_keep_their_own_results(server, tiny_folder):
    results = {}

    def visit(amount):
        c = client(server)
        c.predict(CUSTOM, tiny_folder, api_name="/load_model")
        table, *_ , text = c.predict(*prune_args(amount, criterion="l2"), api_name="/prune")
        params_after = {r[0]: r[2] for r in table["data"]}["parameters"]
        # ask again later: the session still holds this visitor's own pruned model
        archive, *_ = c.predict("pruned", api_name="/export")
        results[amount] = (params_after, text, archive)

    threads = [threading.Thread(target=visit, args=(a,)) for a in (0.25, 0.75)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0.25][0] != results[0.75][0]
    assert int(results[0.25][0].replace(",", "")) > int(results[0.75][0].replace(",", ""))
    from pruner.export import load_pruned

    for amount, (params, _, archive) in results.items():
        with zipfile.ZipFile(archive) as z:
            target = archive + "-unzipped"
            z.extractall(target)
        model, _ = load_pruned(f"{target}/pruned", device="cpu")
        from pruner.stats import count_params

        assert count_params(model)["params"] == int(params.replace(",", ""))


def test_busy_server_says_so(server, tiny_folder, monkeypatch):
    monkeypatch.setattr(server.REGISTRY, "max_sessions", len(server.REGISTRY))
    with pytest.raises(Exception, match="busy"):
        client(server).predict(CUSTOM, tiny_folder, api_name="/load_model")
