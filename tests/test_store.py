"""The class's shared store and the session registry, without a server: content keys, compute
once under concurrency, eviction order inside the memory budget, refusal with a reason, rebuild of
an evicted result, and honest expiry messages."""

import threading
import time

import pytest
import torch

from components.session import Session, SessionError, SessionRegistry
from components.store import CapacityError, Store, content_key, size_of


def tensor(n_bytes):
    return torch.zeros(n_bytes // 4, dtype=torch.float32)


def test_content_key_is_stable_and_order_free():
    assert content_key("scores", {"a": 1, "b": [1, 2]}) == content_key("scores", {"b": [1, 2], "a": 1})
    assert content_key("scores", {"a": 1}) != content_key("scores", {"a": 2})
    assert content_key("scores", {"a": 1}) != content_key("pruned", {"a": 1})


def test_size_of_models_counts_tied_weights_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    both = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert size_of(both) == 10 * 4 * 4


def test_identical_requests_compute_once_even_at_the_same_time():
    store, calls = Store(budget_bytes=10**9), []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return tensor(400)

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.compute("x", {"k": 1}, slow)))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit, _ in results) == [False, True, True, True, True]
    assert len({id(v) for v, _, _ in results}) == 1
    assert store.stats()["hits"] == 4 and store.stats()["misses"] == 1


def test_eviction_prefers_unreferenced_then_least_recent():
    store = Store(budget_bytes=3000)
    keys = [store.compute("x", {"i": i}, lambda: tensor(1000))[2] for i in range(3)]
    store.in_use = lambda: {keys[0]}              # a live session still refers to the oldest
    store.peek(keys[1])                           # touched: more recent than keys[2]
    store.compute("x", {"i": 3}, lambda: tensor(1000))
    assert store.peek(keys[0]) is not None        # referenced: kept though oldest
    assert store.peek(keys[1]) is not None
    assert store.peek(keys[2]) is None            # unreferenced and least recent: evicted


def test_full_budget_refuses_with_reason_and_retry_hint():
    store = Store(budget_bytes=2000)
    store.compute("x", {"i": 0}, lambda: tensor(1000))
    store.in_use = lambda: {content_key("x", {"i": 0})}
    with pytest.raises(CapacityError, match="memory is full.*retry"):
        store.compute("x", {"i": 1}, lambda: tensor(4000))


def test_original_is_loaded_once_and_shared():
    store, loads = Store(budget_bytes=10**9), []

    def load():
        loads.append(1)
        return torch.nn.Linear(4, 4), "tok", {"name": "m"}

    first, shared_first = store.original("src", "src", load)
    second, shared_second = store.original("src", "src", load)
    assert first is second and len(loads) == 1 and (shared_first, shared_second) == (False, True)
    assert not any(p.requires_grad for p in first.model.parameters())


def test_an_evicted_result_is_rebuilt_for_the_session_that_needs_it():
    store = Store(budget_bytes=10**9)
    session = Session(key="v")
    value, _, key = store.compute("x", {"i": 1}, lambda: {"model": tensor(40)})
    session.remember(key, "x", {"i": 1}, lambda: {"model": tensor(40)})
    store.drop(key)
    rebuilt = session.value(store, key)
    assert torch.equal(rebuilt["model"], value["model"]) and store.peek(key) is not None


def test_expired_sessions_say_so():
    registry = SessionRegistry(Store(budget_bytes=10**9), ttl_s=0.05)
    registry.put(Session(key="v1", source="default"))
    assert registry.get("v1").source == "default"
    time.sleep(0.1)
    with pytest.raises(SessionError, match="expired after"):
        registry.get("v1")
    assert registry.expired("v1")
    with pytest.raises(SessionError, match="No model loaded in this session yet"):
        registry.get("never-seen")


def test_a_reconnection_reaches_the_same_session():
    registry = SessionRegistry(Store(budget_bytes=10**9))
    session = registry.put(Session(key="visitor-1"))
    registry.alias("connection-after-reload", "visitor-1")
    assert registry.get(registry.visitor("connection-after-reload")) is session
    assert registry.visitor("api-client") == "api-client"       # no browser key: the connection itself


# ----------------------------------------------------------------------------- admission

def test_a_step_that_can_never_fit_is_refused_at_once_with_numbers():
    store = Store(budget_bytes=1000)
    with pytest.raises(CapacityError, match=r"scoring needs about .* GB at its peak, more than"):
        with store.admit("scoring", 2000):
            pass


def test_admission_evicts_unreferenced_results_first():
    store = Store(budget_bytes=1000)
    store.put("old", "scores", tensor(400))
    store.put("kept", "scores", tensor(400))
    store.in_use = lambda: {"kept"}
    with store.admit("pruning", 500):
        assert store.peek("old") is None and store.peek("kept") is not None
        assert store.in_flight_bytes() == 500
    assert store.in_flight_bytes() == 0


