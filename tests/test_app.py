"""The dashboard driven through its named API endpoints with gradio_client, on a tiny model:
every endpoint (with its defaults too), errors as status lines, a class of visitors sharing one
original and the memoised results, a reload keeping the session, and the memory budget."""

import hashlib
import threading
import zipfile

import gguf

import pandas as pd
import pytest
import torch
from gradio_client import Client


CUSTOM = "hub id or local folder"
PRUNE_DEFAULTS = dict(unit="groups", scope="local", strategy="block", attn_granularity="kv-group",
                      one_ratio=True, attn_share=0.0, hidden_share=0.0, compensate=False, recompute_means=False, refit=False,
                      allocation="uniform",
                      attn_start=0, attn_end=2, mlp_start=0, mlp_end=2, iterative_steps=1,
                      criterion="taylor-element1", aggregation="sum", scale="rank")


def prune_args(amount, **kw):
    """The Preview / Prune form's values in the order of its named fields (components/tabs/prune.py)."""
    from components.tabs.prune import FORM

    values = {**PRUNE_DEFAULTS, "amount": amount, **kw}
    assert set(values) == set(FORM)
    return tuple(values[name] for name in FORM)


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


def state_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def lesson(c, folder, amount=0.5):
    """load -> structure -> score -> preview -> prune -> contrast -> recover -> merge -> compare ->
    evaluate -> export, asserting what each step shows."""
    facts, *_, status = c.predict(CUSTOM, folder, api_name="/load_model")
    assert "Loaded" in status, status
    rows = {r[0]: r[1] for r in facts["data"]}
    assert rows["decoder layers"] == "2" and rows["KV heads (grouped-query attention)"] == "2"
    fig, table, _ = c.predict(1, api_name="/structure")
    assert len(table["data"]) == 3                      # two KV groups + the MLP channel row
    attn, mlp, summary, one_layer, histogram, status = c.predict("taylor-element1", "sum", "builtin", 4, 32,
                                                                 "rank", api_name="/score")
    assert "Scored" in status and {r[0] for r in summary["data"]} == {"attn", "mlp"}
    fig, why, _ = c.predict(1, "KV group", 1, api_name="/graph")
    assert "out-degree" in why and "query heads" in why
    *_, text = c.predict(*prune_args(amount), api_name="/preview")
    assert "Will remove" in text
    table, widths, _, _, text = c.predict(*prune_args(amount), api_name="/prune")
    assert "Removed" in text, text
    metrics = {r[0]: r for r in table["data"]}
    assert metrics["parameters"][3].startswith("-")     # the parameter count dropped
    table, text = c.predict(amount, api_name="/contrast")
    columns = table["headers"]
    assert columns[:3] == ["metric", "original", "structured"]      # side by side
    metrics = {r[0]: dict(zip(columns, r)) for r in table["data"]}
    sparse_change = next(c for c in columns if c.startswith("change (unstructured"))
    assert metrics["parameters"][sparse_change] in ("+0.0%", "")      # sparsity alone does not shrink it
    assert metrics["non-zero parameters"][sparse_change].startswith("-")
    assert metrics["parameters"]["change (structured)"].startswith("-")
    assert "Dense matrix kernels" in text
    fig, status = c.predict("quick", 5, 1e-3, 1.0, "builtin", api_name="/recover")
    assert "5 steps" in status, status
    assert "Merged" in c.predict(api_name="/merge")
    o, p, l, speed = c.predict("The Leaning Tower of Pisa is known for", 8, False, 0, False, api_name="/compare")
    assert o and p and l and "tokens/s" in speed
    table, fig, status = c.predict(["original", "pruned", "pruned + LoRA"], ["wikitext2"], ["arc_easy"], 4, 10,
                                   api_name="/evaluate")
    assert [r[0] for r in table["data"]] == ["original", "pruned", "pruned + LoRA"], status
    assert "Data: arc_easy: " in status and "wikitext2: " in status        # where each set came from
    assert "arc_easy acc % (± s.e.)" in table["headers"] and "±" in table["data"][0][-1]
    archive, recipe, adapter, note = c.predict("pruned + LoRA", api_name="/export")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
    assert any(n.endswith("config.json") for n in names) and any(n.endswith(".safetensors") for n in names)
    assert adapter and recipe
    path, sentence = c.predict("pruned + LoRA", "f32", api_name="/export_gguf")
    assert path.endswith(".gguf") and "llama.cpp architecture" in sentence, sentence
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() in ("llama", "deci")
    return o, p, l


