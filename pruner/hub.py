"""Is the Hugging Face hub reachable? Asked once, remembered, so offline work never pays for
retries in every step.

- `HF_HUB_OFFLINE=1` (or `HF_DATASETS_OFFLINE=1` for data) says offline without asking.
- Otherwise one HEAD request to the hub's endpoint, at most `PROBE_TIMEOUT_S` seconds (DNS
  included: the probe runs in a thread that is abandoned when it overruns). A failure is
  remembered for `OFFLINE_TTL_S` seconds; a success for as long, so a lost connection is found
  again by the next probe.
- `mark_offline()` records a failure seen elsewhere (a download that failed midway).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 2.5
OFFLINE_TTL_S = 600.0

_lock = threading.Lock()
_state: dict = {"online": None, "checked": 0.0, "why": ""}


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached (offline); the message says why and what to do instead."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _probe(timeout: float) -> tuple[bool, str]:
    """(reachable, why not): one HEAD request in a daemon thread, bounded by `timeout` in total."""
    result: dict = {}

    def ask():
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint(), method="HEAD"), timeout=timeout)
            result["ok"] = (True, "")
        except urllib.error.HTTPError:          # the server answered: it is reachable
            result["ok"] = (True, "")
        except Exception as err:                # noqa: BLE001 - DNS, refused, TLS, timeout
            result["ok"] = (False, f"{type(err).__name__}: {str(err)[:120]}")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result.get("ok", (False, f"no answer from {endpoint()} within {timeout:.1f} s"))


def offline_reason(datasets: bool = False) -> str | None:
    """None when the hub is reachable, else why not (cached; probes at most every OFFLINE_TTL_S)."""
    if _truthy("HF_HUB_OFFLINE") or (datasets and _truthy("HF_DATASETS_OFFLINE")):
        return "HF_HUB_OFFLINE is set" if _truthy("HF_HUB_OFFLINE") else "HF_DATASETS_OFFLINE is set"
    with _lock:
        fresh = time.monotonic() - _state["checked"] < OFFLINE_TTL_S
        if _state["online"] is None or not fresh:
            online, why = _probe(PROBE_TIMEOUT_S)
            _state.update(online=online, checked=time.monotonic(), why=why)
        return None if _state["online"] else f"the hub is unreachable ({_state['why']})"


def online(datasets: bool = False) -> bool:
    return offline_reason(datasets) is None


def mark_offline(why: str) -> None:
    """Remember a failed connection seen by a download, so the next steps skip the hub."""
    with _lock:
        _state.update(online=False, checked=time.monotonic(), why=why)


def note_failure(err: Exception, what: str) -> None:
    """A hub call failed: when it was the connection, remember the hub as unreachable."""
    if "connect" in f"{type(err).__name__} {err}".lower():
        mark_offline(f"{type(err).__name__} while {what}")


def forget() -> None:
    """Probe again next time (tests; a server whose network came back)."""
    with _lock:
        _state.update(online=None, checked=0.0, why="")


def require(what: str, datasets: bool = False) -> None:
    """Raise HubUnavailableError (fast) when the hub cannot be reached."""
    why = offline_reason(datasets)
    if why is not None:
        raise HubUnavailableError(f"{what} needs the Hugging Face hub, and {why}")