def test_a_step_waits_in_line_while_another_holds_the_memory():
    store = Store(budget_bytes=1000)
    started, events, positions = threading.Event(), [], []

    def first():
        with store.admit("recovery", 800):
            started.set()
            time.sleep(0.6)
            events.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    started.wait()
    with store.admit("evaluation", 500, progress=lambda f, desc: positions.append(desc)):
        events.append("second admitted")
    thread.join()
    assert events == ["first done", "second admitted"]
    assert positions and "1 in line" in positions[0]
    assert len(store.waits) == 1 and store.waits[0] >= 0.3


def test_the_result_a_step_puts_is_part_of_its_own_peak():
    store = Store(budget_bytes=1000)
    with store.admit("pruning", 900):
        store.put("pruned", "pruned", tensor(800))      # no CapacityError: its memory was admitted
    assert store.used_bytes() == 800


def test_refused_when_an_original_in_use_fills_it_and_nothing_runs():
    store = Store(budget_bytes=1000)
    store.put("evictable", "scores", tensor(100))
    model = torch.nn.Linear(10, 20)                     # 880 bytes, loaded by a live session
    original, _ = store.original("orig", "src", lambda: (model, None, {}))
    store.in_use = lambda: {"orig"}
    with pytest.raises(CapacityError, match="memory is full"):
        with store.admit("export", 600, timeout_s=0.1):
            pass
    assert store.loaded_original("orig") is original and store.peek("evictable") is None


def test_models_the_budget_cannot_hold_go_to_disk_and_come_back_exactly(tmp_path):
    """With a spill, evicting a pruned or merged model writes it to the export disk and leaves an
    empty skeleton (no memory counted); its next use reads it back, same outputs, tied weights
    still tied; a step still holding the old object is untouched; files deleted by the disk
    budget mean an ordinary miss; a value without a model is dropped as before."""
    from components.exports import ExportDisk, folder_bytes
    from components.spill import Spill
    from tests.families import tiny_family_model

    model = tiny_family_model("gemma2").eval()
    ids = torch.randint(3, 90, (1, 8))
    with torch.no_grad():
        expected = model(ids).logits
    nbytes = size_of(model)
    store = Store(budget_bytes=int(1.5 * nbytes))
    disk = ExportDisk(tmp_path / "disk", budget_bytes=10 * nbytes)
    store.spill = Spill(disk)
    store.put("pruned:a", "pruned", {"model": model, "result": "report"})
    store.put("merged:b", "merged", model.__class__(model.config).eval())      # evicts a: to disk
    entry = store._entries["pruned:a"]
    assert entry.spilled is not None and entry.nbytes == 0 and store.stats()["spills"] == 1
    assert folder_bytes(entry.spilled) >= nbytes and store.used_bytes() <= store.budget
    assert torch.equal(model(ids).logits, expected)               # the old object still works
    store._in_flight[-1] = store.budget                            # a running step holds the memory:
    assert store.peek("pruned:a") is None and entry.spilled is not None   # a miss (recompute waits), kept
    del store._in_flight[-1]
    back = store.peek("pruned:a")                                  # evicts b to disk, reads a back
    assert back["result"] == "report" and back["model"] is not model and store.stats()["restores"] == 1
    with torch.no_grad():
        assert torch.equal(back["model"](ids).logits, expected)
    assert back["model"].lm_head.weight is back["model"].model.embed_tokens.weight
    assert store._entries["merged:b"].spilled is not None and not entry.spilled
    import shutil

    shutil.rmtree(store._entries["merged:b"].spilled)             # the disk budget deleted it
    assert store.peek("merged:b") is None and "merged:b" not in store._entries
    store.put("scores:c", "scores", tensor(nbytes))                # no model in it: dropped
    assert "scores:c" in store._entries
    store.put("scores:d", "scores", tensor(nbytes))
    assert "scores:c" not in store._entries or "pruned:a" not in store._entries or \
        store._entries["pruned:a"].spilled is not None


def test_a_finished_recovery_goes_to_disk_and_still_merges(tmp_path, tokenizer):
    """A LoRA recovery (an object holding a peft model) spills and comes back: merging it after
    gives exactly the model merging it before gives (what Merge needs after an eviction)."""
    from components.exports import ExportDisk
    from components.spill import Spill
    from pruner.recover import Example, LoraRecovery, LoraSettings
    from tests.families import tiny_family_model

    model = tiny_family_model("llama", vocab=len(tokenizer)).eval()
    recovery = LoraRecovery(model, tokenizer, [Example("", "hello there, general kenobi")] * 4,
                            LoraSettings(max_steps=2, batch_size=2, seq_len=16, learning_rate=1e-2))
    list(recovery.train())
    ids = torch.randint(3, 90, (1, 8))
    with torch.no_grad():
        expected = recovery.merge()(ids).logits
    spill = Spill(ExportDisk(tmp_path / "disk", budget_bytes=2**30))
    skeleton, folder = spill.out("recovery:x", recovery)
    assert skeleton is not recovery and skeleton.optimizer is None and skeleton.masters is None and recovery.optimizer is not None
    back = spill.back(skeleton, folder)
    with torch.no_grad():
        assert torch.equal(back.merge()(ids).logits, expected)
    assert not folder.exists()