def test_a_class_shares_one_original_and_the_results(server, tiny_folder):
    """Three visitors run the whole lesson at once: one original object, unchanged; the second and
    third are served identical results from the cache."""
    outputs, errors = {}, []

    def visit(i):
        try:
            outputs[i] = lesson(client(server), tiny_folder)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    first = client(server)
    outputs[0] = lesson(first, tiny_folder)
    session = next(s for s in server.REGISTRY._sessions.values() if s.source == tiny_folder)
    original = session.original(server.STORE).model
    before = state_hash(original)
    hits_before = server.STORE.hits
    threads = [threading.Thread(target=visit, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert outputs[1] == outputs[2] == outputs[0]          # greedy generations: identical
    sessions = [s for s in server.REGISTRY._sessions.values() if s.source == tiny_folder]
    assert len(sessions) >= 3
    assert {id(s.original(server.STORE).model) for s in sessions} == {id(original)}
    assert len({s.prune_key for s in sessions}) == 1       # one pruned model for the whole class
    assert state_hash(original) == before
    assert server.STORE.hits - hits_before >= 2 * 8         # scores, prune, recovery, ... from the cache


def test_every_endpoint_works_with_its_defaults(server):
    c = client(server)
    info = c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name, spec in info.items():
        missing = [p["parameter_name"] for p in spec["parameters"] if not p["parameter_has_default"]]
        assert not missing, f"{name} needs {missing}"
    from components.tabs.prune import FORM

    for name in ("/preview", "/prune"):      # one named parameter per field of the form
        assert [p["parameter_name"] for p in info[name]["parameters"]] == FORM
    # the lesson's first step with nothing but defaults: the built-in model
    if __import__("pruner.models", fromlist=["x"]).default_model_file() is not None:
        status = c.predict(api_name="/load_model")[-1]
        assert "Loaded" in status and "SmolLM2" in status


def test_errors_are_status_lines_and_lose_nothing(server, tiny_folder, tmp_path):
    c = client(server)
    *_, status = c.predict("taylor-element1", "sum", "builtin", 4, 32, "rank", api_name="/score")
    assert "No model loaded in this session yet" in status
    c.predict(CUSTOM, tiny_folder, api_name="/load_model")
    assert "does not exist" in c.predict(CUSTOM, "./no/such/model", api_name="/load_model")[-1]
    assert "nobody-xyz/not-a-model" in c.predict(CUSTOM, "nobody-xyz/not-a-model", api_name="/load_model")[-1]
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    (gpt2 / "tokenizer_config.json").write_text("{}")
    status = c.predict(CUSTOM, str(gpt2), api_name="/load_model")[-1]
    assert "not supported" in status or "could not load" in status
    fig, table, _ = c.predict(0, api_name="/structure")      # failed loads lost nothing
    assert len(table["data"]) == 3
    with pytest.raises(Exception, match="greater than maximum"):     # the slider's own bound
        c.predict(*prune_args(0.99), api_name="/prune")
    assert "empty" in c.predict("   ", 8, False, 0, False, api_name="/compare")[-1]
    assert "prune" in c.predict("quick", 5, 1e-3, 1.0, "builtin", api_name="/recover")[-1]
    assert "prune" in c.predict("pruned", api_name="/export")[-1]
    assert "prune" in c.predict("pruned", "f16", api_name="/export_gguf")[-1]


def test_a_reload_keeps_the_session(server, tiny_folder):
    """The browser keeps the visitor key (BrowserState); a new connection presenting it finds the
    same session with everything it built."""
    c = client(server)
    c.predict(CUSTOM, tiny_folder, api_name="/load_model")
    c.predict(*prune_args(0.25, criterion="l2"), api_name="/prune")
    old_hash = c.session_hash
    key = server.REGISTRY.visitor(old_hash)
    session = server.REGISTRY.get(key)
    new_connection = "reloaded-page-hash"
    visitor, facts, *panels, message = server.restore(key, type("Request", (), {"session_hash": new_connection})())
    models, unit, amount = panels[14], panels[15], panels[16]
    assert unit == "groups" and amount["value"] == 0.25 and amount["maximum"] == 0.9   # as pruned
    assert visitor == key and "Welcome back" in message and "a pruned model" in message
    assert server.REGISTRY.get(server.REGISTRY.visitor(new_connection)) is session
    # every panel is redrawn from the session: the before/after table and kept widths among them
    before_after, widths = panels[7], panels[8]
    assert isinstance(before_after, pd.DataFrame) and "parameters" in set(before_after.metric)
    assert widths is not None and not isinstance(widths, dict) and models["value"] == ["original", "pruned"]
    fresh, *_, message = server.restore("", type("Request", (), {"session_hash": "someone-new"})())
    assert fresh != key and "Load model" in message


def test_two_visitors_keep_their_own_results(server, tiny_folder):
    results = {}

    def visit(amount):
        c = client(server)
        c.predict(CUSTOM, tiny_folder, api_name="/load_model")
        table, *_, text = c.predict(*prune_args(amount, criterion="l2"), api_name="/prune")
        params_after = {r[0]: r[2] for r in table["data"]}["parameters"]
        archive, *_ = c.predict("pruned", api_name="/export")      # later: still this visitor's model
        results[amount] = (params_after, text, archive)

    threads = [threading.Thread(target=visit, args=(a,)) for a in (0.25, 0.75)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(results[0.25][0].replace(",", "")) > int(results[0.75][0].replace(",", ""))
    from pruner.export import load_pruned
    from pruner.stats import count_params

    for amount, (params, _, archive) in results.items():
        with zipfile.ZipFile(archive) as z:
            target = archive + "-unzipped"
            z.extractall(target)
        model, _ = load_pruned(f"{target}/pruned", device="cpu")
        assert count_params(model)["params"] == int(params.replace(",", ""))


def test_full_memory_evicts_then_refuses_with_a_reason(server, tiny_folder, monkeypatch):
    store = server.STORE
    c = client(server)
    c.predict(CUSTOM, tiny_folder, api_name="/load_model")
    from pruner import footprint

    original = next(o for o in store._originals.values() if o.source == tiny_folder).model
    store.put("unused", "scores", torch.zeros(2**20))                   # 4 MiB no session refers to
    peak = footprint.prune_peak(original, "l1", 0, 0, scores_cached=False)
    monkeypatch.setattr(store, "budget", store.used_bytes() + peak - 2**21)   # fits only without "unused"
    text = c.predict(*prune_args(0.6, criterion="l1"), api_name="/prune")[-1]
    assert "Removed" in text and store.peek("unused") is None       # made room by evicting unused results
    held = sum(o.nbytes for o in store._originals.values() if o.key in store.in_use())
    monkeypatch.setattr(store, "budget", held + peak - 1)      # the original in use leaves too little
    text = c.predict(*prune_args(0.4, criterion="l1"), api_name="/prune")[-1]
    assert "memory is full" in text and "retry" in text
    monkeypatch.setattr(store, "budget", 1)
    text = c.predict(*prune_args(0.3, criterion="l1"), api_name="/prune")[-1]
    assert "at its peak, more than" in text                   # could never fit: said at once


def test_server_stats_endpoint(server):
    stats = client(server).predict(api_name="/server_stats")
    assert {"hits", "misses", "hit_rate", "used_gb", "budget_gb", "sessions", "spills"} <= set(stats)
    table = client(server).predict(api_name="/server_table")            # the teacher's view: a table
    rows = {r[0]: r[1] for r in table["data"]}
    assert rows["visitors with a live session"] == f"{stats['sessions']:,}" and "memory budget for work, GB" in rows


def test_spaces_gpu_decorator_is_used_and_runs_on_cpu(server):
    """With `spaces` installed (as on Hugging Face Spaces) the GPU entry points are wrapped by
    spaces.GPU, a no-op off Spaces: the decorated path runs here on the CPU, and models load on
    the CPU so a ZeroGPU call can move them to the GPU and back."""
    spaces = pytest.importorskip("spaces")
    from components import handlers

    assert handlers.LOAD_DEVICE == "cpu"
    from components import server as page_server

    assert page_server.gpu.__module__.startswith("spaces") or hasattr(spaces, "GPU")
    model = torch.nn.Linear(2, 2)
    with handlers.accelerated(model):
        pass
    assert next(model.parameters()).device.type == "cpu"


def test_rerunning_a_step_keeps_later_results(server, tiny_folder):
    """Prune (or load) again with the same inputs: the recovery and the merged model still derive
    from them and stay; with other inputs they are dropped and the status line says so."""
    c = client(server)
    c.predict(CUSTOM, tiny_folder, api_name="/load_model")
    c.predict(*prune_args(0.25, criterion="l2"), api_name="/prune")
    c.predict("quick", 3, 1e-3, 0.0, "builtin", api_name="/recover")
    assert "Merged" in c.predict(api_name="/merge")
    session = server.REGISTRY.get(server.REGISTRY.visitor(c.session_hash))
    assert "dropped" not in c.predict(*prune_args(0.25, criterion="l2"), api_name="/prune")[-1]
    c.predict(CUSTOM, tiny_folder, api_name="/load_model")             # the same model: work kept
    assert server.REGISTRY.get(server.REGISTRY.visitor(c.session_hash)) is session
    assert session.recovery_key and session.merged_key
    text = c.predict(*prune_args(0.5, criterion="l2"), api_name="/prune")[-1]
    assert "the LoRA recovery and the pruned + LoRA model of the previous pruned model were dropped" in text
    assert session.recovery_key is None and session.merged_key is None


def test_a_server_restart_replays_the_steps(server, tiny_folder):
    """The visitor's steps are on disk after each step; a server that lost every session and
    result (a restart) rebuilds the session from them and redraws its panels."""
    c = client(server)
    c.predict(CUSTOM, tiny_folder, api_name="/load_model")
    c.predict("l2", "sum", "builtin", 4, 16, api_name="/score")
    c.predict(*prune_args(0.25, criterion="l2"), api_name="/prune")
    key = server.REGISTRY.visitor(c.session_hash)
    before = server.REGISTRY.get(key)
    steps = server.FILES.load(key)
    assert set(steps) >= {"load", "score", "prune"} and steps["load"]["source"] == tiny_folder
    server.REGISTRY.drop(key)                                    # the restart: nothing in memory
    for entry_key in list(server.STORE._entries):
        server.STORE.drop(entry_key)
    request = type("Request", (), {"session_hash": "after-restart"})()
    _, *panels, message = server.restore(key, request)
    assert "Restored after a server restart" in message and "a pruned model" in message, message
    after = server.REGISTRY.get(key)
    assert after is not before and after.prune_key == before.prune_key        # the same content key
    assert isinstance(panels[8], pd.DataFrame) and "parameters" in set(panels[8].metric)


def test_an_api_client_reconnects_like_a_reload(server, tiny_folder):
    first = client(server)
    first.predict(CUSTOM, tiny_folder, api_name="/load_model")
    second = client(server)
    assert "Welcome back" in second.predict(first.session_hash, api_name="/reconnect")
    assert "Removed" in second.predict(*prune_args(0.25, criterion="l2"), api_name="/prune")[-1]
    assert "Load model" in client(server).predict("v-unknown", api_name="/reconnect")


def test_the_minitron_recipe_prunes_hidden_channels_first_on_the_page(server, tokenizer, tmp_path):
    from conftest import tiny_model

    folder = tmp_path / "wide"          # wide MLPs beside the 49k-token embeddings: both axes can give 10%
    tiny_model(vocab=len(tokenizer), n_heads=4, n_kv=2, layers=2, hidden=64, inter=2048).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    c = client(server)
    assert "Loaded" in c.predict(CUSTOM, str(folder), api_name="/load_model")[-1]
    _, _, one, share, hidden, *_, criterion, _, note = c.predict("minitron", api_name="/recipe")
    assert (hidden, share["value"], one, criterion) == (0.5, 0.0, False, "activation")
    assert "hidden (embedding) channels' share 0.5" in note
    form = {"unit": "parameters", "one_ratio": False, "hidden_share": 0.5, "criterion": "activation",
            "aggregation": "last"}
    *_, text = c.predict(*prune_args(0.2, **form), api_name="/preview")
    assert text.startswith("First ") and "hidden (embedding) channels, ranked by activation" in text, text
    table, *_, text = c.predict(*prune_args(0.2, **form), api_name="/prune")
    assert "Removed" in text, text
    metrics = {r[0]: r for r in table["data"]}
    assert metrics["parameters"][3] in ("-20.0%", "-19.9%", "-20.1%"), metrics["parameters"]
